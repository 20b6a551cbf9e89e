"""Token verification: signature, algorithm, issuer, audience and times of ID tokens and workload JWTs.

Checked in the order OIDC Core 3.1.3.7 gives; the algorithm is checked before any key is touched.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard

from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from identity.errors import TokenRejected, fail
from identity.providers.oidc.discovery import ProviderMetadata, load_key_set

# Userinfo may add profile claims but never these: they say how and when the user logged in, and only the signed
# ID token may say that (an AAL rule reading `acr` must not be fed by an unsigned response).
_ID_TOKEN_ONLY = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "nonce", "azp", "at_hash", "c_hash", "auth_time", "acr", "amr", "sid", "jti"}
)




def verify_id_token(
    meta: ProviderMetadata, jwks: KeySet | Mapping[str, Any], token: str, *, client_id: str, nonce: str | None,
    now: float | None = None, leeway_s: float = 60,
) -> dict[str, Any]:
    """OIDC Core 3.1.3.7: signature by the JWKS, iss, aud (+ azp), exp, iat and nonce. Returns the claims."""
    keys = load_key_set(jwks, provider=meta.name)
    claims = verified_claims(token, keys, meta.id_token_algorithms, meta.name, "ID token")
    current = time.time() if now is None else now
    check_issuer(claims, meta.issuer, meta.name, "ID token")
    audiences = audiences_of(claims)
    if client_id not in audiences:
        raise fail(TokenRejected, meta.name, f"ID token audience does not include client {client_id!r}")
    # Several audiences: azp must name us, or another audience's client could replay its token here.
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != client_id:
        raise fail(TokenRejected, meta.name, f"ID token azp is not client {client_id!r}")
    check_times(claims, current, leeway_s, meta.name, "ID token", is_iat_required=True)
    if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise fail(TokenRejected, meta.name, "ID token nonce does not match this login")
    check_subject(claims, meta.name, "ID token")
    return claims


def merged_claims(
    id_claims: Mapping[str, Any], info: Mapping[str, Any], *, provider: str | None = None
) -> dict[str, Any]:
    """ID-token claims plus userinfo's. OIDC Core 5.3.2: userinfo `sub` must equal the ID token's, else refuse.

    The signed ID token wins where both have a claim; login-context claims (acr, amr, auth_time, ...) come only
    from it.
    """
    name = provider or str(id_claims.get("iss", "unknown"))
    if info.get("sub") != id_claims.get("sub"):
        raise fail(TokenRejected, name, "userinfo `sub` differs from the ID token's: refusing to merge")
    return {**{k: v for k, v in info.items() if k not in _ID_TOKEN_ONLY}, **id_claims}


# --- checks shared by ID tokens and workload tokens -------------------------------------------------------------


class UnknownKey(TokenRejected):
    """Signed by a `kid` the JWKS doesn't hold (yet)."""


def verified_claims(
    token: str, keys: KeySet, algorithms: Iterable[str], provider: str, what: str
) -> dict[str, Any]:
    allowed = list(algorithms)
    token = token.strip()
    if token.count(".") == 4:
        raise fail(TokenRejected, provider, f"{what} is encrypted (JWE), which pgwarden does not accept")
    try:
        alg = jws.extract_compact(token.encode("ascii")).headers().get("alg")
    except (JoseError, ValueError, UnicodeError) as exc:
        raise fail(TokenRejected, provider, f"{what} is not a signed JWT") from exc
    if alg not in allowed:
        # Checked before any key is touched: "none" and HS* never reach joserfc (alg confusion).
        shown = alg if isinstance(alg, str) and alg.isalnum() and len(alg) <= 10 else "an unknown algorithm"
        raise fail(TokenRejected, provider, f"{what} is signed with {shown}; accepted: {', '.join(allowed)}")
    try:
        claims = jwt.decode(token, keys, algorithms=allowed).claims
    except InvalidKeyIdError as exc:
        raise fail(UnknownKey, provider, f"{what} is signed by a key that is not in the provider's JWKS") from exc
    except BadSignatureError as exc:
        raise fail(TokenRejected, provider, f"{what} signature does not verify against the provider's JWKS") from exc
    except (JoseError, ValueError) as exc:
        raise fail(TokenRejected, provider, f"{what} is malformed") from exc
    if not isinstance(claims, dict):
        raise fail(TokenRejected, provider, f"{what} claims are not a JSON object")
    return claims


def check_issuer(claims: Mapping[str, Any], issuer: str, provider: str, what: str) -> None:
    if claims.get("iss") != issuer:
        raise fail(TokenRejected, provider, f"{what} issuer (iss) is not {issuer!r}")


def audiences_of(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


def check_times(
    claims: Mapping[str, Any], now: float, leeway_s: float, provider: str, what: str, *, is_iat_required: bool
) -> None:
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
    if not is_number(exp):
        raise fail(TokenRejected, provider, f"{what} has no expiry (exp)")
    if now > exp + leeway_s:
        raise fail(TokenRejected, provider, f"{what} has expired (exp)", hint="log in again")
    if (iat is None and is_iat_required) or (iat is not None and not is_number(iat)):
        raise fail(TokenRejected, provider, f"{what} has no valid issue time (iat)")
    if iat is not None and iat > now + leeway_s:
        raise fail(TokenRejected, provider, f"{what} is issued in the future (iat); check the clocks")
    if nbf is not None and (not is_number(nbf) or nbf > now + leeway_s):
        raise fail(TokenRejected, provider, f"{what} is not valid yet (nbf)")


def check_subject(claims: Mapping[str, Any], provider: str, what: str) -> None:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise fail(TokenRejected, provider, f"{what} names no subject (sub)")


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
