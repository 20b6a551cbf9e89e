"""HOST:PORT on the command line (kept apart from the proxy's modules so light commands stay light to start)."""

from __future__ import annotations

import argparse


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: use HOST:PORT, e.g. 127.0.0.1:6543")
    return host.strip("[]") or "127.0.0.1", int(port)
