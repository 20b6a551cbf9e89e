"""`pgwarden explain --user U --service S [--query SQL]`: the decision path of one connection and query, offline."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from pgwarden import adminclient
from pgwarden.commands.validate import add_plaintext_option, count, distinct_hints, problem_lines
from pgwarden.output import error
from proxy.snapshot import Snapshot
from reconciler.access import keyless_from_wire, keyless_snapshot
from reconciler.errors import ManifestErrors
from reconciler.explain import explain
from reconciler.review import load_for_review

EXIT_ALLOWED, EXIT_DENIED, EXIT_COULD_NOT_RUN = 0, 1, 2

EPILOG = """\
example: why may ada not drop a table on a Wednesday? (docs/policies/ with a User ada added)
  $ pgwarden explain --user ada --service production --aal AAL2 \\
        --at 2026-12-09T10:00:00+01:00 --query 'DROP TABLE orders' docs/policies/
  user ada · service production · AAL2 (passkey login) · at 2026-12-09T10:00:00+01:00

  connect: attached policy rules in evaluation order
    1. no-drop-outside-change-window/drop-outside-window (DENY, priority 0): does not match
    2. ddl-needs-passkey/ddl-without-aal2 (DENY, priority 0): does not match
    3. production-default/everything-else (ALLOW, priority 4): matches

  routing: no rules
  config default (default config; allowed by policy "production-default" rule "everything-else"): upstream
  role shop_owner, database shop, authorization mode ALL

  query: DROP TABLE orders
    kinds [DROP TABLE] · tables [orders] · functions [] · readOnly false
    rules in evaluation order (lower priority first, DENY before ALLOW at equal priority):
    1. no-drop-outside-change-window/drop-outside-window (DENY, priority 0): matches  ← decides
    2. ddl-needs-passkey/ddl-without-aal2 (DENY, priority 0): does not match (not reached)
    3. production-default/everything-else (ALLOW, priority 4): matches (not reached)
  DENY (no-drop-outside-change-window/drop-outside-window)

The client is taken to connect with dbname=SERVICE and a token of a session at --aal (AAL1: a token
session, AAL2: a passkey login); --at sets the clock every now() reads (default: now). The repository
is read as `pgwarden validate` reads it: no keys, no proxy, and no secret value is printed. With
--live, the running proxy's applied snapshot is explained instead of PATH (through the admin socket
of --data-dir, found as `pgwarden status` finds it; Secrets come as fingerprints, never values).

exit status:
  0  allowed (connected, and the query, if given, is allowed)
  1  denied (the connection is refused or the query is denied)
  2  could not run: PATH missing or invalid, --at not an RFC 3339 time with an offset, or (--live)
     no proxy answering on the admin socket
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `explain`."""
    p = subparsers.add_parser(
        "explain",
        help="show the decision path for a user, service and query: routing, config, each policy rule",
        description="Explain how the proxy would decide a connection (and a query) for the manifests under PATH.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", type=Path, nargs="?", default=Path("."),
                   help="a directory of YAML/JSON manifests, or one file (default: .)")
    p.add_argument("--user", required=True, metavar="U", help="the User who connects")
    p.add_argument("--service", required=True, metavar="S", help="the Service connected to (dbname=S)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--query", metavar="SQL", help="a simple-protocol Query to decide")
    what.add_argument("--function-call", action="store_true", help="decide a FunctionCall message instead")
    p.add_argument("--aal", choices=("AAL1", "AAL2"), default="AAL1",
                   help="the session's assurance level: AAL1 token (default) or AAL2 passkey login")
    p.add_argument("--at", metavar="TIME", type=_rfc3339, default=None,
                   help="decide at this instant, e.g. 2026-12-08T10:00:00+01:00 (default: now)")
    p.add_argument("--live", action="store_true",
                   help="explain against the running proxy's snapshot (through its admin socket) instead of PATH")
    adminclient.add_target_options(p)
    add_plaintext_option(p)
    p.set_defaults(func=run_explain)


def _rfc3339(text: str) -> datetime.datetime:
    try:
        at = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r} (e.g. 2026-12-08T10:00:00+01:00)") from exc
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (add Z or +01:00)")
    return at


def run_explain(args: argparse.Namespace) -> int:
    """Explain, print, return the exit status."""
    snapshot = _live_snapshot(args) if args.live else _repository_snapshot(args)
    if snapshot is None:
        return EXIT_COULD_NOT_RUN
    result = explain(snapshot, user=args.user, service=args.service, aal=args.aal, query=args.query,
                     is_function_call=args.function_call, at=args.at)
    sys.stdout.write("\n".join(result.lines) + "\n")
    is_allowed = result.is_connected and result.is_allowed is not False
    return EXIT_ALLOWED if is_allowed else EXIT_DENIED


def _repository_snapshot(args: argparse.Namespace) -> Snapshot | None:
    if not args.path.exists():
        error(f"no such file or directory: {args.path}", hint="give the directory that holds your manifests")
        return None
    try:
        return keyless_snapshot(load_for_review(args.path, allow_plaintext_secrets=args.allow_plaintext_secrets))
    except ManifestErrors as exc:
        error(f"the manifests under {args.path} are not valid ({count(len(exc.errors), 'problem')})",
              detail="\n".join(problem_lines(args.path, exc.errors)),
              hint="\n".join([*distinct_hints(exc.errors), f"`pgwarden validate {args.path}` lists the same problems"]))
        return None


def _live_snapshot(args: argparse.Namespace) -> Snapshot | None:
    """The applied snapshot of the running proxy (its admin API shows Secrets as fingerprints only)."""
    path = adminclient.socket_path(args.data_dir, args.admin_socket)
    try:
        status, body = adminclient.call(path, "GET", "/v1/state")
    except adminclient.AdminUnavailable as exc:
        error(str(exc), hint="start it with `pgwarden up`, or name its data directory with --data-dir")
        return None
    if status != 200 or not isinstance(body, dict):
        error(f"the admin API answered {status} for /v1/state")
        return None
    try:
        return keyless_from_wire(body)
    except (KeyError, TypeError, ValueError) as exc:
        error(f"the running proxy's snapshot cannot be read: {type(exc).__name__}")
        return None
