"""`--state-outage-grace`: parsed as a duration, shown in --help, carried into ProxyOptions."""

from __future__ import annotations

import argparse

import pytest

from identity.revocation_watch import STATE_OUTAGE_GRACE_S
from pgwarden.commands.proxy import add_proxy_options, options_from, parse_grace


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_grace(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "0", "-5m", "2d", "25h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_grace(text)


def test_flag_reaches_the_options_and_help() -> None:
    parser = argparse.ArgumentParser()
    add_proxy_options(parser)
    assert "--state-outage-grace" in parser.format_help() and "default 5m" in parser.format_help()
    assert options_from(parser.parse_args([])).state_outage_grace_s == STATE_OUTAGE_GRACE_S == 300.0
    assert options_from(parser.parse_args(["--state-outage-grace", "45s"])).state_outage_grace_s == 45.0
