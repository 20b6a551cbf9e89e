"""`pgwarden reconcile`: ask the running reconciler to run now."""

from __future__ import annotations

import argparse

from pgwarden.adminclient import AdminUnavailable, add_target_options, call, socket_path
from pgwarden.output import error

EPILOG = """\
example:
  pgwarden reconcile --with-source   # fetch the repository now, then apply
  pgwarden reconcile                 # re-apply the last fetched revision (e.g. after fixing a database)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("reconcile", help="reconcile now", description="Trigger a reconcile now.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--with-source", action="store_true", help="fetch the Git source first")
    add_target_options(p)
    p.set_defaults(func=run_reconcile)


def run_reconcile(args: argparse.Namespace) -> int:
    url = "/v1/reconcile" + ("?withSource=1" if args.with_source else "")
    try:
        code, body = call(socket_path(args.data_dir, args.admin_socket), "POST", url)
    except AdminUnavailable as exc:
        error(str(exc), hint="start one with `pgwarden up`, or pass --data-dir")
        return 2
    if code != 202:
        error(f"the instance refused: {body}")
        return 2
    print("reconcile requested" + (" (with source fetch)" if args.with_source else "") + "; see `pgwarden status`")
    return 0
