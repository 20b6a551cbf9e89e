"""TOTP (RFC 6238, pyotp): enrolment on /account and verification as a second factor at /login/totp.

The secret is made here, shown once at enrolment (otpauth URI and base32), stored sealed, and confirmed by a
first valid code; it is never logged nor shown again. A code is accepted within ±1 time step, each step only
once (the store's replay guard), and wrong codes are limited per flow and per user; the per-user count lives in the
state store (`hit_counter`), so every worker and replica charges the same budget.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from urllib.parse import urlencode

import pyotp
from aiohttp import web

from identity.sessions import Identity
from identity.store.base import AssuranceLevel
from identity.web.account import Account
from identity.web.flow import AuthServer, SecondFactor
from identity.web.login_flow import LoginFlow, LoginRefused, LoginResult
from identity.web.pages import e, error_page, page
from proxy.snapshot import SecretValue

log = logging.getLogger("pgwarden.identity")

LOGIN_PATH = "/login/totp"
START_PATH = "/account/totp"
CONFIRM_PATH = "/account/totp/confirm"
REMOVE_PATH = "/account/totp/remove"
ISSUER = "pgwarden"
STEP_S = 30
WINDOW_STEPS = 1  # accept the previous and next code too: phone clocks drift
MAX_FAILURES_PER_FLOW = 5
MAX_FAILURES_PER_USER = 10  # across flows, processes and replicas: a new flow must not reset the budget
FAILURE_WINDOW_S = 15 * 60  # a fixed window of the store's counter
_CODE = re.compile(r"\d{6}")

_CODE_INPUT = ("<label for=code>6-digit code from your authenticator app</label>"
               "<input id=code name=code inputmode=numeric autocomplete=one-time-code pattern='[0-9 ]*' "
               "maxlength=7 required autofocus>")


class TotpMethod:
    """Registered like a ProviderHandler for its routes; adds its second factor and account section when built."""


    def __init__(self, auth: AuthServer, account: Account) -> None:
        self.auth = auth
        self.account = account
        account.sections.append(self._section)
        auth.second_factors.append(SecondFactor(name="totp", label="Enter a code from your authenticator app",
                                                path=LOGIN_PATH, available=self._has_totp))

    def add_routes(self, app: web.Application, auth: AuthServer) -> None:
        app.router.add_get(LOGIN_PATH, self._login_page)
        app.router.add_post(LOGIN_PATH, self._login_finish)
        app.router.add_post(START_PATH, self._start)
        app.router.add_post(CONFIRM_PATH, self._confirm)
        app.router.add_post(REMOVE_PATH, self._remove)


    async def _has_totp(self, user: str) -> bool:
        enrollment = await self.auth.host.identity.store.get_totp(user)
        return enrollment is not None and enrollment.confirmed_at is not None

    # --- checking a code ----------------------------------------------------------------------------

    async def check_code(self, user: str, code: str, *, is_confirming: bool = False) -> str | None:
        """None if `code` is valid and unused for `user` (and claims its step), else why not (no secrets).

        Only a confirmed enrolment signs in; `is_confirming` checks the first code of one still in progress.
        """
        code = code.replace(" ", "")
        if await self._is_locked(user):
            return "too many wrong codes; wait a few minutes and try again"
        enrollment = await self.auth.host.identity.store.get_totp(user)
        if enrollment is None or (enrollment.confirmed_at is None) != is_confirming:
            return "no authenticator app is set up" if not is_confirming else "there is no set-up to confirm"
        if not _CODE.fullmatch(code):
            await self._fail(user)
            return "enter the 6 digits your authenticator app shows"
        totp = pyotp.TOTP(enrollment.secret.reveal(), interval=STEP_S)
        now_step = int(time.time()) // STEP_S
        matched = [step for step in range(now_step - WINDOW_STEPS, now_step + WINDOW_STEPS + 1)
                   if hmac.compare_digest(totp.generate_otp(step), code)]
        if not matched:
            await self._fail(user)
            log.warning("TOTP code refused for %s: wrong code", user)
            return "that code is not right; check your authenticator app"
        if not await self.auth.host.identity.store.mark_totp_used(user, matched[-1]):
            log.warning("TOTP code refused for %s: already used", user)
            return "that code was already used; wait for the next one"
        return None  # the window's failures stay counted: a right code must not reset a guesser's budget

    async def _failures(self, user: str, cost: int) -> int:
        hit = await self.auth.host.identity.store.hit_counter(f"totp-fail:{user}", window_s=FAILURE_WINDOW_S,
                                                                cost=cost)
        return hit.count

    async def _is_locked(self, user: str) -> bool:
        return await self._failures(user, 0) >= MAX_FAILURES_PER_USER

    async def _fail(self, user: str) -> None:
        await self._failures(user, 1)

    # --- second factor ------------------------------------------------------------------------------

    async def _pending(self, request: web.Request) -> LoginFlow:
        flow = await self.auth.flow(request)
        if flow.pending is None:
            raise LoginRefused("sign in with your identity provider first", hint="start again from the login page")
        return flow

    def _form(self, flow: LoginFlow, message: str = "", status: int = 200) -> web.Response:
        alert = f"<p class=error role=alert>{e(message)}</p>" if message else ""
        assert flow.pending is not None
        return page("Enter your code", f"<p>Signed in as <b>{e(flow.pending.user)}</b>.</p>{alert}"
                    f"<form method=post action='{LOGIN_PATH}?{e(urlencode({'flow': flow.id}))}'>{_CODE_INPUT}"
                    "<button>Continue</button></form>", status=status)

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        try:
            return self._form(await self._pending(request))
        except LoginRefused as exc:
            return self.auth.refuse(exc)

    async def _login_finish(self, request: web.Request) -> web.StreamResponse:
        try:
            flow = await self._pending(request)
        except LoginRefused as exc:
            return self.auth.refuse(exc)
        first = flow.pending
        assert first is not None
        problem = await self.check_code(first.user, str((await request.post()).get("code", "")))
        if problem is not None:
            failures = flow.data["totp_failures"] = flow.data.get("totp_failures", 0) + 1
            if failures >= MAX_FAILURES_PER_FLOW or await self._is_locked(first.user):
                self.auth.drop_flow(flow)
                log.warning("TOTP: login of %s ended after %d wrong codes", first.user, failures)
                return self.auth.refuse(LoginRefused("too many wrong codes; this sign-in has been ended",
                                                     hint="start again from the login page in a few minutes"),
                                        status=429)
            return self._form(flow, problem, status=403)
        # Second factor: the Session keeps the first factor's method and provider; AAL2 is what changed.
        try:
            return await self.auth.finish_login(request, flow, LoginResult(
                user=first.user, idp=first.idp, method=first.method, aal=AssuranceLevel.AAL2,
                claims={**first.claims, "secondFactor": "totp"}))
        except LoginRefused as exc:
            return self.auth.refuse(exc)

    # --- the account page ---------------------------------------------------------------------------

    async def _section(self, identity: Identity, may_change: bool) -> tuple[str, str]:
        csrf = form_csrf(self.account, identity)
        html = "<section><h2>Authenticator app</h2>"
        if await self._has_totp(identity.user):
            html += "<p>An authenticator app is set up.</p>"
            if may_change:
                html += f"<form method=post action={REMOVE_PATH}>{csrf}<button>Remove authenticator app</button>"
                html += "</form>"
        else:
            html += "<p>No authenticator app yet.</p>"
            if may_change:
                html += f"<form method=post action={START_PATH}>{csrf}<button>Set up an authenticator app</button>"
                html += "</form>"
        return html + "</section>", ""

    async def _start(self, request: web.Request) -> web.StreamResponse:
        checked = await self.account.change_request(request)
        if isinstance(checked, web.Response):
            return checked
        identity, form = checked
        if await self._has_totp(identity.user):
            return error_page("Already set up", "an authenticator app is already set up", status=409,
                              hint="remove it first on your account page")
        secret = pyotp.random_base32()  # 160 bits, as RFC 4226 §4 recommends
        await self.auth.host.identity.store.save_totp(identity.user, SecretValue(secret), confirmed=False)
        uri = pyotp.TOTP(secret, interval=STEP_S).provisioning_uri(name=identity.user, issuer_name=ISSUER)
        log.info("TOTP enrolment started for %s", identity.user)
        return page("Set up your authenticator app", (
            "<p>Add this account to your authenticator app, then enter the code it shows. "
            "This secret is shown only now.</p>"
            f"<p><a href='{e(uri)}'>Open in authenticator app</a></p>"
            f"<p>Or type this key: <code id=totp-secret>{e(secret)}</code></p>"
            f"<form method=post action={CONFIRM_PATH}>{form_csrf(self.account, identity)}{_CODE_INPUT}"
            "<button>Confirm</button></form>"))

    async def _confirm(self, request: web.Request) -> web.StreamResponse:
        checked = await self.account.change_request(request)
        if isinstance(checked, web.Response):
            return checked
        identity, form = checked
        enrollment = await self.auth.host.identity.store.get_totp(identity.user)
        if enrollment is None or enrollment.confirmed_at is not None:
            return error_page("Nothing to confirm", "there is no authenticator app set-up in progress",
                              status=409, hint="start again on your account page")
        problem = await self.check_code(identity.user, form.get("code", ""), is_confirming=True)
        if problem is not None:
            # The secret is not shown again: the person retries with the app they already set up.
            return page("Set up your authenticator app", (
                f"<p class=error role=alert>{e(problem)}</p>"
                f"<form method=post action={CONFIRM_PATH}>{form_csrf(self.account, identity)}{_CODE_INPUT}"
                "<button>Confirm</button></form>"), status=403)
        await self.auth.host.identity.store.confirm_totp(identity.user)
        log.info("TOTP enrolment confirmed for %s", identity.user)
        return self.account.done("totp-added")

    async def _remove(self, request: web.Request) -> web.StreamResponse:
        checked = await self.account.change_request(request)
        if isinstance(checked, web.Response):
            return checked
        identity, _ = checked
        await self.auth.host.identity.store.delete_totp(identity.user)
        log.info("TOTP removed for %s (session %s)", identity.user, identity.session.id)
        return self.account.done("totp-removed")


def form_csrf(account: Account, identity: Identity) -> str:
    return f"<input type=hidden name=csrf value={e(account.csrf_token(identity))}>"
