"""Cancel keys name their worker: every key a worker hands out maps back to it, and stays a valid int32."""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from pgwarden.__main__ import build_parser
from pgwarden.worker_options import parse_slot
from runtime.workers import WorkerSlot, admin_socket_for

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


@pytest.mark.parametrize("command", ["proxy", "up"])
def test_workers_auto_starts_one_per_available_core(command: str) -> None:
    """`--workers auto` counts the cores this process may run on (its affinity), for both commands."""
    parse = build_parser(command).parse_args
    base = [command, "--manifests", "m"] if command == "proxy" else [command, "--repo", "r"]
    assert parse([*base, "--workers", "auto"]).workers == len(os.sched_getaffinity(0))
    assert parse([*base, "--workers", "3"]).workers == 3
    assert parse(base).workers == 1  # a single process stays the default


@pytest.mark.parametrize("bad", ["0", "65", "two", "-1", ""])
def test_a_bad_worker_count_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser("proxy").parse_args(["proxy", "--manifests", "m", "--workers", bad])
    assert "use 1 to 64, or auto" in capsys.readouterr().err


def test_workers_auto_follows_the_cpu_affinity() -> None:
    """Under `taskset -c 0` (or a container's cpuset) auto means one worker: a single process."""
    code = ("import os; os.sched_setaffinity(0, {0}); from pgwarden.__main__ import build_parser; "
            "print(build_parser('proxy').parse_args(['proxy', '--manifests', 'm', '--workers', 'auto']).workers)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
