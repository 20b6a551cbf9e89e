"""Signed, expiring access tokens (JWT, ES256 via joserfc) that a client presents as its password.

A token names a User; the proxy accepts it only over TLS and only while that User exists and is
enabled in the live snapshot. The signing key lives in the data directory (0600).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from proxy.errors import AuthenticationFailed
from proxy.filesafe import write_private

ISSUER = "pgwarden"
AUDIENCE = "pgwarden-proxy"
ALGORITHM = "ES256"
KEY_FILE = "signing-key.jwk"
VERIFIED_CACHE_SIZE = 4096  # tokens whose signature check is remembered (an ES256 verify is ~8% of a connect)


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenClaims:
    user: str
    token_id: str
    expires_at: int
    session_id: str = ""  # the Session this token dies with


class TokenAuthority:
    """Issues and verifies access tokens with one EC P-256 key."""

    def __init__(self, key: ECKey) -> None:
        self._key = key
        self._kid = key.thumbprint()
        # SHA-256 of a token that passed every check -> its claims. Only the signature and claim checks are
        # skipped on a hit: expiry is checked again on every use, and the caller still looks up the Session
        # (revocation). Keyed by digest so the token itself is not kept in memory longer than the connect.
        self._verified: dict[bytes, TokenClaims] = {}

    @classmethod
    def load_or_create(cls, data_dir: Path) -> TokenAuthority:
        path = data_dir / KEY_FILE
        if path.exists():
            return cls(ECKey.import_key(json.loads(path.read_text())))
        key = ECKey.generate_key("P-256")
        write_private(path, json.dumps(key.as_dict(private=True)))
        return cls(key)

    @classmethod
    def load(cls, data_dir: Path) -> TokenAuthority:
        path = data_dir / KEY_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"no signing key at {path}: start `pgwarden proxy --data-dir {data_dir}` once to create it"
            )
        return cls(ECKey.import_key(json.loads(path.read_text())))

    def issue(self, user: str, *, ttl_s: int, now: float | None = None, session_id: str = "") -> str:
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": user,
            "iat": issued,
            "exp": issued + ttl_s,
            "jti": secrets.token_hex(12),
            "typ": "access",
        }
        if session_id:
            claims["sid"] = session_id
        return jwt.encode({"alg": ALGORITHM, "kid": self._kid}, claims, self._key, algorithms=[ALGORITHM])

    def verify(self, token: str, *, now: float | None = None) -> TokenClaims:
        """Check signature, issuer, audience and expiry. Errors never echo the token."""
        token = token.strip()
        current = int(now if now is not None else time.time())
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            if cached.expires_at > current:
                return cached
            self._verified.pop(digest, None)
            raise AuthenticationFailed(
                "access token has expired", hint="issue a new one with: pgwarden token issue --user NAME"
            )
        claims = self._verify_uncached(token, current)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._evict(current)
        self._verified[digest] = claims
        return claims

    def _evict(self, current: int) -> None:
        """Drop expired entries; if none had expired, the oldest (dicts keep insertion order)."""
        expired = [digest for digest, claims in self._verified.items() if claims.expires_at <= current]
        for digest in expired:
            self._verified.pop(digest, None)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]

    def _verify_uncached(self, token: str, current: int) -> TokenClaims:
        if token.count(".") != 2:
            raise AuthenticationFailed(
                "password is not a pgwarden access token",
                hint="issue one with: pgwarden token issue --user NAME",
            )
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALGORITHM])
        except JoseError as exc:
            raise AuthenticationFailed(
                "access token signature is not valid for this proxy",
                hint="tokens are signed by the proxy's data directory key; issue a new one",
            ) from exc
        claims = decoded.claims
        if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE or claims.get("typ") != "access":
            raise AuthenticationFailed("access token was not issued for this proxy")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= current:
            raise AuthenticationFailed(
                "access token has expired", hint="issue a new one with: pgwarden token issue --user NAME"
            )
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise AuthenticationFailed("access token names no user")
        return TokenClaims(user=sub, token_id=str(claims.get("jti", "")), expires_at=exp,
                           session_id=str(claims.get("sid", "")))
