"""The signed-in person's /account page, where passkeys and an authenticator app (TOTP) are added and removed.

Each factor method contributes a section and its own POST routes; this module owns what they share: who is
signed in (the browser's web cookie), the CSRF token of their forms, and the rule for changing factors.

The rule: a person with no second factor may add their first one from an SSO (AAL1) session; once they have
one, changing any factor needs an AAL2 session. Otherwise someone holding only the SSO account could enrol
their own passkey and then pass every step-up meant to stop them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from identity.sessions import Identity
from identity.store.base import AssuranceLevel
from identity.web.flow import AuthServer
from identity.web.pages import e, error_page, page, redirect

ACCOUNT_PATH = "/account"
# Flash messages a factor route may ask for after a change (?done=KEY); fixed texts, so nothing is reflected.
DONE_MESSAGES = {
    "passkey-added": "Passkey added.",
    "passkey-removed": "Passkey removed.",
    "totp-added": "Authenticator app added.",
    "totp-removed": "Authenticator app removed.",
}

# A section renders (html, script) for the signed-in person; `may_change` says whether its forms may be offered.
Section = Callable[[Identity, bool], Awaitable[tuple[str, str]]]


class Account:
    """The /account page and the checks every factor route on it shares. Registered like a ProviderHandler."""


    def __init__(self, auth: AuthServer) -> None:
        self.auth = auth
        self.sections: list[Section] = []
        self._csrf_key = secrets.token_bytes(32)  # per process: a restart only costs a page reload

    def add_routes(self, app: web.Application, auth: AuthServer) -> None:
        app.router.add_get(ACCOUNT_PATH, self._page)


    # --- shared checks ----------------------------------------------------------------------------------

    async def signed_in(self, request: web.Request) -> Identity | None:
        """The browser's identity, only if its User still exists and is enabled."""
        identity = await self.auth.web_identity(request)
        if identity is None:
            return None
        user = self.auth.host.live.snapshot.users.get(identity.user)
        return identity if user is not None and not user.is_disabled else None

    def sign_in_redirect(self, *, aal: AssuranceLevel = AssuranceLevel.AAL1) -> web.Response:
        """The redirect to sign in and come back here."""
        query = {"next": ACCOUNT_PATH}
        if aal >= AssuranceLevel.AAL2:
            query["aal"] = "AAL2"
        return redirect(f"/login?{urlencode(query)}")

    def csrf_token(self, identity: Identity) -> str:
        """A form token bound to the web Session: another site cannot forge our forms' POSTs."""
        return hmac.new(self._csrf_key, identity.session.id.encode(), hashlib.sha256).hexdigest()

    async def may_change_factors(self, identity: Identity) -> bool:
        if identity.session.aal >= AssuranceLevel.AAL2:
            return True
        store = self.auth.host.identity.store
        totp = await store.get_totp(identity.user)
        has_totp = totp is not None and totp.confirmed_at is not None
        return not has_totp and not await store.passkeys_for(identity.user)

    async def change_request(self, request: web.Request) -> tuple[Identity, dict[str, str]] | web.Response:
        """For a POST that changes a factor: (identity, form) if it may, else the response to send instead."""
        identity = await self.signed_in(request)
        if identity is None:
            return error_page("Not signed in", "your pgwarden sign-in has expired", status=401,
                              hint=f"sign in again at /login?next={ACCOUNT_PATH}")
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not hmac.compare_digest(form.get("csrf", ""), self.csrf_token(identity)):
            return error_page("Request refused", "this form is stale or came from another site", status=403,
                              hint=f"open {ACCOUNT_PATH} again and retry")
        if not await self.may_change_factors(identity):
            return error_page("Confirm it's you", "changing your sign-in methods needs a second factor",
                              status=403, hint="sign in again with your passkey or authenticator app")
        return identity, form

    def done(self, key: str) -> web.Response:
        """Back to the account page after a change (303: the browser must GET it)."""
        return redirect(f"{ACCOUNT_PATH}?{urlencode({'done': key})}", status=303)

    # --- the page ---------------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        identity = await self.signed_in(request)
        if identity is None:
            return self.sign_in_redirect()
        may_change = await self.may_change_factors(identity)
        notice = DONE_MESSAGES.get(request.query.get("done", ""), "")
        parts = [f"<p>Signed in as <b>{e(identity.user)}</b> ({e(identity.session.method)}, "
                 f"{e(identity.session.aal)}).</p>"]
        if notice:
            parts.append(f"<p role=status>{e(notice)}</p>")
        if not may_change:
            parts.append("<p>To change your sign-in methods, first <a href='/login?"
                         f"{e(urlencode({'aal': 'AAL2', 'next': ACCOUNT_PATH}))}'>confirm it's you</a> "
                         "with a passkey or your authenticator app.</p>")
        scripts = []
        for section in self.sections:
            html, script = await section(identity, may_change)
            parts.append(html)
            if script:
                scripts.append(script)
        return page("Your account", "".join(parts), script="\n".join(scripts))
