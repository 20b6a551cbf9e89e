"""The verified-token cache: a repeat connect skips the signature check, never the expiry or revocation checks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from identity import tokens as tokens_module
from identity.sessions import SessionAuthority
from identity.store.base import IdentityStore, utc_now
from identity.store.opening import open_store
from identity.tokens import TokenAuthority
from proxy.errors import AuthenticationFailed

KEY = bytes(range(32))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[IdentityStore]:
    opened = await open_store(None, tmp_path, encryption_key=KEY)
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_revoked_sessions_cached_token_is_refused(store: IdentityStore, tmp_path: Path) -> None:
    authority = SessionAuthority(TokenAuthority.load_or_create(tmp_path), store)
    session, token = await authority.issue_token("alice", ttl_s=600)
    first = await authority.verify(token)
    second = await authority.verify(token)
    assert second.claims is first.claims  # the second connect was answered from the cache
    assert await store.revoke_session(session.id, utc_now())
    with pytest.raises(AuthenticationFailed, match="session of this access token is revoked"):
        await authority.verify(token)


def test_an_expired_token_is_refused_even_if_cached(tmp_path: Path) -> None:
    authority = TokenAuthority.load_or_create(tmp_path)
    now = time.time()
    token = authority.issue("alice", ttl_s=60, now=now)
    claims = authority.verify(token, now=now)
    assert authority.verify(token, now=now + 59) is claims  # cached while valid
    with pytest.raises(AuthenticationFailed, match="expired") as refused:
        authority.verify(token, now=now + 60)
    assert token not in str(refused.value)
    with pytest.raises(AuthenticationFailed, match="expired"):  # and stays refused
        authority.verify(token, now=now + 61)


def test_only_valid_tokens_are_cached(tmp_path: Path) -> None:
    authority = TokenAuthority.load_or_create(tmp_path)
    (tmp_path / "other").mkdir()
    other = TokenAuthority.load_or_create(tmp_path / "other")  # another proxy's key
    forged = other.issue("alice", ttl_s=600)
    for _ in range(2):  # a refusal is not remembered as a success
        with pytest.raises(AuthenticationFailed, match="signature is not valid"):
            authority.verify(forged)
    expired = authority.issue("alice", ttl_s=60, now=time.time() - 120)
    for _ in range(2):
        with pytest.raises(AuthenticationFailed, match="expired"):
            authority.verify(expired)


def test_the_cache_is_bounded_and_evicts_without_refusing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_module, "VERIFIED_CACHE_SIZE", 3)
    authority = TokenAuthority.load_or_create(tmp_path)
    issued = [authority.issue(f"user{i}", ttl_s=600) for i in range(6)]
    for token in issued:
        authority.verify(token)
    assert len(authority._verified) <= 3
    # Evicted tokens are verified again from scratch, and still accepted.
    assert [authority.verify(token).user for token in issued] == [f"user{i}" for i in range(6)]
