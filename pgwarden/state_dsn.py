"""Where the identity state-store DSN comes from: `--state`, `--state-file PATH` or `$PGWARDEN_STATE`.

A command line is readable by every local user (`ps`, /proc/PID/cmdline), so `--state` refuses a URL that
carries a password; a file (mode 0600) or the environment (readable only by the same user and root) holds
it instead, or the password stays out of the URL altogether (PGPASSWORD, ~/.pgpass).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

STATE_ENV = "PGWARDEN_STATE"
MAX_STATE_FILE_BYTES = 64 * 1024

HELP = (f"identity state store (sessions, passkeys, TOTP): sqlite in the data directory (default), or a "
        f"PostgreSQL URL shared by several replicas, e.g. postgres://pgwarden@db.internal/pgwarden. A URL with a "
        f"password is refused here (every local user can read a command line with ps): give it with "
        f"--state-file or ${STATE_ENV}, or keep the password in PGPASSWORD or ~/.pgpass")
FILE_HELP = (f"read the --state value from this file (first line; keep it mode 0600), e.g. "
             f"--state-file /etc/pgwarden/state-dsn. Default: ${STATE_ENV} when set, else sqlite")


def has_password(dsn: str) -> bool:
    """A password in the URL's userinfo, or a `password=` parameter (query string or libpq key=value)."""
    text = dsn.strip()
    try:
        if urlsplit(text).password is not None:
            return True
    except ValueError:
        return True  # cannot tell: treat it as carrying one
    return "password=" in text.lower()


def parse_state_argument(text: str) -> str:
    """argparse type for --state. The message never repeats the value."""
    if has_password(text):
        raise argparse.ArgumentTypeError(
            "this URL carries a password, which every local user can read in the process list (ps); "
            f"put the URL in a file given by --state-file PATH (mode 0600) or in ${STATE_ENV}, "
            "or leave the password out and use PGPASSWORD or ~/.pgpass")
    return text


def read_state_file(text: str) -> str:
    """argparse type for --state-file: the file's first non-empty line. Errors name the path, not the content."""
    path = Path(text)
    try:
        with path.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(MAX_STATE_FILE_BYTES + 1)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc
    if len(data) > MAX_STATE_FILE_BYTES:
        raise argparse.ArgumentTypeError(f"{path} is larger than {MAX_STATE_FILE_BYTES} bytes: not a state URL")
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        raise argparse.ArgumentTypeError(f"{path} is empty: write the state URL on its first line")
    if has_password(lines[0]) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"pgwarden: warning: {path} holds a password and other users may read it: chmod 600 {path}",
              file=sys.stderr)
    return lines[0]


def add_state_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--state", metavar="sqlite|postgres://…", type=parse_state_argument, default=None, help=HELP)
    group.add_argument("--state-file", metavar="PATH", type=read_state_file, default=None, dest="state_from_file",
                       help=FILE_HELP)


def state_from(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """--state, else --state-file's content, else $PGWARDEN_STATE, else None (sqlite)."""
    return args.state or getattr(args, "state_from_file", None) or environ.get(STATE_ENV) or None
