"""`pgwarden login`: get a Session and an access token from a running pgwarden (`--cluster`)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import aiohttp
import platformdirs

from pgwarden.commands.token import parse_ttl
from pgwarden.output import error
from proxy.filesafe import write_private

EPILOG = """\
example (a GitHub Actions job, no database secret anywhere):
  TOKEN=$(curl -sH "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" \\
          "$ACTIONS_ID_TOKEN_REQUEST_URL&audience=pgwarden" | jq -r .value)
  echo "$TOKEN" > id-token.jwt
  export PGPASSWORD=$(pgwarden login --cluster https://pgwarden.example.com --idp github-actions \\
                      --assertion-file id-token.jwt)
  psql "host=pgwarden.example.com port=6543 dbname=my-db sslmode=verify-full user=ci-bot"

The IdentityProvider (spec.oidcIdentityToken) checks the token's issuer, audience and signature;
the token's `sub` must be listed in a WORKLOAD User's spec.authentication.identities.
The access token is printed on stdout and kept in CREDENTIALS (0600) for later commands.
Browser and device logins for humans come with the SSO work (see README).
"""


def credentials_path() -> Path:
    return Path(platformdirs.user_config_dir("pgwarden")) / "credentials.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("login", help="log in to a pgwarden cluster (workloads: --assertion-file)",
                              description="Exchange an identity for a pgwarden Session and an access token.",
                              epilog=EPILOG.replace("CREDENTIALS", str(credentials_path())),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", default="http://127.0.0.1:8080",
                   help="the --http-listen URL of `pgwarden up` (default http://127.0.0.1:8080)")
    p.add_argument("--idp", required=True, help="the IdentityProvider's metadata.name")
    p.add_argument("--assertion-file", type=Path, required=True,
                   help="a file holding the platform-signed OIDC identity token (a credential: keep it private)")
    p.add_argument("--ttl", type=parse_ttl, default=3600, help="session lifetime, e.g. 15m, 1h (default 1h)")
    p.set_defaults(func=run_login)


def run_login(args: argparse.Namespace) -> int:
    try:
        assertion = args.assertion_file.read_text().strip()
    except OSError as exc:
        error(f"cannot read {args.assertion_file}: {exc.strerror}")
        return 2

    async def exchange() -> tuple[int, dict[str, str]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            url = args.cluster.rstrip("/") + "/v1/auth/assertion"
            body = {"provider": args.idp, "assertion": assertion, "ttlSeconds": args.ttl}
            async with http.post(url, json=body) as response:
                return response.status, await response.json(content_type=None)

    try:
        status, body = asyncio.run(exchange())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error(f"cannot reach {args.cluster}: {type(exc).__name__}",
              hint="check --cluster (pgwarden up's --http-listen)")
        return 2
    if status != 200:
        error(body.get("error", f"HTTP {status}"))
        return 1
    write_private(credentials_path(), json.dumps({"cluster": args.cluster, **body}))
    print(body["token"])
    return 0
