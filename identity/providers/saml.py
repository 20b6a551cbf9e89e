"""SAML 2.0 SP-initiated login (IdentityProvider type "saml") with python3-saml: AuthnRequest over HTTP-Redirect,
Response over HTTP-POST to the ACS, signed assertion required.

The ACS POST comes cross-site from the IdP, so the browser does not send the SameSite=Lax flow cookie with it.
The ACS therefore verifies the response against the request it answers (RelayState names the flow, InResponseTo
must equal the AuthnRequest ID we stored, both single use), parks the verified result on the flow, and sends the
browser 303 to GET /login/saml/finish. That GET is a top-level navigation, which carries Lax cookies, so
`auth.flow()` checks the cookie there as for every other method: a response injected into someone else's
flow is never finished in a browser that did not start the flow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
from aiohttp import web
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from identity.providers.oidc import (
    CallbackRejected,
    IdentityError,
    ProviderMisconfigured,
    ProviderUnavailable,
    TokenRejected,
    read_bounded,
)
from identity.store.base import AssuranceLevel, AuthMethod
from identity.web.flow import AuthServer
from identity.web.login_flow import LoginFlow, LoginResult, flow_data
from proxy.snapshot import IdentityProvider

log = logging.getLogger("pgwarden.identity")

ACS_PATH = "/login/saml/acs"
FINISH_PATH = "/login/saml/finish"
METADATA_MAX_AGE_S = 3600.0
MAX_METADATA_BYTES = 1 << 20
NAME_ID_CLAIM = "nameID"
_TIMEOUT = aiohttp.ClientTimeout(total=10)
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_RESERVED_CLAIMS = frozenset({NAME_ID_CLAIM, "nameIDFormat", "sessionIndex"})
# What a person sees for python3-saml's failure codes; its own message (log only) has the details.
_REASONS = {
    OneLogin_Saml2_ValidationError.INVALID_SIGNATURE: "its signature is not valid (was it changed on the way?)",
    OneLogin_Saml2_ValidationError.NO_SIGNED_ASSERTION: "its assertion is not signed",
    OneLogin_Saml2_ValidationError.NO_SIGNATURE_FOUND: "it is not signed",
    OneLogin_Saml2_ValidationError.WRONG_AUDIENCE: "it is meant for another service provider (audience)",
    OneLogin_Saml2_ValidationError.WRONG_DESTINATION: "it was sent to another address (destination)",
    OneLogin_Saml2_ValidationError.WRONG_INRESPONSETO: "it answers another sign-in (InResponseTo)",
    OneLogin_Saml2_ValidationError.WRONG_ISSUER: "it comes from another identity provider (issuer)",
    OneLogin_Saml2_ValidationError.ASSERTION_EXPIRED: "it has expired",
    OneLogin_Saml2_ValidationError.ASSERTION_TOO_EARLY: "it is not valid yet (check the clocks)",
    OneLogin_Saml2_ValidationError.WRONG_SUBJECTCONFIRMATION: "its subject confirmation does not match this "
                                                              "sign-in (recipient, time or request)",
    OneLogin_Saml2_ValidationError.STATUS_CODE_IS_NOT_SUCCESS: "the identity provider reports a failure",
}
_metadata_cache: dict[str, tuple[float, dict[str, Any]]] = {}


@flow_data
@dataclass(frozen=True, slots=True, kw_only=True)
class _SentRequest:
    """An AuthnRequest on its way: the ACS accepts exactly one response to it."""

    idp: str
    request_id: str


class SamlLogin:
    """The ProviderHandler for `saml` IdentityProviders."""

    type_name = "saml"

    def add_routes(self, app: web.Application, auth: AuthServer) -> None:
        async def metadata(request: web.Request) -> web.StreamResponse:
            return await self._metadata(request, auth)

        async def acs(request: web.Request) -> web.StreamResponse:
            return await self._acs(request, auth)

        async def finish(request: web.Request) -> web.StreamResponse:
            return await self._finish(request, auth)

        app.router.add_get("/login/saml/{idp}/metadata", metadata)
        app.router.add_post(ACS_PATH, acs)
        app.router.add_get(FINISH_PATH, finish)

    async def start(self, request: web.Request, auth: AuthServer, provider: IdentityProvider,
                    flow: LoginFlow) -> web.StreamResponse:
        settings = await saml_settings(auth, provider)
        try:
            saml = OneLogin_Saml2_Auth(acs_request_data(auth), old_settings=settings)
            location = saml.login(return_to=flow.id)
        except OneLogin_Saml2_Error as exc:
            raise ProviderMisconfigured(f"identity provider {provider.name!r}: cannot build the SAML request "
                                        f"({exc})") from exc
        # Kept on the flow, which is in the state store: the ACS may be served by any replica.
        flow.data["saml_request"] = _SentRequest(idp=provider.name, request_id=saml.get_last_request_id())
        return web.Response(status=302, headers={"Location": location})

    async def _metadata(self, request: web.Request, auth: AuthServer) -> web.StreamResponse:
        try:
            provider = auth.provider(request.match_info["idp"], self.type_name)
            settings = OneLogin_Saml2_Settings(sp_settings(auth, provider), sp_validation_only=True)
            xml = settings.get_sp_metadata()
        except IdentityError as exc:
            return auth.refuse(exc, status=404)
        return web.Response(body=xml, content_type="application/samlmetadata+xml")

    async def _acs(self, request: web.Request, auth: AuthServer) -> web.StreamResponse:
        form = await request.post()
        relay_state, encoded = str(form.get("RelayState", "")), form.get("SAMLResponse")
        # The flow is taken from the store, and the request popped from it: a replayed response finds nothing.
        flow = await auth.take_flow(relay_state)
        sent = flow.data.pop("saml_request", None) if flow is not None else None
        if flow is not None:
            auth.check_out(request, flow)  # back to the store when this request ends, for GET /login/saml/finish
        try:
            if flow is None or not isinstance(sent, _SentRequest):
                raise CallbackRejected("this SAML response does not answer a sign-in in progress here "
                                       "(unknown, expired or already used)", hint="start again from the login page")
            if not isinstance(encoded, str) or not encoded:
                raise CallbackRejected("the POST carries no SAMLResponse")
            provider = auth.provider(sent.idp, self.type_name)
            claims = verified_claims(auth, provider, await saml_settings(auth, provider), encoded, sent.request_id)
            spec = auth.provider_spec(provider)
            user = auth.map_user(provider, claims, str(spec.get("identifierAttribute") or NAME_ID_CLAIM))
        except IdentityError as exc:
            log.warning("saml login refused: %s", exc.message)
            return auth.refuse(exc)
        flow.data["saml_result"] = LoginResult(user=user.name, idp=provider.name, method=AuthMethod.SAML,
                                               aal=AssuranceLevel.AAL1, claims=claims)
        return web.Response(status=303, headers={"Location": f"{FINISH_PATH}?{urlencode({'flow': flow.id})}"})

    async def _finish(self, request: web.Request, auth: AuthServer) -> web.StreamResponse:
        try:
            flow = await auth.flow(request)  # the cookie check the cross-site ACS POST could not make
            result = flow.data.pop("saml_result", None)
            if not isinstance(result, LoginResult):
                raise CallbackRejected("this sign-in has no verified SAML response", hint="start again")
        except IdentityError as exc:
            log.warning("saml login refused: %s", exc.message)
            return auth.refuse(exc)
        return await auth.finish_login(request, flow, result)



def verified_claims(auth: AuthServer, provider: IdentityProvider, settings: dict[str, Any], encoded: str,
                    request_id: str) -> dict[str, Any]:
    """The NameID and attributes of a response that passed every check, or TokenRejected naming the check."""
    name = provider.name
    try:
        response = OneLogin_Saml2_Response(OneLogin_Saml2_Settings(settings), encoded)
        # python3-saml skips these when the response leaves them out; an SP-initiated login must have both.
        if response.get_in_response_to() != request_id:
            raise OneLogin_Saml2_ValidationError("InResponseTo is missing or names another request",
                                                 OneLogin_Saml2_ValidationError.WRONG_INRESPONSETO)
        if settings["sp"]["entityId"] not in response.get_audiences():
            raise OneLogin_Saml2_ValidationError("the audience does not name this SP",
                                                 OneLogin_Saml2_ValidationError.WRONG_AUDIENCE)
        response.is_valid(acs_request_data(auth), request_id=request_id, raise_exceptions=True)
        name_id, name_id_format = response.get_nameid(), response.get_nameid_format()
        attributes = response.get_attributes()
    except OneLogin_Saml2_ValidationError as exc:
        reason = _REASONS.get(exc.code, "it failed validation")
        log.warning("saml response from %s refused: %s", name, exc)
        raise TokenRejected(f"identity provider {name!r}: the SAML response was refused: {reason}",
                            hint="start again from the login page; if it persists, tell your administrator") from None
    except Exception as exc:  # python3-saml and lxml raise many types for malformed input
        log.warning("saml response from %s unreadable: %s", name, type(exc).__name__)
        raise TokenRejected(f"identity provider {name!r}: the POST does not carry a readable SAML response") from None
    claims: dict[str, Any] = {NAME_ID_CLAIM: name_id, "nameIDFormat": name_id_format or ""}
    for key, values in attributes.items():
        if key not in _RESERVED_CLAIMS and isinstance(values, list) and values:
            claims[key] = values[0] if len(values) == 1 else values
    return claims


def sp_settings(auth: AuthServer, provider: IdentityProvider) -> dict[str, Any]:
    """pgwarden's SP half of the python3-saml settings for `provider`."""
    spec = auth.provider_spec(provider)
    return {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": str(spec.get("entityID") or f"{auth.public_url}/login/saml/{provider.name}/metadata"),
            "assertionConsumerService": {"url": auth.public_url + ACS_PATH,
                                         "binding": OneLogin_Saml2_Constants.BINDING_HTTP_POST},
            "NameIDFormat": OneLogin_Saml2_Constants.NAMEID_UNSPECIFIED,
        },
        "security": {
            "authnRequestsSigned": False,  # the AuthnRequest carries nothing secret; the answer is what we check
            "wantAssertionsSigned": True,
            "wantMessagesSigned": False,
            "wantNameId": True,
            "wantAttributeStatement": False,  # a NameID-only IdP is fine
            "requestedAuthnContext": False,  # let the IdP choose how (MFA, passkey, ...), don't demand a password
            "rejectDeprecatedAlgorithm": True,  # no SHA-1 signatures or digests
        },
    }


async def saml_settings(auth: AuthServer, provider: IdentityProvider) -> dict[str, Any]:
    """Full python3-saml settings: our SP half plus the IdP half read from `metadata` or `metadataURL`."""
    spec = auth.provider_spec(provider)
    settings = sp_settings(auth, provider)
    if spec.get("metadata"):
        idp = parse_idp_metadata(provider.name, str(spec["metadata"]))
    else:
        idp = await fetch_idp_metadata(provider.name, spec.get("metadataURL"))
    settings["idp"] = idp
    return settings


def parse_idp_metadata(provider: str, xml: str | bytes) -> dict[str, Any]:
    """The `idp` settings (entityId, HTTP-Redirect SSO URL, signing certificates) from IdP metadata XML."""
    try:
        parsed = OneLogin_Saml2_IdPMetadataParser.parse(xml)
    except Exception as exc:  # lxml and python3-saml raise many types for bad XML
        raise ProviderMisconfigured(f"identity provider {provider!r}: the SAML metadata is not valid XML "
                                    f"({type(exc).__name__})") from None
    idp = parsed.get("idp") or {}
    if not idp.get("entityId") or not idp.get("singleSignOnService", {}).get("url"):
        raise ProviderMisconfigured(f"identity provider {provider!r}: the SAML metadata names no entityID or no "
                                    "HTTP-Redirect SingleSignOnService",
                                    hint="use the IdP's metadata for SP-initiated SSO over HTTP-Redirect")
    if not idp.get("x509cert") and not (idp.get("x509certMulti") or {}).get("signing"):
        raise ProviderMisconfigured(f"identity provider {provider!r}: the SAML metadata has no signing certificate")
    return dict(idp)


async def fetch_idp_metadata(provider: str, url: object, *, max_age_s: float = METADATA_MAX_AGE_S
                             ) -> dict[str, Any]:
    """The IdP settings from `url`, cached for `max_age_s` (IdPs rotate keys by republishing metadata)."""
    url = _checked_url(url, provider)
    cached = _metadata_cache.get(url)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    try:
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as http, \
                http.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ProviderUnavailable(f"identity provider {provider!r}: the SAML metadata URL answered "
                                          f"HTTP {response.status}")
            raw = await read_bounded(response, MAX_METADATA_BYTES)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ProviderUnavailable(f"identity provider {provider!r}: the SAML metadata could not be fetched "
                                  f"({type(exc).__name__})", hint="check that the IdP is reachable") from exc
    if len(raw) > MAX_METADATA_BYTES:
        raise ProviderUnavailable(f"identity provider {provider!r}: the SAML metadata is larger than 1 MiB")
    idp = parse_idp_metadata(provider, raw)
    _metadata_cache[url] = (time.monotonic() + max_age_s, idp)
    return idp


def clear_metadata_cache() -> None:
    """Forget fetched IdP metadata (tests, or after an IdP rotated its keys)."""
    _metadata_cache.clear()


def acs_request_data(auth: AuthServer) -> dict[str, Any]:
    """python3-saml's view of "the current request": our configured public ACS URL, never the Host header,
    so Destination and Recipient are checked against the address the IdP was told to use."""
    parts = urlsplit(auth.public_url)
    return {"https": "on" if parts.scheme == "https" else "off", "http_host": parts.netloc,
            "script_name": parts.path.rstrip("/") + ACS_PATH, "get_data": {}, "post_data": {}}


def _checked_url(url: object, provider: str) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.hostname:
        raise ProviderMisconfigured(f"identity provider {provider!r}: saml.metadataURL is missing or not absolute")
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS):
        raise ProviderMisconfigured(f"identity provider {provider!r}: saml.metadataURL must use https")
    return str(url)
