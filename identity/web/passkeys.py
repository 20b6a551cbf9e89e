"""Passkeys (WebAuthn, py_webauthn): registration on /account, and discoverable sign-in at /login/passkey.

One page serves both uses of a passkey: with no first factor yet it signs the person in (AAL2, method PASSKEY);
on a parked flow (`flow.pending`, e.g. SSO at AAL1 when AAL2 was asked) it is the second factor, and the passkey
must belong to the user the first factor proved. Every challenge is used once. User verification (PIN or
biometric) is required both when registering and when signing in: that is what makes a passkey AAL2.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url, parse_authentication_credential_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from identity.sessions import Identity
from identity.store.base import AssuranceLevel, AuthMethod, PasskeyCredential, StateConflict, utc_now
from identity.web.account import Account
from identity.web.flow import AuthServer, SecondFactor
from identity.web.login_flow import LoginFlow, LoginRefused, LoginResult
from identity.web.pages import e, page
from proxy.snapshot import UserType

log = logging.getLogger("pgwarden.identity")

LOGIN_PATH = "/login/passkey"
ADD_PATH = "/account/passkeys"
REMOVE_PATH = "/account/passkeys/remove"
CHALLENGE_TTL_S = 300
REGISTRATION_KIND = "passkey-registration"  # ephemeral records in the state store
MAX_REGISTRATIONS = 10_000
RP_NAME = "pgwarden"

# The browser half: WebAuthn Level 3's JSON helpers do the base64url work, so the page stays this short.
_SCRIPT = """
document.querySelectorAll('[data-webauthn]').forEach(button => button.addEventListener('click', async () => {
  const form = button.form, status = form.querySelector('[role=status]');
  const options = JSON.parse(document.getElementById(button.dataset.options).textContent);
  status.textContent = 'Waiting for your passkey…';
  try {
    const credential = button.dataset.webauthn === 'create'
      ? await navigator.credentials.create({publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options)})
      : await navigator.credentials.get({publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options)});
    form.credential.value = JSON.stringify(credential.toJSON());
    form.submit();
  } catch (err) {
    status.textContent = 'The passkey did not answer (' + err.name + '). Try again, or use another way to sign in.';
  }
}));
"""


def user_handle(user: str) -> bytes:
    """The WebAuthn user id: stable per User, and not the name itself (the spec asks for no personal data)."""
    return hashlib.sha256(b"pgwarden user:" + user.encode("utf-8")).digest()


def _options_tag(element_id: str, options_json: str) -> str:
    # JSON inside <script> must not be able to close the tag.
    safe = options_json.replace("<", "\\u003c")
    return f"<script type=application/json id={element_id}>{safe}</script>"


class PasskeyMethod:
    """Registered like a ProviderHandler (`auth.register`) for its routes; adds its second factor, first-factor
    link and account section when constructed."""


    def __init__(self, auth: AuthServer, account: Account) -> None:
        self.auth = auth
        self.account = account
        parts = urlsplit(auth.public_url)
        # WebAuthn binds credentials to a registrable domain, never an IP address: reach the server by name.
        self.rp_id = parts.hostname or "localhost"
        self.origin = f"{parts.scheme}://{parts.netloc}"
        account.sections.append(self._section)
        auth.second_factors.append(SecondFactor(name="passkey", label="Use a passkey", path=LOGIN_PATH,
                                                available=self._has_passkey))
        auth.first_factor_links.append(("Sign in with a passkey", LOGIN_PATH))

    def add_routes(self, app: web.Application, auth: AuthServer) -> None:
        app.router.add_get(LOGIN_PATH, self._login_page)
        app.router.add_post(LOGIN_PATH, self._login_finish)
        app.router.add_post(ADD_PATH, self._add)
        app.router.add_post(REMOVE_PATH, self._remove)


    async def _has_passkey(self, user: str) -> bool:
        return bool(await self.auth.host.identity.store.passkeys_for(user))

    # --- sign-in ------------------------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        try:
            flow = await self.auth.flow(request)
        except LoginRefused as exc:
            return self.auth.refuse(exc)
        # No allowCredentials: the authenticator offers its own (discoverable) credentials; the server then
        # decides whose it is. As a second factor too, so that a wrong person's passkey is refused here.
        options = generate_authentication_options(rp_id=self.rp_id,
                                                  user_verification=UserVerificationRequirement.REQUIRED)
        flow.data["passkey_challenge"] = options.challenge
        who = (f"<p>Signed in as <b>{e(flow.pending.user)}</b>; confirm it's you with your passkey.</p>"
               if flow.pending else "<p>Use the passkey on this device or your security key.</p>")
        body = (f"{who}<form method=post action='{LOGIN_PATH}?{e(urlencode({'flow': flow.id}))}'>"
                "<input type=hidden name=credential>"
                "<button type=button data-webauthn=get data-options=passkey-options>Use my passkey</button>"
                "<p role=status aria-live=polite></p></form>"
                f"{_options_tag('passkey-options', options_to_json(options))}")
        return page("Sign in with a passkey", body, script=_SCRIPT)

    async def _login_finish(self, request: web.Request) -> web.StreamResponse:
        try:
            flow = await self.auth.flow(request)
            result = await self._verify_assertion(flow, str((await request.post()).get("credential", "")))
            return await self.auth.finish_login(request, flow, result)
        except LoginRefused as exc:
            return self.auth.refuse(exc)

    async def _verify_assertion(self, flow: LoginFlow, credential_json: str) -> LoginResult:
        challenge = flow.data.pop("passkey_challenge", None)  # one use, whatever happens next
        retry = "open the passkey page again and retry"
        if challenge is None:
            raise LoginRefused("this passkey challenge was already used or never issued", hint=retry)
        try:
            credential = parse_authentication_credential_json(credential_json)
        except WebAuthnException as exc:
            log.warning("passkey sign-in refused: malformed response (%s)", exc)
            raise LoginRefused("the browser sent a malformed passkey response", hint=retry) from None
        store = self.auth.host.identity.store
        stored = await store.passkey_by_id(credential.raw_id)
        if stored is None:
            log.warning("passkey sign-in refused: unknown credential %s", credential.id[:16])
            raise LoginRefused("this passkey is not registered with pgwarden",
                               hint="sign in another way and add it on your account page")
        if flow.pending is not None and stored.user != flow.pending.user:
            log.warning("second factor refused: passkey of %s presented for %s", stored.user, flow.pending.user)
            raise LoginRefused(f"this passkey does not belong to {flow.pending.user}",
                               hint="use your own passkey, or sign in as its owner")
        handle = credential.response.user_handle
        if handle is not None and handle != user_handle(stored.user):
            log.warning("passkey sign-in refused: user handle does not match the credential of %s", stored.user)
            raise LoginRefused("this passkey's user does not match its registration", hint=retry)
        self._check_user(stored.user)
        try:
            verified = verify_authentication_response(
                credential=credential, expected_challenge=challenge, expected_rp_id=self.rp_id,
                expected_origin=self.origin, credential_public_key=stored.public_key,
                credential_current_sign_count=stored.sign_count, require_user_verification=True,
            )
        except WebAuthnException as exc:
            log.warning("passkey sign-in of %s refused: %s", stored.user, exc)
            raise LoginRefused(f"the passkey response was refused: {exc}", hint=retry) from None
        # The counter must grow (or stay 0 on authenticators without one): going back suggests a cloned key.
        if not await store.update_sign_count(stored.credential_id, verified.new_sign_count, utc_now()):
            log.warning("passkey sign-in of %s refused: signature counter did not grow (possible clone)",
                        stored.user)
            raise LoginRefused("this passkey's signature counter went backwards; it may have been copied",
                               hint="remove this passkey on your account page and register a new one")
        if flow.pending is not None:
            # Second factor: the Session keeps the first factor's method and provider; AAL2 is what changed.
            first = flow.pending
            return LoginResult(user=first.user, idp=first.idp, method=first.method, aal=AssuranceLevel.AAL2,
                               claims={**first.claims, "secondFactor": "passkey"})
        return LoginResult(user=stored.user, idp="passkey", method=AuthMethod.PASSKEY, aal=AssuranceLevel.AAL2)

    def _check_user(self, name: str) -> None:
        user = self.auth.host.live.snapshot.users.get(name)
        if user is None or user.is_disabled or user.type != UserType.HUMAN:
            log.warning("passkey sign-in refused: user %s is unknown, disabled or not a person", name)
            raise LoginRefused(f"user {name} cannot sign in", hint="ask your administrator")

    # --- the account page ---------------------------------------------------------------------------

    async def _section(self, identity: Identity, may_change: bool) -> tuple[str, str]:
        mine = await self.auth.host.identity.store.passkeys_for(identity.user)
        csrf = e(self.account.csrf_token(identity))
        rows = ""
        for cred in mine:
            used = cred.last_used_at.strftime("%Y-%m-%d %H:%M UTC") if cred.last_used_at else "never"
            remove = (f"<form method=post action={REMOVE_PATH}><input type=hidden name=csrf value={csrf}>"
                      f"<input type=hidden name=id value='{e(bytes_to_base64url(cred.credential_id))}'>"
                      "<button>Remove</button></form>" if may_change else "")
            rows += (f"<li>Passkey added {cred.created_at.strftime('%Y-%m-%d %H:%M UTC')}, last used {e(used)}"
                     f"{remove}</li>")
        html = "<section><h2>Passkeys</h2>" + (f"<ul>{rows}</ul>" if rows else "<p>No passkeys yet.</p>")
        if not may_change:
            return html + "</section>", ""
        options = generate_registration_options(
            rp_id=self.rp_id, rp_name=RP_NAME, user_name=identity.user, user_id=user_handle(identity.user),
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.REQUIRED),
            exclude_credentials=[PublicKeyCredentialDescriptor(id=c.credential_id) for c in mine],
        )
        # In the shared store, keyed by the web session: the POST may be served by another replica.
        await self.auth.host.identity.store.put_ephemeral(
            REGISTRATION_KIND, identity.session.id, options.challenge, max_rows=MAX_REGISTRATIONS,
            expires_at=utc_now() + timedelta(seconds=CHALLENGE_TTL_S))
        html += (f"<form method=post action={ADD_PATH}><input type=hidden name=csrf value={csrf}>"
                 "<input type=hidden name=credential>"
                 "<button type=button data-webauthn=create data-options=passkey-register>Add a passkey</button>"
                 "<p role=status aria-live=polite></p></form>"
                 f"{_options_tag('passkey-register', options_to_json(options))}</section>")
        return html, _SCRIPT

    async def _add(self, request: web.Request) -> web.StreamResponse:
        checked = await self.account.change_request(request)
        if isinstance(checked, web.Response):
            return checked
        identity, form = checked
        challenge = await self.auth.host.identity.store.take_ephemeral(REGISTRATION_KIND, identity.session.id)
        if challenge is None:
            return self.auth.refuse(LoginRefused("this registration has expired", hint="open /account again"))
        try:
            verified = verify_registration_response(
                credential=form.get("credential", ""), expected_challenge=challenge, expected_rp_id=self.rp_id,
                expected_origin=self.origin, require_user_verification=True,
            )
        except (WebAuthnException, ValueError) as exc:
            log.warning("passkey registration of %s refused: %s", identity.user, exc)
            return self.auth.refuse(LoginRefused(f"the new passkey was refused: {exc}",
                                                 hint="open /account again and retry"), status=400)
        transports = _transports(form.get("credential", ""))
        try:
            await self.auth.host.identity.store.add_passkey(PasskeyCredential(
                credential_id=verified.credential_id, user=identity.user, public_key=verified.credential_public_key,
                sign_count=verified.sign_count, transports=transports, created_at=utc_now()))
        except StateConflict:
            return self.auth.refuse(LoginRefused("this passkey is already registered"), status=409)
        log.info("passkey added for %s (session %s)", identity.user, identity.session.id)
        return self.account.done("passkey-added")

    async def _remove(self, request: web.Request) -> web.StreamResponse:
        checked = await self.account.change_request(request)
        if isinstance(checked, web.Response):
            return checked
        identity, form = checked
        store = self.auth.host.identity.store
        try:
            credential_id = base64url_to_bytes(form.get("id", ""))
        except ValueError:
            credential_id = b""
        stored = await store.passkey_by_id(credential_id) if credential_id else None
        if stored is None or stored.user != identity.user:
            return self.auth.refuse(LoginRefused("you have no such passkey"), status=404)
        await store.remove_passkey(credential_id)
        log.info("passkey removed for %s (session %s)", identity.user, identity.session.id)
        return self.account.done("passkey-removed")


def _transports(credential_json: str) -> list[str]:
    """The authenticator's transports hint, kept so a later allowCredentials list could pass it on."""
    try:
        transports = json.loads(credential_json).get("response", {}).get("transports", [])
    except (ValueError, AttributeError):
        return []
    return [str(t) for t in transports][:8] if isinstance(transports, list) else []
