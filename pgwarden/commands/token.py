"""`pgwarden token issue`: print a signed access token for a User."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pgwarden.datadir import default_data_dir
from pgwarden.output import error
from proxy.identity.tokens import TokenAuthority

EPILOG = """\
example:
  export PGPASSWORD=$(pgwarden token issue --user alice --ttl 1h)
  psql "host=127.0.0.1 port=6543 dbname=my-db sslmode=require user=alice"

The token is a credential: anyone holding it connects as that user until it expires.
It is printed alone on stdout so it can be captured; it is never written to disk.
"""

_TTL = re.compile(r"^(\d+)([smhd]?)$")


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 90s, 15m, 1h or 7d")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def register(subparsers: argparse._SubParsersAction) -> None:
    token = subparsers.add_parser("token", help="issue access tokens", description="Issue access tokens.")
    sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    issue = sub.add_parser(
        "issue", help="print an access token for a user",
        description="Print a signed, expiring access token for USER, to present as the PostgreSQL password "
                    "over TLS. The user must exist and be enabled when the token is used.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    issue.add_argument("--user", required=True, help="the User's metadata.name")
    issue.add_argument("--ttl", type=parse_ttl, default=3600, help="lifetime, e.g. 15m, 1h, 7d (default 1h)")
    issue.add_argument("--data-dir", type=Path, default=None,
                       help="the proxy's data directory holding the signing key (default: %(default)s → "
                            "$PGWARDEN_DATA_DIR or the per-user data directory)")
    issue.set_defaults(func=run_issue)


def run_issue(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or default_data_dir()
    try:
        authority = TokenAuthority.load(data_dir)
    except FileNotFoundError as exc:
        error(str(exc), hint="or pass --data-dir pointing at the proxy's data directory")
        return 2
    print(authority.issue(args.user, ttl_s=args.ttl))
    return 0
