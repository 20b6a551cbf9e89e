"""`pgwarden suspend` / `pgwarden resume`: pause and restart reconciliation (the proxy keeps serving)."""

from __future__ import annotations

import argparse

from pgwarden.adminclient import AdminUnavailable, add_target_options, call, socket_path
from pgwarden.output import error

EPILOG = """\
example:
  pgwarden suspend    # freeze what is live during an incident; commits are not applied
  pgwarden resume     # apply the latest revision again
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, helptext in (("suspend", "stop applying new revisions (the proxy keeps serving)"),
                           ("resume", "start applying revisions again")):
        p = subparsers.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:] + ".",
                                  epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_target_options(p)
        p.set_defaults(func=run_toggle, action=name)


def run_toggle(args: argparse.Namespace) -> int:
    try:
        code, body = call(socket_path(args.data_dir, args.admin_socket), "POST", f"/v1/{args.action}")
    except AdminUnavailable as exc:
        error(str(exc), hint="start one with `pgwarden up`, or pass --data-dir")
        return 2
    if code != 200:
        error(f"the instance refused: {body}")
        return 2
    print("reconciliation suspended" if body.get("suspended") else "reconciliation resumed")
    return 0
