"""`pgwarden sessions list|revoke`: the identity Sessions behind tokens and logins."""

from __future__ import annotations

import argparse
import json
from urllib.parse import quote, urlencode

from pgwarden.adminclient import AdminUnavailable, add_target_options, call, socket_path
from pgwarden.output import error

EPILOG = """\
examples:
  pgwarden sessions list                     # active sessions and their open database connections
  pgwarden sessions list --user bob --all    # include revoked and expired ones
  pgwarden sessions revoke 3vQx2…            # the session's tokens stop working; its connections end
  pgwarden sessions revoke --user bob        # every session of bob
  pgwarden sessions revoke -- -3vQx2…        # an id from an older release that starts with '-'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sessions", help="list and revoke identity sessions",
                              description="List and revoke identity Sessions. Revoking one makes its tokens "
                                          "invalid and ends its live database connections with a FATAL.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="sessions_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("list", help="list sessions", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("--user", help="only this user's sessions")
    ls.add_argument("--all", action="store_true", help="include revoked and expired sessions")
    ls.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_target_options(ls)
    ls.set_defaults(func=run_list)
    rv = sub.add_parser("revoke", help="revoke a session, or all of a user's", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rv.add_argument("session", nargs="?", help="session id (from `pgwarden sessions list`)")
    rv.add_argument("--user", help="revoke every active session of this user")
    add_target_options(rv)
    rv.set_defaults(func=run_revoke)


def run_list(args: argparse.Namespace) -> int:
    query = urlencode([("user", args.user)] * bool(args.user) + [("all", "1")] * bool(args.all))
    try:
        code, body = call(socket_path(args.data_dir, args.admin_socket), "GET",
                          "/v1/identity/sessions" + (f"?{query}" if query else ""))
    except AdminUnavailable as exc:
        error(str(exc), hint="start one with `pgwarden up`, or pass --data-dir")
        return 2
    if args.output == "json":
        print(json.dumps(body, indent=2))
        return 0
    print(f"{'SESSION':<24} {'USER':<16} {'METHOD':<18} {'AAL':<5} {'STATE':<8} {'CONNS':>5}  EXPIRES")
    for s in body["sessions"]:
        print(f"{s['id']:<24} {s['user']:<16} {s['method']:<18} {s['aal']:<5} {s['state']:<8} "
              f"{s['databaseConnections']:>5}  {s['expiresAt']}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    if bool(args.session) == bool(args.user):
        error("name one session id, or --user NAME")
        return 2
    url = (f"/v1/identity/users/{quote(args.user, safe='')}/revoke" if args.user
           else f"/v1/identity/sessions/{quote(args.session, safe='')}/revoke")
    try:
        code, body = call(socket_path(args.data_dir, args.admin_socket), "POST", url)
    except AdminUnavailable as exc:
        error(str(exc), hint="start one with `pgwarden up`, or pass --data-dir")
        return 2
    if code != 200:
        error(body.get("error", str(body)) if isinstance(body, dict) else str(body))
        return 1
    print(f"revoked {len(body['revoked'])} session(s); ended {body['databaseConnectionsEnded']} database "
          "connection(s)")
    return 0
