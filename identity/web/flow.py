"""The seam every login method plugs into.

A browser login is a LoginFlow: created at GET /login (by the CLI's browser hand-off, the device page, or a
person who just opened the page), carried through one provider's redirect dance, and finished by
`AuthServer.finish_login(request, flow, LoginResult(...))`, which creates the Session and hands its credential
to whoever started the flow:

- the CLI (`pgwarden login`): a one-time code sent to its loopback `redirect_uri`, redeemed at
  POST /v1/auth/cli/token with the PKCE verifier only that CLI knows (so the code in the URL is worthless alone);
- a device (RFC 8628): the device code is approved and the device's next poll gets the token;
- the browser itself (`next`): an HttpOnly cookie holding the access token, for account pages such as passkeys.

A flow that asks for AAL2 and whose first factor gave AAL1 is parked (`flow.pending`) and sent to
/login/second-factor, where passkey or TOTP finishes it at AAL2.

Flows and one-time CLI codes live in the identity state store (`put_ephemeral`/`take_ephemeral`), sealed with
the state key, so a callback may land on any replica behind a balancer without stickiness. A request that names
a flow *takes* it from the store (one atomic DELETE … RETURNING); the flow goes back when the request ends, unless
the login finished or was dropped. So a step served twice at once, on one replica or two, finds the flow once,
and a callback or code replayed later finds nothing. Flows expire after FLOW_TTL_S (wall clock, which replicas
share); at most MAX_FLOWS exist, and one more evicts the least recently stored, so a flood of anonymous GET
/login costs bounded space and cannot block a person in the middle of a login.
The flow's data (LoginFlow, LoginResult, what GET /login may ask for) is in login_flow.py.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from identity.errors import IdentityError
from identity.host import IdentityHost
from identity.mapping import map_identity
from identity.pkce import s256_challenge
from identity.sessions import Identity
from identity.store.base import StateStoreError, utc_now
from identity.web.login_flow import FLOW_TTL_S, LoginFlow, LoginRefused, LoginResult, flow_fields_from_query
from identity.web.pages import e, error_page, page, redirect
from proxy.errors import PgwardenError
from proxy.snapshot import IdentityProvider, User, UserType

log = logging.getLogger("pgwarden.identity")

CODE_TTL_S = 120
MAX_FLOWS = 10_000  # a flood of GET /login must not grow memory without bound: the least recently used go
EVICTION_LOG_INTERVAL_S = 10.0
FLOW_COOKIE = "pgw_flow"
WEB_COOKIE = "pgw_web"
HUMAN_PROVIDER_TYPES = ("oidc", "github", "saml")
FLOW_KIND = "login-flow"  # ephemeral records in the state store
CODE_KIND = "cli-code"
MAX_CODES = 10_000


_CHECKED_OUT = web.RequestKey("pgwarden.flow", LoginFlow)  # the flow a request took from the store


class ProviderHandler(Protocol):
    """One kind of IdentityProvider (`type`): oidc, github or saml."""

    type_name: str

    def add_routes(self, app: web.Application, auth: AuthServer) -> None:
        """The method's own routes (callbacks, metadata). Paths start with /login/<type_name>/."""

    async def start(self, request: web.Request, auth: AuthServer, provider: IdentityProvider,
                    flow: LoginFlow) -> web.StreamResponse:
        """Send the browser to the provider (usually a 302)."""


class Pages(Protocol):
    """A module of the auth server that is not an identity provider (device page, passkeys, TOTP, /account)."""

    def add_routes(self, app: web.Application, auth: AuthServer) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SecondFactor:
    """A way to finish a parked flow at AAL2 (passkey, TOTP): a label and the page that does it."""

    name: str
    label: str
    path: str  # GET path; `?flow=ID` is appended
    available: Callable[[str], Awaitable[bool]]  # does this user have it enrolled?


class AuthServer:
    """Login pages and the finish of every login, bound to one IdentityHost (its snapshot, tokens and store)."""

    def __init__(self, host: IdentityHost, *, public_url: str,
                 cluster_info: Callable[[], dict[str, Any]] | None = None) -> None:
        self.host = host
        self.public_url = public_url.rstrip("/")
        self.cluster_info = cluster_info or (lambda: {})
        self.handlers: dict[str, ProviderHandler] = {}
        self.pages: list[Pages] = []
        self.second_factors: list[SecondFactor] = []
        self.first_factor_links: list[tuple[str, str]] = []  # (label, path) e.g. passkey sign-in without SSO
        self.evicted_flows = 0
        self._evictions_unlogged = 0
        self._evictions_logged_at = 0.0

    # --- registration -------------------------------------------------------------------------------

    def register(self, handler: ProviderHandler) -> None:
        """An IdentityProvider type (oidc, github, saml): /login/idp/{name} starts it."""
        self.handlers[handler.type_name] = handler

    def add_pages(self, pages: Pages) -> None:
        """Routes of a method that is not an identity provider (device flow, passkeys, TOTP, /account)."""
        self.pages.append(pages)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/login", self._login_page)
        app.router.add_get("/login/second-factor", self._second_factor_page)
        app.router.add_get("/login/idp/{idp}", self._start_provider)
        app.router.add_post("/v1/auth/cli/token", self._redeem_code)
        app.router.add_get("/v1/auth/cluster", self._cluster)
        app.middlewares.append(self._return_flows)
        for module in [*self.handlers.values(), *self.pages]:
            module.add_routes(app, self)

    # --- flows --------------------------------------------------------------------------------------

    def new_flow(self, **fields: Any) -> LoginFlow:
        """A fresh flow, in memory until `save_flow` (or the end of the request that took it) stores it."""
        return LoginFlow(id=secrets.token_urlsafe(24), created=time.time(), **fields)

    async def save_flow(self, flow: LoginFlow) -> None:
        """Put `flow` (back) in the shared store, where the next step finds it on any replica."""
        if flow.is_done:
            return
        expires = datetime.fromtimestamp(flow.created + FLOW_TTL_S, UTC)
        evicted = await self.host.identity.store.put_ephemeral(FLOW_KIND, flow.id, flow.encode(), expires_at=expires,
                                                               max_rows=MAX_FLOWS)
        if evicted:
            self._count_evictions(evicted, time.monotonic())

    async def take_flow(self, flow_id: str) -> LoginFlow | None:
        """The unexpired flow `flow_id`, taken out of the store (no cookie check: for callers that make their own)."""
        if not flow_id:
            return None
        data = await self.host.identity.store.take_ephemeral(FLOW_KIND, flow_id)
        try:
            flow = LoginFlow.decode(data) if data is not None else None
        except (ValueError, TypeError, KeyError):  # written by another release: start the login again
            log.warning("login flow %s could not be read back; it is dropped", flow_id[:8])
            flow = None
        if flow is None or flow.is_expired(time.time()):
            return None
        return flow

    async def flow(self, request: web.Request, flow_id: str | None = None) -> LoginFlow:
        """The flow named by `flow_id` (default: the `flow` query parameter), bound to this browser's cookie.

        Taken from the store for this request, and put back when it ends (unless finished or dropped). The
        cookie check stops login CSRF: a flow someone else started cannot be finished in your browser.
        """
        flow_id = flow_id or request.query.get("flow", "")
        flow = await self.take_flow(flow_id)
        if flow is None:
            raise LoginRefused("this login has expired or is unknown", hint="start again from the login page")
        cookie = request.cookies.get(FLOW_COOKIE, "")
        if not hmac.compare_digest(cookie.encode(), flow.id.encode()):
            await self.save_flow(flow)  # still its owner's to finish
            raise LoginRefused("this login was started in another browser",
                               hint="start again from the login page in this browser")
        self.check_out(request, flow)
        return flow

    def check_out(self, request: web.Request, flow: LoginFlow) -> None:
        """Let the end of `request` put `flow` back in the store (see `_return_flows`)."""
        request[_CHECKED_OUT] = flow

    def drop_flow(self, flow: LoginFlow) -> None:
        """The flow is over (finished, or refused for good): it does not go back to the store."""
        flow.is_done = True

    @web.middleware
    async def _return_flows(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        finally:
            flow = request.get(_CHECKED_OUT)
            if isinstance(flow, LoginFlow) and not flow.is_done:
                try:
                    await self.save_flow(flow)
                except StateStoreError as exc:
                    log.warning("login flow could not go back to the state store: %s", exc.message)

    def _count_evictions(self, evicted: int, now: float) -> None:
        self.evicted_flows += evicted
        self._evictions_unlogged += evicted
        if now - self._evictions_logged_at >= EVICTION_LOG_INTERVAL_S:
            log.warning("login flows: %d unfinished login(s) evicted, least recently used first (%d at most)",
                        self._evictions_unlogged, MAX_FLOWS)
            self._evictions_unlogged, self._evictions_logged_at = 0, now

    # --- identities ---------------------------------------------------------------------------------

    def provider(self, name: str, type_name: str) -> IdentityProvider:
        provider = self.host.live.snapshot.identity_providers.get(name)
        if provider is None or provider.type != type_name:
            raise LoginRefused(f"there is no {type_name} identity provider named {name!r}")
        if provider.is_disabled:
            raise LoginRefused(f"logins through {name!r} are disabled", hint="ask your administrator")
        return provider

    def provider_spec(self, provider: IdentityProvider) -> dict[str, Any]:
        """spec.<type> of the provider's manifest (plain data; secrets by reference only)."""
        return dict(provider.manifest.get("spec", {}).get(provider.type, {}))

    def secret_value(self, ref: Mapping[str, Any] | None, *, what: str) -> str:
        """Plaintext of a `{fromSecret: NAME}` reference, for use in memory only — never log or show it."""
        name = (ref or {}).get("fromSecret")
        secret = self.host.live.snapshot.secrets.get(str(name)) if name else None
        if secret is None:
            raise LoginRefused(f"{what} is not configured", hint="the administrator must add its Secret")
        return secret.value.reveal()

    def map_user(self, provider: IdentityProvider, claims: Mapping[str, Any], identifier_claim: str) -> User:
        """The enabled HUMAN User these verified claims belong to, or LoginRefused saying why (and logged)."""
        users = self.host.live.snapshot.users
        name = map_identity(claims, provider.name, identifier_claim, users)
        user = users.get(name) if name else None
        if user is None:
            identifier = claims.get(identifier_claim)
            log.warning("login refused: identity %r of %s maps to no User", identifier, provider.name)
            raise LoginRefused(f"your {provider.display_name or provider.name} account ({identifier}) is not "
                               "linked to any pgwarden user",
                               hint="ask your administrator to add it to a User's spec.authentication.identities")
        if user.is_disabled:
            log.warning("login refused: user %s is disabled", user.name)
            raise LoginRefused(f"user {user.name} is disabled")
        if user.type != UserType.HUMAN:
            log.warning("login refused: user %s is a WORKLOAD user; browser logins are for people", user.name)
            raise LoginRefused(f"user {user.name} is a workload and cannot log in through a browser")
        return user

    async def web_identity(self, request: web.Request) -> Identity | None:
        """Who this browser is signed in as (the WEB_COOKIE from a `next` flow), or None."""
        token = request.cookies.get(WEB_COOKIE)
        if not token:
            return None
        try:
            return await self.host.identity.verify(token)
        except PgwardenError:
            return None

    # --- finishing ----------------------------------------------------------------------------------

    async def finish_login(self, request: web.Request, flow: LoginFlow, result: LoginResult) -> web.StreamResponse:
        """Create the Session for `result` and deliver its credential to whoever started `flow`."""
        if result.aal < flow.want_aal:
            flow.pending = result
            await self.save_flow(flow)  # parked: the second factor may be served by another replica
            return redirect(f"/login/second-factor?{urlencode({'flow': flow.id})}")
        self.drop_flow(flow)
        session, token = await self.host.identity.issue_token(
            result.user, ttl_s=flow.ttl_s, method=result.method, aal=result.aal, idp=result.idp,
            attrs={"claims": _plain(result.claims)} if result.claims else None,
        )
        log.info("login: user %s via %s (%s, %s), session %s", result.user, result.idp, result.method,
                 result.aal, session.id)
        body = {"token": token, "user": session.user, "session": session.id, "method": str(session.method),
                "aal": str(session.aal), "expiresAt": session.expires_at.isoformat(), **self.cluster_info()}
        if flow.redirect_uri:
            code = secrets.token_urlsafe(32)
            issued = json.dumps({"body": body, "codeChallenge": flow.code_challenge}).encode()
            await self.host.identity.store.put_ephemeral(CODE_KIND, code, issued, max_rows=MAX_CODES,
                                                         expires_at=utc_now() + timedelta(seconds=CODE_TTL_S))
            target = f"{flow.redirect_uri}?{urlencode({'code': code, 'state': flow.state})}"
            return _clear_flow_cookie(redirect(target))
        if flow.user_code:
            approved = await self.host.identity.store.approve_device_code(flow.user_code, session.id)
            if not approved:
                await self.host.identity.store.revoke_session(session.id, session.created_at)
                raise LoginRefused("this device code has expired or was already used",
                                   hint="run the login command on your device again")
            return _clear_flow_cookie(page("Device signed in", f"<p>Signed in as <b>{e(session.user)}</b>. "
                                           "Return to your terminal; you can close this window.</p>"))
        response: web.StreamResponse
        if flow.next:
            response = redirect(flow.next)
        else:
            response = page("Signed in", f"<p>Signed in as <b>{e(session.user)}</b> "
                                         f"({e(session.method)}, {e(session.aal)}). You can close this window.</p>")
        response.set_cookie(WEB_COOKIE, token, httponly=True, samesite="Lax", max_age=flow.ttl_s,
                            secure=self.public_url.startswith("https://"), path="/")
        return _clear_flow_cookie(response)

    def refuse(self, exc: IdentityError | str, *, status: int = 403) -> web.Response:
        """The clear page for a login that cannot go on; `exc` is already logged by whoever raised it."""
        if isinstance(exc, str):
            return error_page("Sign-in refused", exc, status=status)
        return error_page("Sign-in refused", exc.message, status=status, hint=exc.hint or "")

    # --- routes -------------------------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            fields = flow_fields_from_query(q)
            flow = self.new_flow(**fields)
        except LoginRefused as exc:
            return self.refuse(exc, status=400)
        self.check_out(request, flow)  # stored when this page is served
        providers = [p for p in self.host.live.snapshot.identity_providers.values()
                     if p.type in HUMAN_PROVIDER_TYPES and not p.is_disabled]
        if q.get("idp"):
            response: web.StreamResponse = redirect(f"/login/idp/{q['idp']}?{urlencode({'flow': flow.id})}")
        else:
            links = "".join(
                f"<a class=button href='/login/idp/{e(p.name)}?flow={e(flow.id)}'>"
                f"{e(p.display_name or f'Sign in with {p.name}')}</a>" for p in sorted(providers, key=lambda p: p.name)
            )
            links += "".join(f"<a class=button href='{e(path)}?flow={e(flow.id)}'>{e(label)}</a>"
                             for label, path in self.first_factor_links)
            if not links:
                links = "<p>No sign-in method is configured: add an IdentityProvider manifest.</p>"
            response = page("Sign in to pgwarden", f"<nav aria-label='sign-in methods'>{links}</nav>")
        response.set_cookie(FLOW_COOKIE, flow.id, httponly=True, samesite="Lax", max_age=FLOW_TTL_S, path="/login",
                            secure=self.public_url.startswith("https://"))
        return response

    async def _start_provider(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["idp"]
        try:
            flow = await self.flow(request)
            provider = self.host.live.snapshot.identity_providers.get(name)
            if provider is None or provider.type not in self.handlers:
                raise LoginRefused(f"there is no sign-in method named {name!r}")
            provider = self.provider(name, provider.type)
            return await self.handlers[provider.type].start(request, self, provider, flow)
        except IdentityError as exc:
            return self.refuse(exc)

    async def _second_factor_page(self, request: web.Request) -> web.StreamResponse:
        try:
            flow = await self.flow(request)
        except LoginRefused as exc:
            return self.refuse(exc)
        if flow.pending is None:
            return self.refuse("sign in with your identity provider first")
        links = ""
        for factor in self.second_factors:
            if await factor.available(flow.pending.user):
                links += f"<a class=button href='{e(factor.path)}?flow={e(flow.id)}'>{e(factor.label)}</a>"
        if not links:
            log.warning("login of %s needs AAL2 but the user has no passkey or TOTP", flow.pending.user)
            return self.refuse(f"this sign-in needs a second factor, and {flow.pending.user} has none enrolled",
                               status=403)
        return page("Confirm it's you", f"<p>Signed in as <b>{e(flow.pending.user)}</b>. "
                                        f"This sign-in needs a second factor.</p><nav>{links}</nav>")

    async def _redeem_code(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            code, verifier = str(body["code"]), str(body["codeVerifier"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"code": CODE, "codeVerifier": VERIFIER}'}, status=400)
        stored = await self.host.identity.store.take_ephemeral(CODE_KIND, code)  # one use, on any replica
        if stored is None:
            return web.json_response({"error": "unknown, used or expired login code"}, status=400)
        issued = json.loads(stored)
        if not hmac.compare_digest(s256_challenge(verifier), str(issued["codeChallenge"])):
            log.warning("login code presented with the wrong PKCE verifier")
            return web.json_response({"error": "the code verifier does not match"}, status=400)
        return web.json_response(issued["body"])

    async def _cluster(self, _: web.Request) -> web.Response:
        return web.json_response(self.cluster_info())




def _clear_flow_cookie(response: web.StreamResponse) -> web.StreamResponse:
    response.del_cookie(FLOW_COOKIE, path="/login")
    return response


def _plain(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Claims safe to keep on a Session: JSON scalars and lists of them, no token material."""
    dropped = {"access_token", "id_token", "refresh_token", "at_hash", "c_hash", "nonce"}
    return {k: v for k, v in claims.items()
            if k not in dropped and isinstance(v, str | int | float | bool | list) and len(str(v)) < 2048}
