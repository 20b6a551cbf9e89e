"""Sessions bind credentials: an access token names its Session (`sid`) and dies with it.

`SessionAuthority` issues tokens for a new Session and checks, on every connect, that the token is
valid *and* its Session is still active in the state store. Which session: in identity/ a Session is one login
(`IdentitySession`), not a client connection (proxy/session.py's `ClientSession`) nor a connection's policies
(proxy/policy/engine.py's `ConnectionPolicy`).
"""

from __future__ import annotations

from dataclasses import dataclass

from identity.store.base import AssuranceLevel, AuthMethod, IdentitySession, IdentityStore, utc_now
from identity.tokens import TokenAuthority, TokenClaims
from proxy.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who a connecting client is: the token's claims and the live Session behind them."""

    claims: TokenClaims
    session: IdentitySession

    @property
    def user(self) -> str:
        return self.claims.user


class SessionAuthority:
    """Issues session-bound tokens and verifies them against the store."""

    def __init__(self, tokens: TokenAuthority, store: IdentityStore) -> None:
        self.tokens = tokens
        self.store = store

    async def issue_token(
        self, user: str, *, ttl_s: int, method: AuthMethod = AuthMethod.TOKEN,
        aal: AssuranceLevel = AssuranceLevel.AAL1, idp: str = "pgwarden", attrs: dict[str, object] | None = None,
    ) -> tuple[IdentitySession, str]:
        """A new Session of `ttl_s` and an access token bound to it (expiring with it)."""
        session = await self.store.create_session(user=user, idp=idp, method=method, aal=aal, ttl_s=ttl_s,
                                                  attrs=dict(attrs or {}))
        return session, self.tokens.issue(user, ttl_s=ttl_s, session_id=session.id)

    async def verify(self, token: str) -> Identity:
        """Signature, expiry, then the Session: revoked or expired sessions refuse their tokens."""
        claims = self.tokens.verify(token)
        if not claims.session_id:
            raise AuthenticationFailed("access token is not bound to a session",
                                       hint="issue a new one with: pgwarden token issue --user NAME")
        session = await self.store.get_session(claims.session_id)
        if session is None or session.user != claims.user:
            raise AuthenticationFailed("the session of this access token does not exist",
                                       hint="log in again, or issue a new token")
        state = session.state(utc_now())
        if state != "ACTIVE":
            raise AuthenticationFailed(f"the session of this access token is {state.lower()}",
                                       hint="log in again, or issue a new token")
        return Identity(claims=claims, session=session)
