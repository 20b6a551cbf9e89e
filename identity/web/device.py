"""RFC 8628 device authorization served by pgwarden, for CLIs on machines without a browser.

POST /v1/auth/device/code   the CLI asks for a device code (kept hashed) and a user code to show
GET|POST /device            the person types the user code, then signs in as on /login (or denies the device)
POST /v1/auth/device/token  the CLI polls; once the sign-in finished, it gets an access token for that Session

The sign-in itself is an ordinary LoginFlow carrying `user_code`; AuthServer.finish_login approves the code.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from identity.store.base import (
    AssuranceLevel,
    DeviceCode,
    IdentityStore,
    hash_secret,
    new_device_code,
    new_user_code,
    utc_now,
)
from identity.web.flow import FLOW_COOKIE, HUMAN_PROVIDER_TYPES, AuthServer
from identity.web.login_flow import FLOW_TTL_S, MAX_SESSION_TTL_S, LoginFlow, LoginRefused
from identity.web.pages import e, error_page, page, redirect

log = logging.getLogger("pgwarden.identity")

DEVICE_CODE_TTL_S = 600
MAX_DEVICE_CODE_TTL_S = 1800
POLL_INTERVAL_S = 5  # RFC 8628 §3.2's default
CLIENT_NAME = "pgwarden-cli"
CSRF_COOKIE = "pgw_device"
# A user code has ~34 bits (store.new_user_code); wrong guesses per address are capped (in the state store, so
# every replica charges one budget) so it can't be brute-forced.
MAX_WRONG_CODES = 20
WRONG_CODE_WINDOW_S = 600
MAX_BODY_BYTES = 16 * 1024


class DeviceAuthorization:
    """Registered like a ProviderHandler for its routes; no IdentityProvider has type `device`."""


    def __init__(self) -> None:
        self._last_poll: dict[str, float] = {}  # device code hash → monotonic time of the last poll (slow_down)

    def add_routes(self, app: web.Application, auth: AuthServer) -> None:
        async def code(request: web.Request) -> web.Response:
            return await self.issue_code(request, auth)

        async def token(request: web.Request) -> web.Response:
            return await self.poll(request, auth)

        async def form(request: web.Request) -> web.StreamResponse:
            return self.code_page(request)

        async def submit(request: web.Request) -> web.StreamResponse:
            return await self.submit_code(request, auth)

        app.router.add_post("/v1/auth/device/code", code)
        app.router.add_post("/v1/auth/device/token", token)
        app.router.add_get("/device", form)
        app.router.add_post("/device", submit)


    # --- the CLI's side -----------------------------------------------------------------------------

    async def issue_code(self, request: web.Request, auth: AuthServer) -> web.Response:
        """{ttlSeconds?, aal?, idp?, expiresIn?} → RFC 8628 §3.2 device authorization response."""
        try:
            body = await _json_body(request)
            ttl_s = max(60, min(int(body.get("ttlSeconds", 3600)), MAX_SESSION_TTL_S))
            expires_in = max(1, min(int(body.get("expiresIn", DEVICE_CODE_TTL_S)), MAX_DEVICE_CODE_TTL_S))
            aal = AssuranceLevel[str(body.get("aal", "AAL1")).upper()]
            idp = str(body.get("idp", ""))
            if not all(ch.isalnum() or ch in "._-" for ch in idp):
                raise ValueError("idp")
        except (ValueError, TypeError, KeyError):
            return _oauth_error(400, "invalid_request",
                                'expected {"ttlSeconds": N, "aal": "AAL1"|"AAL2", "idp": NAME, "expiresIn": N}')
        device_code, user_code = new_device_code(), new_user_code()
        # The store keeps one free-form `client` field; the login's wishes ride in it so every replica sees them.
        client = f"{CLIENT_NAME} ttl={ttl_s} aal={aal.name}" + (f" idp={idp}" if idp else "")
        await auth.host.identity.store.create_device_code(
            device_code_hash=hash_secret(device_code), user_code=user_code, client=client,
            expires_at=utc_now() + timedelta(seconds=expires_in), interval_s=POLL_INTERVAL_S)
        verification_uri = auth.public_url + "/device"
        return web.json_response({
            "device_code": device_code, "user_code": user_code, "verification_uri": verification_uri,
            "verification_uri_complete": f"{verification_uri}?{urlencode({'user_code': user_code})}",
            "expires_in": expires_in, "interval": POLL_INTERVAL_S,
        })

    async def poll(self, request: web.Request, auth: AuthServer) -> web.Response:
        """RFC 8628 §3.4-3.5: pending, slow_down, expired_token, access_denied, or the token."""
        try:
            device_code = str((await _json_body(request))["device_code"])
        except (ValueError, TypeError, KeyError):
            return _oauth_error(400, "invalid_request", 'expected {"device_code": CODE}')
        store = auth.host.identity.store
        code_hash = hash_secret(device_code)
        now, mono = utc_now(), time.monotonic()
        found = await store.device_code_by_hash(code_hash)
        if found is None:
            return _oauth_error(400, "invalid_grant", "unknown or already used device code")
        if found.denied:
            return _oauth_error(400, "access_denied", "the sign-in was denied at the verification page")
        if found.is_expired(now):
            self._last_poll.pop(code_hash, None)
            return _oauth_error(400, "expired_token", "the device code expired before anyone signed in")
        last = self._last_poll.get(code_hash)
        self._last_poll[code_hash] = mono
        self._forget_old_polls(mono)
        if last is not None and mono - last < found.interval_s * 0.8:  # some slack for timer jitter
            return _oauth_error(400, "slow_down", f"poll at most every {found.interval_s} s")
        if found.approved_session_id is None:
            return _oauth_error(400, "authorization_pending", "waiting for the sign-in at the verification page")
        consumed = await store.consume_device_code(code_hash, now)
        session = await store.get_session(consumed.approved_session_id or "") if consumed else None
        if session is None or not session.is_active(now):
            return _oauth_error(400, "invalid_grant", "the device code was already used, or its session ended")
        self._last_poll.pop(code_hash, None)
        remaining_s = int((session.expires_at - now).total_seconds())
        token = auth.host.identity.tokens.issue(session.user, ttl_s=remaining_s, session_id=session.id)
        log.info("device login: user %s, session %s", session.user, session.id)
        return web.json_response({
            "token": token, "user": session.user, "session": session.id, "method": str(session.method),
            "aal": str(session.aal), "expiresAt": session.expires_at.isoformat(), **auth.cluster_info(),
        })

    def _forget_old_polls(self, mono: float) -> None:
        if len(self._last_poll) > 10_000:
            cutoff = mono - MAX_DEVICE_CODE_TTL_S
            for key in [k for k, t in self._last_poll.items() if t < cutoff]:
                del self._last_poll[key]

    # --- the person's side --------------------------------------------------------------------------

    def code_page(self, request: web.Request, *, message: str = "", status: int = 200) -> web.Response:
        csrf = secrets.token_urlsafe(24)
        prefill = request.query.get("user_code", "")[:32]
        alert = f"<div class=error role=alert><p>{e(message)}</p></div>" if message else ""
        response = page("Sign in a device", (
            f"{alert}<form method=post action='/device'>"
            "<p><label for=user_code>Enter the code shown on your device</label></p>"
            f"<input id=user_code name=user_code autocomplete=off autocapitalize=characters required "
            f"value='{e(prefill)}'><input type=hidden name=csrf value='{e(csrf)}'>"
            "<button name=action value=continue>Continue</button>"
            "<button name=action value=deny>This was not me: deny</button></form>"), status=status)
        # Double-submit token: a cross-site form cannot read it, and SameSite=Strict keeps the cookie home. Without
        # it another site could post its own user code here and have you sign in its device.
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="Strict", max_age=FLOW_TTL_S, path="/device",
                            secure=request.url.scheme == "https")
        return response

    async def submit_code(self, request: web.Request, auth: AuthServer) -> web.StreamResponse:
        form = await request.post()
        user_code, csrf, action = (str(form.get(k, "")) for k in ("user_code", "csrf", "action"))
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not csrf or not hmac.compare_digest(csrf.encode(), cookie.encode()):
            return error_page("Sign-in refused", "this form expired or came from another site",
                              hint="open the verification page again and type the code", status=403)
        address = request.remote or "?"
        store = auth.host.identity.store
        if await _wrong_codes(store, address, 0) >= MAX_WRONG_CODES:
            log.warning("device page: too many wrong user codes from %s", address)
            return self.code_page(request, message="too many wrong codes; wait a few minutes", status=429)
        found = await auth.host.identity.store.device_code_by_user_code(user_code) if user_code.strip() else None
        if found is None or found.is_expired(utc_now()) or found.denied or found.approved_session_id:
            await _wrong_codes(store, address, 1)
            return self.code_page(request, message="that code is unknown, expired or already used; check the code "
                                                   "your device shows, or start the login there again", status=400)
        if action == "deny":
            await auth.host.identity.store.deny_device_code(found.user_code)
            log.info("device login %s denied at the verification page", found.user_code)
            return page("Device denied", "<p>The device's sign-in was denied. You can close this window.</p>")
        wishes = _client_wishes(found)
        try:
            flow = auth.new_flow(user_code=found.user_code, ttl_s=int(wishes.get("ttl", 3600)),
                                 want_aal=AssuranceLevel[wishes.get("aal", "AAL1")])
        except (LoginRefused, KeyError, ValueError) as exc:
            return auth.refuse(exc if isinstance(exc, LoginRefused) else "the device asked for an unknown option")
        auth.check_out(request, flow)  # stored when this page is served
        idp = wishes.get("idp")
        response: web.StreamResponse
        if idp:
            response = redirect(f"/login/idp/{idp}?{urlencode({'flow': flow.id})}")
        else:
            response = page("Sign in to approve the device",
                            f"<p>Approving the device showing <b>{e(found.user_code)}</b>. Sign in:</p>"
                            f"<nav aria-label='sign-in methods'>{sign_in_links(auth, flow)}</nav>")
        response.set_cookie(FLOW_COOKIE, flow.id, httponly=True, samesite="Lax", max_age=FLOW_TTL_S, path="/login",
                            secure=auth.public_url.startswith("https://"))
        response.del_cookie(CSRF_COOKIE, path="/device")
        return response


async def _wrong_codes(store: IdentityStore, address: str, cost: int) -> int:
    """Wrong user codes typed from `address` in this window, counted in the state store (shared by replicas)."""
    return (await store.hit_counter(f"device-wrong:{address}", window_s=WRONG_CODE_WINDOW_S, cost=cost)).count


def sign_in_links(auth: AuthServer, flow: LoginFlow) -> str:
    """The same choices as /login lists: enabled IdentityProviders, then pgwarden's own first factors."""
    providers = sorted((p for p in auth.host.live.snapshot.identity_providers.values()
                        if p.type in HUMAN_PROVIDER_TYPES and not p.is_disabled), key=lambda p: p.name)
    links = "".join(f"<a class=button href='/login/idp/{e(p.name)}?flow={e(flow.id)}'>"
                    f"{e(p.display_name or f'Sign in with {p.name}')}</a>" for p in providers)
    links += "".join(f"<a class=button href='{e(path)}?flow={e(flow.id)}'>{e(label)}</a>"
                     for label, path in auth.first_factor_links)
    return links or "<p>No sign-in method is configured: add an IdentityProvider manifest.</p>"


def _client_wishes(code: DeviceCode) -> dict[str, str]:
    """`ttl=3600 aal=AAL2 idp=corp` from the code's client field (written by issue_code)."""
    return dict(part.split("=", 1) for part in code.client.split()[1:] if "=" in part)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ValueError("body too large")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ValueError("body too large")
    if not raw.strip():
        return {}
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise TypeError("not an object")
    return body


def _oauth_error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status)
