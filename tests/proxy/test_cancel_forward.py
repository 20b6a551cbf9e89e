"""Cancel forwarding between replicas: only a fresh forward signed with the replicas' key, and only once."""

from __future__ import annotations

import asyncio

from proxy.cancel_forward import (
    CANCEL_WINDOW_S,
    CancelInbox,
    ForwardVerifier,
    encode_forward,
    forward_cancel,
    forwarding_key,
)

KEY = forwarding_key(bytes(range(32)))
NOW = 1_900_000_000.0


def test_a_signed_forward_is_accepted_once() -> None:
    verifier = ForwardVerifier(KEY)
    message = encode_forward(KEY, 4242, -7, now_s=NOW)
    assert verifier.parse(message, now_s=NOW + 1) == (4242, -7)
    assert verifier.parse(message, now_s=NOW + 2) is None  # replayed


def test_forwards_without_the_key_stale_or_altered_are_refused() -> None:
    verifier = ForwardVerifier(KEY)
    other = forwarding_key(bytes(32))
    assert other != KEY
    assert verifier.parse(encode_forward(other, 1, 2, now_s=NOW), now_s=NOW) is None
    assert verifier.parse(encode_forward(KEY, 1, 2, now_s=NOW), now_s=NOW + CANCEL_WINDOW_S + 1) is None
    altered = bytearray(encode_forward(KEY, 1, 2, now_s=NOW))
    altered[9] ^= 1  # another process id, same signature
    assert verifier.parse(bytes(altered), now_s=NOW) is None
    assert verifier.parse(b"\x00" * 16, now_s=NOW) is None


async def test_the_inbox_hands_on_only_good_forwards() -> None:
    received: list[tuple[int, int]] = []
    got = asyncio.Event()

    async def on_cancel(process_id: int, secret_key: int) -> None:
        received.append((process_id, secret_key))
        got.set()

    inbox = CancelInbox(KEY, on_cancel)
    host, port = await inbox.start("127.0.0.1", 0)
    try:
        assert await forward_cancel(forwarding_key(bytes(32)), [f"{host}:{port}"], 1, 1) == 1  # sent, not honoured
        assert await forward_cancel(KEY, [f"{host}:{port}", "127.0.0.1:1"], 77, 88) == 1  # one inbox is down
        await asyncio.wait_for(got.wait(), 10)
        await asyncio.sleep(0)
        assert received == [(77, 88)]
    finally:
        await inbox.close()


async def test_a_forward_returns_once_the_owner_has_passed_the_cancel_on() -> None:
    # The client's cancel connection closes when the forward returns, and libpq sends its next query then: a
    # forward that returned before the owner reached its upstream would let the cancel hit that next query.
    delivered = asyncio.Event()

    async def on_cancel(process_id: int, secret_key: int) -> None:
        await asyncio.sleep(0.3)  # the owner's own connection to its upstream
        delivered.set()

    inbox = CancelInbox(KEY, on_cancel)
    host, port = await inbox.start("127.0.0.1", 0)
    try:
        assert await forward_cancel(KEY, [f"{host}:{port}"], 5, 6) == 1
        assert delivered.is_set()
    finally:
        await inbox.close()
