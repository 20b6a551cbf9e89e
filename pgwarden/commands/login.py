"""`pgwarden login`: get a Session and an access token from a running pgwarden (`--cluster`).

People sign in with a browser (a loopback redirect brings back a one-time code, redeemed with PKCE) or, on a
machine without one, with `--device` (RFC 8628). Workloads exchange a platform-signed identity token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import threading
import webbrowser
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import platformdirs
from aiohttp import web

from identity.pkce import s256_challenge
from pgwarden.commands.login_workload import add_client_credentials_options, run_client_credentials_login
from pgwarden.commands.token import parse_ttl
from pgwarden.output import error
from proxy.filesafe import write_private

EPILOG = """\
examples:
  pgwarden login --cluster https://pgwarden.example.com          # opens your browser ($BROWSER is honoured)
  pgwarden login --cluster https://pgwarden.example.com --idp okta --aal2
  pgwarden login --cluster https://pgwarden.example.com --device # prints a URL and a code to type elsewhere
  pgwarden connect -p my-postgres:5432                           # then, in another terminal:
  psql -h localhost -p 5432                                      # no password needed

A workload (e.g. a GitHub Actions job) exchanges its platform-signed identity token instead:
  pgwarden login --cluster https://pgwarden.example.com --idp github-actions --assertion-file id-token.jwt
The IdentityProvider (spec.oidcIdentityToken) checks its issuer, audience and signature; the token's `sub`
must be listed in a WORKLOAD User's spec.authentication.identities. The access token is printed on stdout.

Every login saves the access token and the cluster's proxy address in CREDENTIALS (0600) and the proxy's
CA certificate next to it (ca.pem). Exit codes: 0 logged in, 1 the login was refused, denied or timed out,
2 could not run (cluster unreachable, bad options).
"""

DEFAULT_CLUSTER = "http://127.0.0.1:8080"
WORKLOAD_TTL_S = 3600


class LoginFailed(Exception):
    """The login did not finish; `message` and `hint` are printed, `code` is the exit status."""

    def __init__(self, message: str, *, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def credentials_path() -> Path:
    return Path(platformdirs.user_config_dir("pgwarden")) / "credentials.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("login", help="log in to a pgwarden cluster (browser, --device, or workloads)",
                              description="Sign in and save a pgwarden Session's access token for later commands.",
                              epilog=EPILOG.replace("CREDENTIALS", str(credentials_path())),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cluster", default=DEFAULT_CLUSTER,
                   help=f"the --http-listen URL of `pgwarden up` (default {DEFAULT_CLUSTER})")
    p.add_argument("--idp", help="go straight to this IdentityProvider (metadata.name); required with "
                                 "--assertion-file")
    p.add_argument("--device", action="store_true",
                   help="sign in on another device: print a URL and a code instead of opening a browser")
    p.add_argument("--aal2", action="store_true",
                   help="ask for assurance level AAL2: a passkey or TOTP step after the identity provider")
    p.add_argument("--ttl", type=parse_ttl,
                   help="session lifetime, e.g. 15m, 8h (default: 8h for people, 1h with --assertion-file)")
    p.add_argument("--timeout", type=parse_ttl, default=300,
                   help="how long to wait for the sign-in, e.g. 2m (default 5m)")
    p.add_argument("--assertion-file", type=Path,
                   help="a file holding the platform-signed OIDC identity token (a credential: keep it private)")
    add_client_credentials_options(p)  # --client-credentials, --client-id, --client-secret-file
    p.set_defaults(func=run_login)


def run_login(args: argparse.Namespace) -> int:
    cluster = args.cluster.rstrip("/")
    try:
        if args.client_credentials:
            return run_client_credentials_login(args, cluster, save_login)
        if args.assertion_file is not None:
            return _assertion_login(args, cluster)
        body = asyncio.run(_device_login(args, cluster) if args.device else _browser_login(args, cluster))
    except LoginFailed as exc:
        error(exc.message, hint=exc.hint)
        return exc.code
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error(f"cannot reach {cluster}: {type(exc).__name__}", hint="check --cluster (pgwarden up's --http-listen)")
        return 2
    save_login(cluster, body)
    print(f"Logged in as {body['user']} ({body['method']}, {body['aal']}) until {_when(body['expiresAt'])}; "
          "next: pgwarden connect -p SERVICE:PORT")
    return 0


def save_login(cluster: str, body: dict[str, Any]) -> Path:
    """credentials.json (0600) with the token and cluster info, and the proxy's CA as ca.pem beside it."""
    path = credentials_path()
    saved = {"cluster": cluster, **body}
    if isinstance(body.get("caCertificate"), str):
        ca_file = path.with_name("ca.pem")
        write_private(ca_file, body["caCertificate"])
        saved["caFile"] = str(ca_file)
    write_private(path, json.dumps(saved, indent=2))
    return path


# --- people: the browser and a loopback redirect ---------------------------------------------------------------


async def _browser_login(args: argparse.Namespace, cluster: str) -> dict[str, Any]:
    verifier, state = secrets.token_urlsafe(48), secrets.token_urlsafe(24)
    arrived: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # The browser must use the server's own public URL: its flow cookie and the IdP's callback live there.
        _, info = await _call(http, "GET", cluster + "/v1/auth/cluster")
        base = str(info.get("publicURL") or cluster).rstrip("/")
        runner, port = await _start_loopback(state, arrived)
        try:
            query = {"redirect_uri": f"http://127.0.0.1:{port}/callback", "state": state,
                     "code_challenge": s256_challenge(verifier), "code_challenge_method": "S256"}
            query.update({k: v for k, v in (("idp", args.idp), ("aal", "AAL2" if args.aal2 else None),
                                             ("ttl", str(args.ttl) if args.ttl else None)) if v})
            url = f"{base}/login?{urlencode(query)}"
            print(f"Opening your browser to sign in. If it does not open, visit:\n  {url}", file=sys.stderr,
                  flush=True)
            # webbrowser may wait for a $BROWSER command to exit, and that command may need our loopback server.
            threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
            try:
                code = await asyncio.wait_for(arrived, args.timeout)
            except TimeoutError:
                raise LoginFailed(f"no sign-in arrived within {args.timeout} s",
                                  hint="run pgwarden login again, or pgwarden login --device on a machine "
                                       "without a browser") from None
        finally:
            await runner.cleanup()
        status, body = await _call(http, "POST", cluster + "/v1/auth/cli/token",
                                   {"code": code, "codeVerifier": verifier})
    if status != 200 or not isinstance(body.get("token"), str):
        raise LoginFailed(f"the cluster refused the login code: {body.get('error', f'HTTP {status}')}",
                          hint="run pgwarden login again")
    return body


async def _start_loopback(state: str, arrived: asyncio.Future[str]) -> tuple[web.AppRunner, int]:
    """http://127.0.0.1:RANDOM/callback: takes the one-time code once, for our `state` only (RFC 8252 §7.3)."""

    async def callback(request: web.Request) -> web.Response:
        if not secrets.compare_digest(request.query.get("state", ""), state) or not request.query.get("code"):
            return _loopback_page("Sign-in not recognised",
                                  "This response does not belong to the login in progress.", status=400)
        if not arrived.done():
            arrived.set_result(request.query["code"])
        return _loopback_page("Signed in to pgwarden", "You can close this window and return to the terminal.")

    app = web.Application()
    app.router.add_get("/callback", callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def _loopback_page(title: str, text: str, *, status: int = 200) -> web.Response:
    html = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title></head>"
            f"<body><main><h1>{escape(title)}</h1><p>{escape(text)}</p></main></body></html>")
    return web.Response(text=html, content_type="text/html", status=status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


# --- people: the device flow (RFC 8628) --------------------------------------------------------------------------


async def _device_login(args: argparse.Namespace, cluster: str) -> dict[str, Any]:
    request: dict[str, Any] = {"aal": "AAL2" if args.aal2 else "AAL1", "expiresIn": args.timeout}
    request.update({k: v for k, v in (("idp", args.idp), ("ttlSeconds", args.ttl)) if v})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        status, device = await _call(http, "POST", cluster + "/v1/auth/device/code", request)
        if status != 200 or "device_code" not in device:
            raise LoginFailed(f"the cluster refused a device login: {device.get('error_description', status)}")
        print(f"To sign in, open {device['verification_uri']} on any device and enter the code "
              f"{device['user_code']}\n  (or open {device['verification_uri_complete']})", file=sys.stderr,
              flush=True)
        interval_s = float(device.get("interval", 5))
        while True:
            await asyncio.sleep(interval_s)
            status, body = await _call(http, "POST", cluster + "/v1/auth/device/token",
                                       {"device_code": device["device_code"]})
            if status == 200 and isinstance(body.get("token"), str):
                return body
            reason = body.get("error")
            if reason == "authorization_pending":
                continue
            if reason == "slow_down":
                interval_s += 5  # RFC 8628 §3.5
                continue
            if reason == "expired_token":
                raise LoginFailed(f"the code {device['user_code']} expired before anyone signed in",
                                  hint="run pgwarden login --device again (and --timeout for longer)")
            if reason == "access_denied":
                raise LoginFailed(f"the sign-in for code {device['user_code']} was denied at the verification page",
                                  hint="if that was not you, tell your administrator")
            raise LoginFailed(f"the device login failed: {body.get('error_description') or reason or status}",
                              hint="run pgwarden login --device again")


# --- workloads ---------------------------------------------------------------------------------------------------


def _assertion_login(args: argparse.Namespace, cluster: str) -> int:
    if not args.idp:
        error("--assertion-file needs --idp NAME (the oidcIdentityToken IdentityProvider)")
        return 2
    try:
        assertion = args.assertion_file.read_text().strip()
    except OSError as exc:
        error(f"cannot read {args.assertion_file}: {exc.strerror}")
        return 2

    async def exchange() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            body = {"provider": args.idp, "assertion": assertion, "ttlSeconds": args.ttl or WORKLOAD_TTL_S}
            return await _call(http, "POST", cluster + "/v1/auth/assertion", body)

    try:
        status, body = asyncio.run(exchange())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error(f"cannot reach {cluster}: {type(exc).__name__}", hint="check --cluster (pgwarden up's --http-listen)")
        return 2
    if status != 200:
        error(body.get("error", f"HTTP {status}"))
        return 1
    save_login(cluster, body)
    print(body["token"])
    return 0


# --- small pieces ------------------------------------------------------------------------------------------------


async def _call(http: aiohttp.ClientSession, method: str, url: str,
                body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, json=body) as response:
        data = await response.json(content_type=None)
        return response.status, data if isinstance(data, dict) else {}


def _when(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso
