"""`pgwarden token issue`: a new Session for a User and an access token bound to it."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pgwarden.adminclient import AdminUnavailable, add_target_options, call, socket_path
from pgwarden.output import error

EPILOG = """\
example:
  export PGPASSWORD=$(pgwarden token issue --user alice --ttl 1h)
  psql "host=127.0.0.1 port=6543 dbname=my-db sslmode=require user=alice"

The token is a credential: anyone holding it connects as that user until it expires or its
session is revoked (pgwarden sessions revoke ID). It is printed alone on stdout so it can be
captured; it is never written to disk. The running proxy issues it (through its admin socket,
which only this OS user can reach), after checking that the user exists and is enabled.
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
        description="Start a Session for USER and print an access token bound to it, to present as the "
                    "PostgreSQL password over TLS. The token dies with the Session (expiry or revocation).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    issue.add_argument("--user", required=True, help="the User's metadata.name")
    issue.add_argument("--ttl", type=parse_ttl, default=3600, help="lifetime, e.g. 15m, 1h, 7d (default 1h)")
    issue.add_argument("-o", "--output", choices=("token", "json"), default="token",
                       help="the token alone (default), or JSON with the session id and expiry")
    add_target_options(issue)
    issue.set_defaults(func=run_issue)


def run_issue(args: argparse.Namespace) -> int:
    path: Path = socket_path(args.data_dir, args.admin_socket)
    try:
        code, body = call(path, "POST", "/v1/identity/tokens", json_body={"user": args.user, "ttlSeconds": args.ttl})
    except AdminUnavailable as exc:
        error(str(exc), hint="tokens are issued by a running proxy: start `pgwarden up` or `pgwarden proxy`, "
                             "or pass its --data-dir")
        return 2
    if code != 200:
        error(body.get("error", str(body)) if isinstance(body, dict) else str(body))
        return 1 if code == 404 else 2
    print(json.dumps(body) if args.output == "json" else body["token"])
    return 0
