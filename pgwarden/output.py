"""How the command prints errors: libpq's shape, on stderr, with a hint when there is a way out."""

from __future__ import annotations

import sys


def error(message: str, *, hint: str | None = None, detail: str | None = None) -> None:
    print(f"pgwarden: error: {message}", file=sys.stderr)
    if detail:
        print(f"DETAIL:  {detail}", file=sys.stderr)
    if hint:
        print(f"HINT:  {hint}", file=sys.stderr)
