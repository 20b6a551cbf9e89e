"""OAuth2 client credentials grant (RFC 6749 §4.4) for WORKLOAD Users: a Credential's client_id and secret in,
a Session and a short-lived access token out.

POST /v1/auth/token  grant_type=client_credentials, client authentication by HTTP Basic or client_id/client_secret
form fields (§2.3.1). Errors are OAuth2 error bodies (§5.2). The secret is compared as a SHA-256 hash, in
constant time; it is never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Mapping, Sequence
from urllib.parse import unquote_plus

from aiohttp import web

from identity.host import IdentityHost
from identity.store.base import AuthMethod, utc_now
from proxy.snapshot import Credential, User, UserType, hash_client_secret

log = logging.getLogger("pgwarden.identity")

TOKEN_PATH = "/v1/auth/token"
MAX_CLIENT_FIELD_CHARS = 1024
# Compared against when the client_id is unknown, so an unknown client costs the same as a wrong secret.
_NO_SUCH_CLIENT_HASH = hash_client_secret("pgwarden: no such client")


class OAuthError(Exception):
    """An RFC 6749 §5.2 error: `error` is the registered code; `description` is for humans and names no secret."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> web.Response:
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if self.error == "invalid_client":  # §5.2: a 401 must say which scheme to use
            headers["WWW-Authenticate"] = 'Basic realm="pgwarden", charset="UTF-8"'
        return web.json_response({"error": self.error, "error_description": self.description},
                                 status=self.status, headers=headers)


def _invalid_request(description: str) -> OAuthError:
    return OAuthError(400, "invalid_request", description)


async def parse_client(request: web.Request) -> tuple[str, tuple[str, ...]]:
    """(client_id, candidate client secrets) from Basic auth or the form; exactly one of the two (§2.3)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise _invalid_request("send the token request as application/x-www-form-urlencoded (RFC 6749 §4.4.2)")
    form = await request.post()
    grant_type = form.get("grant_type")
    if not grant_type:
        raise _invalid_request("grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError(400, "unsupported_grant_type", "this endpoint grants only grant_type=client_credentials")
    header = request.headers.get("Authorization", "")
    has_form_client = "client_id" in form or "client_secret" in form
    if header:
        if has_form_client:
            raise _invalid_request("authenticate the client in one way only: HTTP Basic or form fields, not both")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError(401, "invalid_client", "use HTTP Basic client authentication")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError(401, "invalid_client", "the Basic credentials are not valid base64 of UTF-8") from None
        raw_id, colon, raw_secret = decoded.partition(":")
        if not colon:
            raise OAuthError(401, "invalid_client", "the Basic credentials have no ':' between id and secret")
        # §2.3.1 form-urlencodes both parts before Basic encoding, but many clients (curl -u) send them raw, and
        # a base64 secret's '+' decodes differently: accept either reading of the secret. Ids are manifest names.
        client_id, secrets = unquote_plus(raw_id), tuple(dict.fromkeys((unquote_plus(raw_secret), raw_secret)))
    else:
        client_id, secrets = str(form.get("client_id", "")), (str(form.get("client_secret", "")),)
    if not client_id or not secrets[0]:
        raise OAuthError(401, "invalid_client", "client authentication is required: client_id and client_secret")
    if len(client_id) > MAX_CLIENT_FIELD_CHARS or any(len(s) > MAX_CLIENT_FIELD_CHARS for s in secrets):
        raise OAuthError(401, "invalid_client", "client authentication failed")
    return client_id, secrets


def authenticate(credentials: Mapping[str, Credential], client_id: str, secrets: Sequence[str]) -> Credential:
    """The Credential whose secret one of `secrets` is. Raises OAuthError(invalid_client) for an unknown id or a
    wrong secret."""
    credential = credentials.get(client_id)
    expected = (credential.secret_hash if credential is not None else _NO_SUCH_CLIENT_HASH).encode()
    # Every candidate is hashed and compared, so the time taken says nothing about which one was close.
    matches = [hmac.compare_digest(hash_client_secret(secret).encode(), expected) for secret in secrets]
    is_match = any(matches)
    if credential is None:
        # Not echoed: a secret pasted into the wrong field must not reach the log.
        log.warning("client credentials refused: unknown client_id (%d characters)", len(client_id))
    elif not is_match:
        log.warning("client credentials refused for client %s: wrong client secret", credential.name)
    if credential is None or not is_match:
        raise OAuthError(401, "invalid_client", "client authentication failed: unknown client_id or wrong secret")
    return credential


def add_client_credentials_routes(app: web.Application, host: IdentityHost) -> None:
    async def token(request: web.Request) -> web.Response:
        try:
            client_id, secrets = await parse_client(request)
            live = host.live.snapshot
            credential = authenticate(live.credentials, client_id, secrets)
            _check_usable(credential, live.users)
        except OAuthError as exc:
            return exc.response()
        session, access_token = await host.identity.issue_token(
            credential.user, ttl_s=credential.session_ttl_s, method=AuthMethod.CLIENT_CREDENTIALS,
            idp=credential.name)
        log.info("client credentials: user %s via client %s, session %s", credential.user, credential.name,
                 session.id)
        # §5.1; `user`, `session` and `expiresAt` are extra members (allowed) that `pgwarden login` saves.
        return web.json_response(
            {"access_token": access_token, "token_type": "Bearer", "expires_in": credential.session_ttl_s,
             "user": session.user, "session": session.id, "expiresAt": session.expires_at.isoformat()},
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    app.router.add_post(TOKEN_PATH, token)


def _check_usable(credential: Credential, users: Mapping[str, User]) -> None:
    """An authenticated client may still be refused: disabled or expired, or its User is not an enabled workload.

    Said plainly (§5.2 unauthorized_client): only the holder of the right secret gets this far.
    """
    user = users.get(credential.user)
    reason = ""
    if credential.is_disabled:
        reason = f"client {credential.name} is disabled (Credential spec.isDisabled)"
    elif credential.expires_at is not None and credential.expires_at <= utc_now():
        reason = f"client {credential.name} expired at {credential.expires_at.isoformat()}"
    elif user is None:
        reason = f"client {credential.name} belongs to user {credential.user}, who does not exist"
    elif user.is_disabled:
        reason = f"client {credential.name} belongs to user {credential.user}, who is disabled"
    elif user.type != UserType.WORKLOAD:
        reason = f"client {credential.name} belongs to user {credential.user}, who is not a WORKLOAD user"
    if reason:
        log.warning("client credentials refused: %s", reason)
        raise OAuthError(400, "unauthorized_client", reason + "; ask an administrator to fix the manifests")
