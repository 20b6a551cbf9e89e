"""The `pgwarden` command: parse arguments, call one room, print the result."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

DESCRIPTION = """\
pgwarden: zero-trust, secretless access to PostgreSQL, configured by GitOps.

Clients connect with plain psql/drivers; pgwarden knows who they are from an access token
(presented as the password over TLS), picks an upstream login by rules on their identity,
and logs in to the real database with a password the user never sees.
"""

EPILOG = """\
quick start:
  pgwarden proxy --manifests examples-repo/ --age-key-file examples-repo/demo-age-key.txt &
  export PGPASSWORD=$(pgwarden token issue --user alice)
  psql "host=127.0.0.1 port=6543 dbname=my-db sslmode=require user=alice"

exit codes: 0 ok, 1 findings (invalid manifests, a diff, not ready), 2 could not run.
Run `pgwarden COMMAND --help` for each command's options and an example.
"""

# Each module adds its own subcommand with register(subparsers).
COMMAND_MODULES = (
    "up", "proxy", "login", "whoami", "token", "sessions", "status", "reconcile", "suspend",
    "validate", "diff", "access", "explain", "policytest", "replay", "sops", "secret", "connect", "cert",
)


# Commands registered by another command's module.
OWNER = {"resume": "suspend", "logout": "whoami", "test": "policytest"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `command` only that command's (the others' modules import a lot: a
    `pgwarden whoami` should not pay for the proxy, CEL and SAML libraries)."""
    parser = argparse.ArgumentParser(prog="pgwarden", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    owner = OWNER.get(command, command) if command else None
    for name in COMMAND_MODULES if owner not in COMMAND_MODULES else (owner,):
        try:
            module = importlib.import_module(f"pgwarden.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pgwarden.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), if any."""
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="pgwarden: %(levelname)s: %(message)s", stream=sys.stderr)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
