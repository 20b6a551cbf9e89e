"""`pgwarden login --client-credentials`: a workload's OAuth2 client id and secret (a Credential manifest) in,
an access token out, for CI jobs and services. The secret is read from a file or the environment, never argv.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp

from pgwarden.output import error

CLIENT_ID_ENV = "PGWARDEN_CLIENT_ID"
CLIENT_SECRET_ENV = "PGWARDEN_CLIENT_SECRET"  # the variable's name, not a secret
TOKEN_PATH = "/v1/auth/token"

EPILOG = """\
A CI job or service logs in with its client id and secret and gets a short-lived access token:
  export PGWARDEN_CLIENT_ID=ci-bot-deploy PGWARDEN_CLIENT_SECRET=...   # e.g. from the CI's secret store
  export PGPASSWORD=$(pgwarden login --cluster https://pgwarden.example.com --client-credentials)
  pgwarden login --client-credentials --client-id ci-bot-deploy --client-secret-file /run/secrets/pgwarden
The secret is never taken as a command-line value (other users see those in `ps`).
"""


class _RefuseSecretValue(argparse.Action):
    """`--client-secret VALUE` would leak to `ps` and shell history; without this, argparse would also take it as
    an abbreviation of --client-secret-file and echo the value back as a missing file's name."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.exit(2, f"pgwarden: error: the client secret is not accepted on the command line (it would show "
                       f"in `ps`)\nHINT:  set ${CLIENT_SECRET_ENV} or pass --client-secret-file FILE\n")


def add_client_credentials_options(p: argparse.ArgumentParser) -> None:
    """The --client-credentials options of `pgwarden login`."""
    group = p.add_argument_group("workloads with an OAuth2 client (a Credential manifest)", description=EPILOG)
    group.add_argument("--client-credentials", action="store_true",
                       help=f"log in with a client id and secret (${CLIENT_ID_ENV}, ${CLIENT_SECRET_ENV}); "
                            "prints the access token, e.g. export PGPASSWORD=$(pgwarden login --client-credentials)")
    group.add_argument("--client-id", metavar="ID", help=f"the Credential's metadata.name (default ${CLIENT_ID_ENV})")
    group.add_argument("--client-secret-file", metavar="FILE", type=Path,
                       help=f"read the client secret from FILE ('-': stdin); default ${CLIENT_SECRET_ENV}. "
                            "The secret itself is never accepted as an argument")
    group.add_argument("--client-secret", nargs="?", action=_RefuseSecretValue, help=argparse.SUPPRESS)


def run_client_credentials_login(args: argparse.Namespace, cluster: str,
                                 save: Callable[[str, dict[str, Any]], Path]) -> int:
    """Get a token from POST /v1/auth/token, save it with `save` (login.save_login) and print it."""
    client_id = args.client_id or os.environ.get(CLIENT_ID_ENV, "")
    if not client_id:
        error("no client id", hint=f"pass --client-id ID or set ${CLIENT_ID_ENV} (the Credential's metadata.name)")
        return 2
    secret = _read_secret(args.client_secret_file)
    if secret is None:
        return 2
    try:
        status, body = asyncio.run(_request_token(cluster, client_id, secret))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error(f"cannot reach {cluster}: {type(exc).__name__}", hint="check --cluster (pgwarden up's --http-listen)")
        return 2
    token = body.get("access_token")
    if status != 200 or not isinstance(token, str):
        # OAuth2 error bodies (RFC 6749 §5.2) name the reason, never the secret.
        reason = body.get("error") or f"HTTP {status}"
        description = body.get("error_description")
        error(f"client credentials refused: {reason}" + (f": {description}" if description else ""),
              hint="check the client id and secret, and the Credential manifest (spec.isDisabled, expiresAt)")
        return 1
    save(cluster, {"token": token, "user": body.get("user", ""), "session": body.get("session", ""),
                   "method": "client_credentials", "expiresAt": body.get("expiresAt", ""),
                   "clientID": client_id})
    print(token)
    return 0


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        secret = os.environ.get(CLIENT_SECRET_ENV, "")
        if not secret:
            error("no client secret", hint=f"set ${CLIENT_SECRET_ENV} or pass --client-secret-file FILE")
            return None
        return secret
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        error(f"cannot read the client secret from {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}")
        return None
    secret = text.rstrip("\r\n")  # `openssl rand -hex 32 > FILE` ends with a newline that is not part of it
    if not secret:
        error(f"{path} is empty", hint="it should hold the client secret")
        return None
    return secret


async def _request_token(cluster: str, client_id: str, secret: str) -> tuple[int, dict[str, Any]]:
    # HTTP Basic with both parts form-urlencoded first (RFC 6749 §2.3.1), which every server must support.
    basic = base64.b64encode(f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()).decode()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.post(cluster + TOKEN_PATH, data={"grant_type": "client_credentials"},
                             headers={"Authorization": f"Basic {basic}"}) as response:
            data = await response.json(content_type=None)
            return response.status, data if isinstance(data, dict) else {}

