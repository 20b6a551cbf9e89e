"""`pgwarden whoami` and `pgwarden logout`: the Session behind the saved credential."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import aiohttp

from pgwarden.commands.login import credentials_path
from pgwarden.credentials import CredentialsError, check_not_expired, refusal_reason, session_ended
from pgwarden.output import error

EPILOG = """\
examples:
  pgwarden whoami            # user, groups, session id, expiry and assurance level (AAL)
  pgwarden whoami -o json
  pgwarden logout            # revokes the session: its tokens stop working, its connections end
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    who = subparsers.add_parser("whoami", help="show who the saved credential is", epilog=EPILOG,
                                description="Show the user and Session behind the credential `pgwarden login` saved.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    who.add_argument("-o", "--output", choices=("text", "json"), default="text")
    who.set_defaults(func=run_whoami)
    out = subparsers.add_parser("logout", help="revoke the saved credential's session", epilog=EPILOG,
                                description="Revoke the Session of the saved credential and forget it.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    out.set_defaults(func=run_logout)


def _saved() -> dict[str, Any] | None:
    try:
        return dict(json.loads(credentials_path().read_text()))
    except (OSError, ValueError):
        return None


def _call(saved: dict[str, Any], method: str, path: str) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {saved['token']}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.request(method, str(saved["cluster"]).rstrip("/") + path, headers=headers) as response:
                return response.status, await response.json(content_type=None)

    return asyncio.run(go())


def run_whoami(args: argparse.Namespace) -> int:
    saved = _saved()
    if saved is None:
        error("not logged in", hint="pgwarden login --cluster URL --idp NAME …")
        return 1
    try:
        check_not_expired(saved)
        status, body = _call(saved, "GET", "/v1/auth/whoami")
        if status == 401:  # the cluster no longer accepts this session (revoked, expired)
            raise session_ended(saved, refusal_reason(str(body.get("error", "")) if isinstance(body, dict) else ""))
    except CredentialsError as exc:
        error(exc.message, hint=exc.hint)
        return 1
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error(f"cannot reach {saved.get('cluster')}: {type(exc).__name__}", hint="is `pgwarden up` running?")
        return 2
    if status != 200:
        error(f"{body.get('error', status)}", hint=f"log in again: pgwarden login --cluster {saved.get('cluster')}")
        return 1
    if args.output == "json":
        print(json.dumps(body, indent=2))
    else:
        groups = ", ".join(body["groups"]) or "(none)"
        print(f"user:     {body['user']} ({body['type']})\ngroups:   {groups}\nsession:  {body['session']} "
              f"via {body['identityProvider']} ({body['method']}, {body['aal']})\nexpires:  {body['expiresAt']}")
    return 0


def run_logout(_: argparse.Namespace) -> int:
    saved = _saved()
    if saved is None:
        error("not logged in")
        return 1
    try:
        status, body = _call(saved, "POST", "/v1/auth/logout")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error(f"cannot reach {saved.get('cluster')}: {type(exc).__name__}; the saved credential is kept")
        return 2
    credentials_path().unlink(missing_ok=True)
    if status == 200:
        print(f"logged out: session {body['revoked']} revoked, {body['databaseConnectionsEnded']} connection(s) ended")
    else:
        print("the session had already ended; the saved credential is removed")
    return 0
