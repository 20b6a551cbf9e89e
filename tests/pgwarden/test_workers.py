"""Cancel keys name their worker: every key a worker hands out maps back to it, and stays a valid int32."""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

import pytest

from pgwarden.workers import WorkerSlot, admin_socket_for, parse_slot

EDGES = [-(2**31), -1, 0, 1, 2**31 - 1, 2**31 - 2]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 64])
def test_a_tagged_key_names_its_worker(count: int) -> None:
    for index in range(count):
        slot = WorkerSlot(index=index, count=count)
        for key in EDGES + [secrets.randbits(32) - 2**31 for _ in range(500)]:
            tagged = slot.tag(key)
            assert -(2**31) <= tagged < 2**31, (key, tagged)
            assert slot.owner_of(tagged) == index, (key, tagged)
            # Only the residue changes (as unsigned 32-bit values): the rest of the random key stays as it was.
            assert abs((tagged & 0xFFFFFFFF) - (key & 0xFFFFFFFF)) < count, (key, tagged)


def test_worker_slot_option_is_checked() -> None:
    assert parse_slot("1/4") == WorkerSlot(index=1, count=4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(argparse.ArgumentTypeError, match="use INDEX/COUNT"):
            parse_slot(bad)


def test_worker_zero_keeps_the_admin_socket_the_cli_looks_for() -> None:
    path = Path("/data/admin.sock")
    assert admin_socket_for(WorkerSlot(index=0, count=2), path) == path
    assert admin_socket_for(WorkerSlot(index=1, count=2), path) == Path("/data/admin-1.sock")
