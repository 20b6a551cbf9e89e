"""bench/relay_instructions.py relays through a real plain session; it must keep doing so as the session changes."""

from __future__ import annotations

from bench.relay_instructions import relay_round_trips


def test_relay_round_trips_pass_every_message() -> None:
    relay_round_trips(50)  # raises SystemExit if a message was lost or the session ended
