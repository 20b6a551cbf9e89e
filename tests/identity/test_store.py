"""The identity state store: one set of tests, run against SQLite and against PostgreSQL (the `backend` param)."""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from identity.store.base import (
    AssuranceLevel,
    AuthMethod,
    EncryptionKeyMismatch,
    IdentityStore,
    PasskeyCredential,
    SchemaTooNew,
    StateConflict,
    StateStoreUnavailable,
    hash_secret,
    new_device_code,
    new_user_code,
)
from identity.store.opening import open_store
from identity.store.postgres import PostgresStore
from identity.store.sqlite import SqliteStore
from proxy.snapshot import SecretValue
from tests.support.pgcluster import TempCluster

KEY = bytes(range(32))
OTHER_KEY = bytes(32)
NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOUR_S = 3600
HOUR = timedelta(hours=1)
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
TABLES = ("sessions", "passkeys", "totp", "device_codes", "counters", "ephemeral")


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """How a test reaches one backend's state: open another store on it, read it raw, or change it behind our back."""

    kind: str
    open: Callable[..., Awaitable[IdentityStore]]
    raw: Callable[[], bytes]
    execute: Callable[[str], None]
    table: Callable[[str], str]


def _new_database(pg: TempCluster) -> str:
    name = f"pgwarden_state_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {name}", database="postgres")
    return name


@pytest.fixture(scope="module")
def pg_state_dsn(pg: TempCluster) -> Iterator[str]:
    """A fresh database for this module, as the superuser; dropped at the end."""
    name = _new_database(pg)
    try:
        yield pg.dsn("pgwarden_admin", name)
    finally:
        pg.psql(f"DROP DATABASE {name} WITH (FORCE)", database="postgres")


def _sqlite_backend(directory: Path) -> Backend:
    path = directory / "state.db"

    async def open_(key: bytes = KEY) -> IdentityStore:
        return await SqliteStore(path, encryption_key=key).open()

    def execute(sql: str) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(sql)
        conn.close()

    # The WAL holds recent writes until a checkpoint, so read it (and the shm index) too.
    return Backend(kind="sqlite", open=open_, raw=lambda: b"".join(p.read_bytes() for p in directory.glob("state.db*")),
                   execute=execute, table=lambda name: name)


def _postgres_backend(dsn: str) -> Backend:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('pgwarden.sessions')").fetchone() != (None,):
            conn.execute("TRUNCATE " + ", ".join(f"pgwarden.{t}" for t in TABLES))

    async def open_(key: bytes = KEY) -> IdentityStore:
        return await PostgresStore(dsn, encryption_key=key).open()

    def raw() -> bytes:
        # Every row as JSON (bytea shows as hex), plus the sealed column as the bytes PostgreSQL stores.
        with psycopg.connect(dsn) as conn:
            dump = [conn.execute(f"SELECT coalesce(string_agg(to_jsonb(t)::text, ' '), '') FROM pgwarden.{t} t")
                    .fetchone()[0].encode() for t in TABLES]
            dump += [row[0] for row in conn.execute("SELECT secret_sealed FROM pgwarden.totp")]
            return b" ".join(dump)

    def execute(sql: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)

    return Backend(kind="postgres", open=open_, raw=raw, execute=execute, table=lambda name: f"pgwarden.{name}")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return _sqlite_backend(tmp_path)
    return _postgres_backend(request.getfixturevalue("pg_state_dsn"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[IdentityStore]:
    opened = await backend.open()
    try:
        yield opened
    finally:
        await opened.close()


def assert_not_stored(raw: bytes, secret: str) -> None:
    assert secret.encode() not in raw
    assert secret.encode().hex() not in raw.decode("latin-1").lower()


async def new_session(store: IdentityStore, user: str = "alice", *, now: datetime = NOW, ttl_s: int = HOUR_S,
                      refresh_hash: str | None = None) -> str:
    session = await store.create_session(user=user, idp="github", method="github", aal=AssuranceLevel.AAL1,
                                         ttl_s=ttl_s, now=now, refresh_hash=refresh_hash)
    return session.id


# --- sessions ----------------------------------------------------------------------------------------------


async def test_session_round_trips_and_renders_for_cel(store: IdentityStore) -> None:
    created = await store.create_session(
        user="alice", idp="corp-oidc", method=AuthMethod.PASSKEY, aal=AssuranceLevel.AAL2, ttl_s=HOUR_S, now=NOW,
        user_agent="psql/15", ip="192.0.2.7", attrs={"groups": ["dba"]},
    )
    assert await store.get_session(created.id) == created
    assert len(created.id) == 22 and set(created.id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                              "0123456789-_")
    assert created.expires_at == NOW + timedelta(hours=1) and created.is_active(NOW)
    assert created.aal >= AssuranceLevel.AAL2
    assert created.to_cel(NOW) == {
        "metadata": {"name": created.id, "createdAt": "2030-01-01T12:00:00Z"},
        "spec": {"state": "ACTIVE", "expiresAt": "2030-01-01T13:00:00Z"},
        "status": {
            "userRef": {"name": "alice"},
            "authentication": {"info": {"type": "passkey", "aal": "AAL2", "identityProvider": {"name": "corp-oidc"}}},
        },
    }
    assert await store.get_session("no-such-session") is None


async def test_sessions_expire_and_touch_only_while_active(store: IdentityStore) -> None:
    session_id = await new_session(store)
    later = NOW + timedelta(minutes=30)
    assert await store.touch_session(session_id, later)
    session = await store.get_session(session_id)
    assert session is not None and session.last_seen_at == later
    expired_at = NOW + timedelta(hours=1)
    assert not session.is_active(expired_at) and session.to_cel(expired_at)["spec"]["state"] == "EXPIRED"
    assert not await store.touch_session(session_id, expired_at)


async def test_list_sessions_by_user_and_activity(store: IdentityStore) -> None:
    a1 = await new_session(store, "alice")
    a_old = await new_session(store, "alice", now=NOW - timedelta(hours=2))
    a_revoked = await new_session(store, "alice", now=NOW + timedelta(seconds=1))
    b1 = await new_session(store, "bob", now=NOW + timedelta(seconds=2))
    assert await store.revoke_session(a_revoked, NOW)

    assert [s.id for s in await store.list_sessions(now=NOW)] == [a1, b1]
    assert [s.id for s in await store.list_sessions("alice", now=NOW)] == [a1]
    everything = await store.list_sessions("alice", include_inactive=True, now=NOW)
    assert [s.id for s in everything] == [a_old, a1, a_revoked]


async def test_revoke_session_once(store: IdentityStore) -> None:
    session_id = await new_session(store)
    assert await store.revoke_session(session_id, NOW)
    assert not await store.revoke_session(session_id, NOW)
    assert not await store.revoke_session("no-such-session", NOW)
    revoked = await store.get_session(session_id)
    assert revoked is not None and revoked.revoked_at == NOW
    assert not revoked.is_active(NOW) and revoked.to_cel(NOW)["spec"]["state"] == "REVOKED"


async def test_revoke_user_sessions_names_what_it_revoked(store: IdentityStore) -> None:
    mine = {await new_session(store, "alice") for _ in range(3)}
    expired = await new_session(store, "alice", now=NOW - timedelta(days=1))
    theirs = await new_session(store, "bob")
    assert set(await store.revoke_user_sessions("alice", NOW)) == mine
    assert await store.revoke_user_sessions("alice", NOW) == []
    assert (await store.get_session(expired)).revoked_at is None  # type: ignore[union-attr]
    assert (await store.get_session(theirs)).is_active(NOW)  # type: ignore[union-attr]


async def test_revocations_are_announced(store: IdentityStore) -> None:
    heard: list[str] = []
    both = asyncio.Event()

    def on_revoked(session_id: str) -> None:
        heard.append(session_id)
        if len(heard) == 2:
            both.set()

    await store.watch_revocations(on_revoked)
    first, second = await new_session(store), await new_session(store, "bob")
    await store.revoke_session(first, NOW)
    await store.revoke_user_sessions("bob", NOW)
    await asyncio.wait_for(both.wait(), timeout=5)
    assert heard == [first, second]


async def test_purge_expired(store: IdentityStore) -> None:
    keep = await new_session(store)
    gone = await new_session(store, now=NOW - timedelta(hours=2))
    await store.create_device_code(device_code_hash=hash_secret(new_device_code()), user_code="BCDF-GHJK",
                                   client="cli", expires_at=NOW - timedelta(minutes=1), interval_s=5)
    assert await store.purge_expired(NOW) == 1
    assert await store.get_session(gone) is None and await store.get_session(keep) is not None
    assert await store.device_code_by_user_code("BCDF-GHJK") is None


async def test_refresh_credential_is_kept_hashed_and_rotates_once(store: IdentityStore, backend: Backend) -> None:
    raw_old, raw_new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session_id = await new_session(store, refresh_hash=hash_secret(raw_old))
    found = await store.session_by_refresh_hash(hash_secret(raw_old))
    assert found is not None and found.id == session_id
    assert_not_stored(backend.raw(), raw_old)
    with pytest.raises(ValueError, match="SHA-256"):
        await store.session_by_refresh_hash(raw_old)

    assert await store.rotate_refresh_hash(session_id, hash_secret(raw_old), hash_secret(raw_new), NOW)
    assert not await store.rotate_refresh_hash(session_id, hash_secret(raw_old), hash_secret(raw_new), NOW)
    assert await store.session_by_refresh_hash(hash_secret(raw_old)) is None
    await store.revoke_session(session_id, NOW)
    assert not await store.rotate_refresh_hash(session_id, hash_secret(raw_new), hash_secret(raw_old), NOW)


async def test_naive_times_are_refused(store: IdentityStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await new_session(store, now=datetime(2030, 1, 1))


# --- passkeys ----------------------------------------------------------------------------------------------


def passkey(credential_id: bytes, user: str = "alice", sign_count: int = 0) -> PasskeyCredential:
    return PasskeyCredential(credential_id=credential_id, user=user, public_key=b"\xa5\x01\x02" + credential_id,
                             sign_count=sign_count, transports=["usb", "nfc"], created_at=NOW)


async def test_passkeys_add_and_look_up(store: IdentityStore) -> None:
    first, second = passkey(b"\x00cred-1\xff"), passkey(b"cred-2")
    await store.add_passkey(first)
    await store.add_passkey(second)
    await store.add_passkey(passkey(b"cred-3", user="bob"))
    assert await store.passkeys_for("alice") == [first, second]
    assert await store.passkey_by_id(b"\x00cred-1\xff") == first
    assert await store.passkey_by_id(b"missing") is None
    with pytest.raises(StateConflict, match="passkey credential id already exists"):
        await store.add_passkey(passkey(b"cred-2", user="mallory"))
    assert await store.remove_passkey(b"cred-2") and not await store.remove_passkey(b"cred-2")


async def test_sign_count_must_grow(store: IdentityStore) -> None:
    await store.add_passkey(passkey(b"counted", sign_count=5))
    used_at = NOW + timedelta(minutes=1)
    assert await store.update_sign_count(b"counted", 6, used_at)
    assert not await store.update_sign_count(b"counted", 6, used_at)  # same count: a possible clone
    assert not await store.update_sign_count(b"counted", 2, used_at)
    stored = await store.passkey_by_id(b"counted")
    assert stored is not None and stored.sign_count == 6 and stored.last_used_at == used_at

    await store.add_passkey(passkey(b"counterless", sign_count=0))
    assert await store.update_sign_count(b"counterless", 0, used_at)  # authenticators without a counter
    assert not await store.update_sign_count(b"unknown", 1, used_at)


# --- TOTP --------------------------------------------------------------------------------------------------


async def test_totp_secret_is_sealed_at_rest(store: IdentityStore, backend: Backend) -> None:
    await store.save_totp("alice", SecretValue(TOTP_SECRET))
    raw = backend.raw()
    assert b"alice" in raw  # the dump does see the row, so the next check means something
    assert_not_stored(raw, TOTP_SECRET)
    enrollment = await store.get_totp("alice")
    assert enrollment is not None and enrollment.secret.reveal() == TOTP_SECRET
    assert TOTP_SECRET not in repr(enrollment)
    assert await store.get_totp("bob") is None


async def test_totp_ciphertext_is_bound_to_its_user(store: IdentityStore, backend: Backend) -> None:
    await store.save_totp("alice", SecretValue(TOTP_SECRET))
    await store.save_totp("mallory", SecretValue("MALLORYSSECRETXX"))
    totp = backend.table("totp")
    backend.execute(f"UPDATE {totp} SET secret_sealed = (SELECT secret_sealed FROM {totp} "
                    "WHERE user_name = 'alice') WHERE user_name = 'mallory'")
    with pytest.raises(EncryptionKeyMismatch, match="totp secret of 'mallory'"):
        await store.get_totp("mallory")


async def test_totp_confirmation(store: IdentityStore) -> None:
    await store.save_totp("alice", SecretValue(TOTP_SECRET))
    assert (await store.get_totp("alice")).confirmed_at is None  # type: ignore[union-attr]
    assert await store.confirm_totp("alice", NOW) and not await store.confirm_totp("alice", NOW)
    assert (await store.get_totp("alice")).confirmed_at == NOW  # type: ignore[union-attr]
    assert await store.delete_totp("alice") and await store.get_totp("alice") is None


async def test_totp_step_is_used_once(store: IdentityStore) -> None:
    await store.save_totp("alice", SecretValue(TOTP_SECRET), confirmed=True, now=NOW)
    assert await store.mark_totp_used("alice", 1000)
    assert not await store.mark_totp_used("alice", 1000)
    assert not await store.mark_totp_used("alice", 999)  # an older code from the window is a replay too
    assert await store.mark_totp_used("alice", 1001)
    assert not await store.mark_totp_used("bob", 1000)  # not enrolled
    await store.save_totp("alice", SecretValue(TOTP_SECRET + "AA"))  # a new secret starts a new history
    assert await store.mark_totp_used("alice", 1000)


async def test_totp_step_is_used_once_under_concurrency(store: IdentityStore) -> None:
    await store.save_totp("alice", SecretValue(TOTP_SECRET), confirmed=True, now=NOW)
    results = await asyncio.gather(*(store.mark_totp_used("alice", 5000) for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]


# --- counters (rate limits, failure budgets) ----------------------------------------------------------------


async def test_counters_count_per_key_and_fixed_window(store: IdentityStore) -> None:
    first = await store.hit_counter("token:10.0.0.1", window_s=60, now=NOW)
    assert (first.count, first.resets_at) == (1, NOW + timedelta(seconds=60))
    assert (await store.hit_counter("token:10.0.0.1", window_s=60, now=NOW + timedelta(seconds=59))).count == 2
    assert (await store.hit_counter("token:10.0.0.2", window_s=60, now=NOW)).count == 1  # another key
    assert (await store.hit_counter("token:10.0.0.1", window_s=60, cost=0, now=NOW)).count == 2  # a read
    later = await store.hit_counter("token:10.0.0.1", window_s=60, now=NOW + timedelta(seconds=60))
    assert (later.count, later.retry_after_s(NOW + timedelta(seconds=61))) == (1, 59)  # a new window


async def test_counters_are_shared_by_two_stores_and_exact_under_concurrency(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()  # two processes or replicas on one store
    try:
        hits = await asyncio.gather(*(s.hit_counter("totp-fail:alice", window_s=900, now=NOW)
                                      for s in (one, two) * 10))
        assert sorted(h.count for h in hits) == list(range(1, 21))  # no lost update
        assert (await two.hit_counter("totp-fail:alice", window_s=900, cost=0, now=NOW)).count == 20
    finally:
        await one.close()
        await two.close()


async def test_purge_removes_ended_counter_windows(store: IdentityStore, backend: Backend) -> None:
    await store.hit_counter("device-code:10.0.0.1", window_s=60, now=NOW)
    await store.hit_counter("device-code:10.0.0.1", window_s=60, now=NOW + timedelta(minutes=5))
    await store.purge_expired(NOW + timedelta(minutes=2))
    assert (await store.hit_counter("device-code:10.0.0.1", window_s=60, cost=0, now=NOW)).count == 0
    assert (await store.hit_counter("device-code:10.0.0.1", window_s=60, cost=0,
                                    now=NOW + timedelta(minutes=5))).count == 1
    with pytest.raises(ValueError, match="counter key"):
        await store.hit_counter("x" * 300, window_s=60)


# --- device codes ------------------------------------------------------------------------------------------


async def new_device(store: IdentityStore, *, expires_at: datetime = NOW + timedelta(minutes=10)) -> tuple[str, str]:
    raw, user_code = new_device_code(), new_user_code()
    await store.create_device_code(device_code_hash=hash_secret(raw), user_code=user_code, client="pgwarden-cli",
                                   expires_at=expires_at, interval_s=5)
    return raw, user_code


async def test_device_code_is_stored_hashed_and_found_both_ways(store: IdentityStore, backend: Backend) -> None:
    raw, user_code = await new_device(store)
    by_user_code = await store.device_code_by_user_code(user_code.lower().replace("-", " "))
    assert by_user_code is not None and by_user_code.device_code_hash == hash_secret(raw)
    assert by_user_code.user_code == user_code and by_user_code.interval_s == 5
    assert await store.device_code_by_hash(hash_secret(raw)) == by_user_code
    dump = backend.raw()
    assert hash_secret(raw).encode() in dump
    assert_not_stored(dump, raw)
    with pytest.raises(ValueError, match="SHA-256"):
        await store.create_device_code(device_code_hash=raw, user_code="XXXX-XXXX", client="c",
                                       expires_at=NOW, interval_s=5)
    with pytest.raises(StateConflict):
        await store.create_device_code(device_code_hash=hash_secret("other"), user_code=user_code, client="c",
                                       expires_at=NOW, interval_s=5)


async def test_device_code_approve_then_consume_once(store: IdentityStore) -> None:
    raw, user_code = await new_device(store)
    session_id = await new_session(store)
    assert await store.approve_device_code(user_code, session_id, NOW)
    assert not await store.approve_device_code(user_code, session_id, NOW)
    assert not await store.deny_device_code(user_code, NOW)
    consumed = await asyncio.gather(*(store.consume_device_code(hash_secret(raw), NOW) for _ in range(10)))
    winners = [c for c in consumed if c is not None]
    assert len(winners) == 1 and winners[0].approved_session_id == session_id
    assert await store.device_code_by_hash(hash_secret(raw)) is None


async def test_device_code_deny(store: IdentityStore) -> None:
    raw, user_code = await new_device(store)
    assert await store.deny_device_code(user_code, NOW)
    assert not await store.deny_device_code(user_code, NOW)
    assert not await store.approve_device_code(user_code, await new_session(store), NOW)
    denied = await store.device_code_by_hash(hash_secret(raw))
    assert denied is not None and denied.denied and denied.approved_session_id is None
    assert await store.consume_device_code(hash_secret(raw), NOW) is None


async def test_device_code_needs_a_live_code_and_session(store: IdentityStore) -> None:
    _, stale = await new_device(store, expires_at=NOW)
    assert not await store.approve_device_code(stale, await new_session(store), NOW)
    _, user_code = await new_device(store)
    revoked = await new_session(store)
    await store.revoke_session(revoked, NOW)
    assert not await store.approve_device_code(user_code, revoked, NOW)
    assert not await store.approve_device_code(user_code, "no-such-session", NOW)
    assert not await store.approve_device_code("ZZZZ-ZZZZ", await new_session(store), NOW)


# --- lifecycle ---------------------------------------------------------------------------------------------


# --- ephemeral records (login flows, one-time codes) -------------------------------------------------------


async def test_an_ephemeral_record_is_sealed_and_taken_once_by_one_of_two_stores(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    try:
        await first.put_ephemeral("cli-code", "the-code", b"token material", max_rows=10,
                                  expires_at=NOW + timedelta(minutes=2), now=NOW)
        raw = backend.raw()
        assert_not_stored(raw, "the-code")
        assert_not_stored(raw, "token material")
        assert await first.take_ephemeral("login-flow", "the-code", NOW) is None  # kinds do not mix
        taken = await asyncio.gather(*(s.take_ephemeral("cli-code", "the-code", NOW) for s in (first, second)))
        assert sorted(taken, key=bool) == [None, b"token material"]  # exactly one replica gets it
        assert await second.take_ephemeral("cli-code", "the-code", NOW) is None
    finally:
        await first.close()
        await second.close()


async def test_ephemeral_records_expire_and_are_bounded(store: IdentityStore) -> None:
    later = NOW + timedelta(minutes=5)
    await store.put_ephemeral("login-flow", "old", b"1", expires_at=NOW + timedelta(minutes=1), max_rows=2, now=NOW)
    assert await store.take_ephemeral("login-flow", "old", later) is None  # expired: gone, never served
    for i in range(3):
        evicted = await store.put_ephemeral("login-flow", f"f{i}", b"%d" % i, expires_at=later, max_rows=2,
                                            now=NOW + timedelta(seconds=i))
        assert evicted == (1 if i == 2 else 0)
    assert await store.take_ephemeral("login-flow", "f0", NOW) is None  # the least recently stored went
    assert await store.take_ephemeral("login-flow", "f2", NOW) == b"2"
    await store.put_ephemeral("login-flow", "f1", b"again", expires_at=later, max_rows=2, now=NOW)
    assert await store.take_ephemeral("login-flow", "f1", NOW) == b"again"  # put replaces


async def test_a_sealed_ephemeral_record_cannot_move_to_another_key(store: IdentityStore, backend: Backend) -> None:
    await store.put_ephemeral("login-flow", "mine", b"alice's flow", expires_at=NOW + HOUR, max_rows=5, now=NOW)
    await store.put_ephemeral("login-flow", "yours", b"bob's flow", expires_at=NOW + HOUR, max_rows=5, now=NOW)
    table = backend.table("ephemeral")
    backend.execute(f"UPDATE {table} SET value_sealed = (SELECT value_sealed FROM {table} e WHERE e.key_hash = "
                    f"'{hash_secret('mine')}') WHERE key_hash = '{hash_secret('yours')}'")
    with pytest.raises(EncryptionKeyMismatch):
        await store.take_ephemeral("login-flow", "yours", NOW)


async def test_reopening_keeps_everything(backend: Backend) -> None:
    first = await backend.open()
    try:
        session_id = await new_session(first)
        await first.add_passkey(passkey(b"kept"))
        await first.save_totp("alice", SecretValue(TOTP_SECRET))
        raw, user_code = await new_device(first)
    finally:
        await first.close()
    second = await backend.open()
    try:
        assert (await second.get_session(session_id)) is not None
        assert (await second.passkey_by_id(b"kept")) == passkey(b"kept")
        assert (await second.get_totp("alice")).secret.reveal() == TOTP_SECRET  # type: ignore[union-attr]
        assert (await second.device_code_by_hash(hash_secret(raw))).user_code == user_code  # type: ignore[union-attr]
    finally:
        await second.close()


async def test_wrong_encryption_key_is_refused_at_open(backend: Backend) -> None:
    await (await backend.open()).close()
    with pytest.raises(EncryptionKeyMismatch) as caught:
        await backend.open(OTHER_KEY)
    assert "cannot decrypt with this encryption key" in str(caught.value)
    assert caught.value.detail is not None and "different key" in caught.value.detail
    assert OTHER_KEY.hex() not in str(caught.value) and KEY.hex() not in str(caught.value)


async def test_newer_schema_is_refused(backend: Backend) -> None:
    await (await backend.open()).close()
    backend.execute(f"UPDATE {backend.table('schema_version')} SET version = version + 1")
    try:
        with pytest.raises(SchemaTooNew, match="newer than this pgwarden"):
            await backend.open()
    finally:
        backend.execute(f"UPDATE {backend.table('schema_version')} SET version = version - 1")


async def test_sqlite_files_are_private_and_shared_safely(tmp_path: Path) -> None:
    proxy = await SqliteStore(tmp_path / "state.db", encryption_key=KEY).open()
    cli = await SqliteStore(tmp_path / "state.db", encryption_key=KEY).open()
    try:
        await proxy.save_totp("alice", SecretValue(TOTP_SECRET))
        for path in tmp_path.glob("state.db*"):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path.name
        # Two connections (the proxy and a CLI) racing on one file: BEGIN IMMEDIATE lets exactly one win.
        claims = [store.mark_totp_used("alice", 7) for store in (proxy, cli) for _ in range(5)]
        assert sorted(await asyncio.gather(*claims)) == [False] * 9 + [True]
    finally:
        await proxy.close()
        await cli.close()


async def test_replicas_migrate_a_new_database_together(pg: TempCluster) -> None:
    name = _new_database(pg)
    try:
        replicas = await asyncio.gather(*(PostgresStore(pg.dsn("pgwarden_admin", name), encryption_key=KEY).open()
                                          for _ in range(4)))
        session_id = await new_session(replicas[0])
        assert await replicas[3].get_session(session_id) is not None
        for replica in replicas:
            await replica.close()
    finally:
        pg.psql(f"DROP DATABASE {name} WITH (FORCE)", database="postgres")


# --- open_store --------------------------------------------------------------------------------------------


async def test_open_store_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    for spec in (None, "sqlite"):
        opened = await open_store(spec, tmp_path, encryption_key=KEY)
        assert isinstance(opened, SqliteStore) and opened.path == tmp_path / "state.db"
        await opened.close()


async def test_open_store_postgres(pg_state_dsn: str, tmp_path: Path) -> None:
    opened = await open_store(pg_state_dsn, tmp_path, encryption_key=KEY)
    try:
        assert isinstance(opened, PostgresStore)
        assert "pgwarden_admin:***@" in repr(opened)
    finally:
        await opened.close()


@pytest.mark.parametrize("spec", ["mysql://root:hunter2hunter2@db/x", "redis://hunter2hunter2@cache", "state.db"])
async def test_open_store_refuses_unknown_specs_without_echoing_secrets(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a state store") as caught:
        await open_store(spec, tmp_path, encryption_key=KEY)
    assert "hunter2hunter2" not in str(caught.value)


async def test_unreachable_postgres_error_masks_the_password(tmp_path: Path) -> None:
    dsn = "postgresql://state:hunter2hunter2@127.0.0.1:1/pgwarden"
    with pytest.raises(StateStoreUnavailable) as caught:
        await open_store(dsn, tmp_path, encryption_key=KEY)
    assert "state:***@127.0.0.1:1/pgwarden" in str(caught.value)
    error: BaseException | None = caught.value
    while error is not None:
        assert "hunter2hunter2" not in str(error)
        error = error.__cause__


async def test_encryption_key_must_be_256_bits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        await open_store(None, tmp_path, encryption_key=b"short")


async def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StateStoreUnavailable, match="not a usable pgwarden state store"):
        await open_store(None, tmp_path, encryption_key=KEY)


async def test_proxy_housekeeping_keeps_recently_expired_sessions(store: IdentityStore, tmp_path: Path) -> None:
    from identity.sessions import SessionAuthority
    from identity.tokens import TokenAuthority
    from proxy.audit.accesslog import AccessLog, AccessLogWriter
    from proxy.server import PURGE_AFTER, ProxyServer

    long_gone = await new_session(store, now=NOW - PURGE_AFTER - timedelta(hours=2))
    just_expired = await new_session(store, now=NOW - timedelta(hours=2))
    await store.create_device_code(device_code_hash=hash_secret(new_device_code()), user_code="WXYZ-BCDF",
                                   client="cli", expires_at=NOW - timedelta(hours=30), interval_s=5)
    server = ProxyServer(tls_context=None, identity=SessionAuthority(TokenAuthority.load_or_create(tmp_path), store),
                         access_log=AccessLog(AccessLogWriter(None)), fingerprint_key=b"k" * 32)
    assert await server.housekeeping(NOW) == 1
    assert await store.get_session(long_gone) is None
    assert await store.get_session(just_expired) is not None  # still shown by `pgwarden sessions list`
    assert await store.device_code_by_user_code("WXYZ-BCDF") is None


async def test_only_the_writer_lease_holder_runs_housekeeping(store: IdentityStore, tmp_path: Path) -> None:
    from identity.sessions import SessionAuthority
    from identity.tokens import TokenAuthority
    from proxy.audit.accesslog import AccessLog, AccessLogWriter
    from proxy.server import PURGE_AFTER, ProxyServer

    long_gone = await new_session(store, now=NOW - PURGE_AFTER - timedelta(hours=2))
    server = ProxyServer(tls_context=None, identity=SessionAuthority(TokenAuthority.load_or_create(tmp_path), store),
                         access_log=AccessLog(AccessLogWriter(None)), fingerprint_key=b"k" * 32)
    server.is_writer = lambda: False  # a replica that waits for the lease (runtime/replica.py sets this)
    assert await server.housekeeping(NOW) == 0
    assert await store.get_session(long_gone) is not None
    server.is_writer = lambda: True
    assert await server.housekeeping(NOW) == 1
