"""A proxy with the auth server on http://localhost:PORT (WebAuthn refuses IP origins), for passkey/TOTP tests.

The auth server is the one `pgwarden up` builds (`build_auth_server`), served on the proxy's own loop. A few
helpers stand in for the SSO first factor where a test is about the second one: they park a LoginFlow with an
AAL1 result through the real `AuthServer.finish_login`, exactly where an SSO callback would leave it.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import Morsel
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
from aiohttp import web
from yarl import URL

from identity.sessions import Identity
from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.app import build_auth_server
from identity.web.flow import FLOW_COOKIE, WEB_COOKIE, AuthServer
from identity.web.login_flow import LoginFlow, LoginResult
from tests.support.peers import OIDC_CLIENT_ID, OIDC_CLIENT_SECRET
from tests.support.proxy_harness import ProxyHarness, start_harness

# prod-db serves only AAL2 sessions: its one rule demands it and there is no default config.
MANIFESTS = """\
kind: Service
metadata: {{name: prod-db}}
spec:
  mode: POSTGRES
  dynamicConfig:
    configs:
      - name: full-access
        upstream: {{url: "postgres://{host}:{port}"}}
        postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}}}}
    rules:
      - condition: {{match: 'ctx.session.status.authentication.info.aal == "AAL2"'}}
        configName: full-access
---
kind: Group
metadata: {{name: admins}}
---
kind: IdentityProvider
metadata: {{name: corp}}
spec:
  displayName: Sign in with Corp
  oidc:
    issuerURL: "__ISSUER__"
    clientID: __CLIENT_ID__
    clientSecret: {{fromSecret: corp-oidc-secret}}
    scopes: [openid, email, profile]
---
kind: Secret
metadata: {{name: corp-oidc-secret}}
data: {{value: "__CLIENT_SECRET__"}}
---
kind: Secret
metadata: {{name: full-access-password}}
data: {{value: "{pw_full}"}}
"""
# alice, bob and carol are also accounts at the test oidc-provider (tests/peers/oidc_provider.mjs).
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank", "grace")
USER = """\
---
kind: User
metadata: {{{{name: {name}}}}}
spec:
  type: HUMAN
  groups: [admins]
  authentication: {{{{identities: [{{{{identityProvider: corp, identifier: {name}}}}}]}}}}
"""


@dataclass
class AuthSite:
    proxy: ProxyHarness
    auth: AuthServer
    url: str  # http://localhost:PORT
    data_dir: Path  # the proxy's data directory, holding the SQLite state store

    def run(self, coro: Any) -> Any:
        return self.proxy.run(coro)

    def sso_token(self, user: str, aal: AssuranceLevel = AssuranceLevel.AAL1) -> str:
        """A token of a Session as an SSO login makes one (method oidc, provider `corp`)."""
        coro = self.proxy.running.server.identity.issue_token(user, ttl_s=600, method=AuthMethod.OIDC, aal=aal,
                                                              idp="corp")
        return str(self.run(coro)[1])

    def verify(self, token: str) -> Identity:
        return self.run(self.proxy.running.server.identity.verify(token))  # type: ignore[no-any-return]

    def park(self, user: str, **flow_fields: Any) -> LoginFlow:
        """A flow asking for AAL2 whose SSO first factor gave AAL1: parked for a second factor."""
        async def go() -> LoginFlow:
            flow = self.auth.new_flow(want_aal=AssuranceLevel.AAL2, **flow_fields)
            result = LoginResult(user=user, idp="corp", method=AuthMethod.OIDC, aal=AssuranceLevel.AAL1,
                                 claims={"sub": user})
            await self.auth.finish_login(None, flow, result)  # type: ignore[arg-type]  # parking reads no request
            assert flow.pending is not None
            return flow
        return self.run(go())  # type: ignore[no-any-return]

    def dsn(self, user: str, token: str, service: str = "prod-db") -> str:
        return self.proxy.dsn(user, service, token=token)

    def files_contain(self, needle: str) -> list[Path]:
        """Files under the data directory whose bytes contain `needle` (a secret must be in none)."""
        return [p for p in self.data_dir.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def bind_auth_socket() -> tuple[socket.socket, str]:
    """A loopback socket for the auth server and the URL browsers use for it (a name: WebAuthn needs one)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://localhost:{sock.getsockname()[1]}"


def start_auth_site(pg: Any, base: Path, *, bound: tuple[socket.socket, str] | None = None,
                    issuer: str = "http://localhost:9", **harness: Any) -> tuple[AuthSite, Callable[[], None]]:
    """The proxy on MANIFESTS plus the auth server. `issuer`: the OIDC provider of IdentityProvider `corp`
    (contacted only when someone signs in through it). `harness`: start_harness options (replicas pass a
    shared `state`, `data_dir` and their own `name`)."""
    manifests = (MANIFESTS + "".join(USER.format(name=n) for n in PEOPLE)).replace("__ISSUER__", issuer) \
        .replace("__CLIENT_ID__", OIDC_CLIENT_ID).replace("__CLIENT_SECRET__", OIDC_CLIENT_SECRET)
    sock, url = bound or bind_auth_socket()
    proxy, stop_proxy = start_harness(pg, base, manifests_text=manifests, **harness)

    async def serve() -> tuple[AuthServer, web.AppRunner]:
        auth = build_auth_server(proxy.running.server, public_url=url)
        app = web.Application()
        auth.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        return auth, runner

    auth, runner = proxy.run(serve())

    def stop() -> None:
        proxy.run(runner.cleanup())
        stop_proxy()

    return AuthSite(proxy=proxy, auth=auth, url=url, data_dir=harness.get("data_dir") or base / "data"), stop


def set_cookie(client: aiohttp.ClientSession, site_url: str, name: str, value: str, path: str = "/") -> None:
    morsel: Morsel[str] = Morsel()
    morsel.set(name, value, value)
    morsel["path"] = path
    client.cookie_jar.update_cookies({name: morsel}, response_url=URL(site_url))


def join_flow(client: aiohttp.ClientSession, site: AuthSite, flow: LoginFlow) -> None:
    """Bind `flow` to this HTTP client, as GET /login does for a browser."""
    set_cookie(client, site.url, FLOW_COOKIE, flow.id, path="/login")


def sign_in_web(client: aiohttp.ClientSession, site: AuthSite, token: str) -> None:
    set_cookie(client, site.url, WEB_COOKIE, token)


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def totp_code(secret: str, steps_from_now: int = 0) -> str:
    """The code an authenticator app shows `steps_from_now` 30-second steps from now."""
    return pyotp.TOTP(secret).generate_otp(int(time.time()) // 30 + steps_from_now)


def away_from_step_edge(margin_s: float = 3.0) -> None:
    """Wait out the last seconds of a 30 s step, so a code computed now is still in the server's window."""
    into = time.time() % 30
    if into > 30 - margin_s:
        time.sleep(30 - into + 0.2)


# --- playing a person over HTTP --------------------------------------------------------------------------------


async def fetch(client: aiohttp.ClientSession, site: AuthSite, path: str, form: dict[str, str] | None = None,
                ) -> tuple[int, str, str]:
    """(status, page, final path) of a GET, or a POST of `form`, following redirects."""
    method = "POST" if form is not None else "GET"
    async with client.request(method, site.url + path, data=form) as response:
        return response.status, await response.text(), response.url.path_qs


def csrf(page: str) -> str:
    match = re.search(r"name=csrf value=([0-9a-f]{64})", page)
    assert match, page
    return match.group(1)


async def enrol_totp(site: AuthSite, user: str) -> tuple[str, str]:
    """Set up an authenticator app for `user` from an SSO session; (secret, the page that showed it)."""
    async with aiohttp.ClientSession() as client:
        sign_in_web(client, site, site.sso_token(user))
        _, account, _ = await fetch(client, site, "/account")
        assert "No authenticator app yet" in account
        status, shown, _ = await fetch(client, site, "/account/totp", {"csrf": csrf(account)})
        assert status == 200, shown
        match = re.search(r"<code id=totp-secret>([A-Z2-7]{32})</code>", shown)
        assert match, shown
        secret = match.group(1)
        away_from_step_edge()
        # The previous step's code confirms, leaving the current one for the first sign-in.
        status, page, path = await fetch(client, site, "/account/totp/confirm",
                                         {"csrf": csrf(shown), "code": totp_code(secret, -1)})
        assert (status, path) == (200, "/account?done=totp-added"), page
        assert "An authenticator app is set up." in page and secret not in page
        return secret, shown
