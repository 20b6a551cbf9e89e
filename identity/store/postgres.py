"""The shared identity state store for several replicas: PostgreSQL via an asyncpg pool, schema `pgwarden`.

Races between replicas are settled by PostgreSQL: every check-and-set is one conditional UPDATE or DELETE
(row locks serialise them, and READ COMMITTED re-checks the WHERE clause after the wait), and a revocation
is announced with NOTIFY in the same statement, so every replica hears of it once it commits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import asyncpg

from identity.store.base import (
    REVOCATION_CHANNEL,
    AssuranceLevel,
    AuthMethod,
    DeviceCode,
    IdentitySession,
    PasskeyCredential,
    Sealer,
    StateConflict,
    StateStoreUnavailable,
    TotpEnrollment,
    WindowCount,
    build_session,
    counter_key,
    ephemeral_aad,
    hash_secret,
    mask_dsn,
    normalize_user_code,
    require_aware,
    require_hash,
    totp_aad,
    utc_now,
    window_end,
)
from identity.store.migrations import DEVICE_COLUMNS, PASSKEY_COLUMNS, POSTGRES_MIGRATIONS, SESSION_COLUMNS, pending
from identity.store.postgres_rows import device_code_from_row, passkey_from_row, session_from_row
from proxy.snapshot import SecretValue

SCHEMA = "pgwarden"

_ACTIVE = "revoked_at IS NULL AND expires_at > $2"
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
LISTEN_APPLICATION_NAME = "pgwarden-state-listen"  # how an operator (or a test) finds the LISTEN backend
LISTEN_CONNECT_TIMEOUT_S = 10.0


def _count(status: str) -> int:
    """Rows touched, from a command tag such as `UPDATE 1`."""
    return int(status.rsplit(" ", 1)[-1])


def _may_leak_password(message: str, dsn: str) -> bool:
    try:
        password = urlsplit(dsn).password
    except ValueError:
        return True  # we cannot tell where the password is, so say less
    if not password:
        return False
    return password in message or unquote(password) in message


class PostgresStore:
    """IdentityStore in a PostgreSQL database shared by every replica. Mutable: it owns a pool."""

    def __init__(self, dsn: str, *, encryption_key: bytes, max_connections: int = 10) -> None:
        self._dsn = dsn
        self._where = mask_dsn(dsn)
        self._sealer = Sealer(encryption_key)
        self._max_connections = max_connections
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._listener_lock = asyncio.Lock()
        self._listener_lost = asyncio.Event()  # set when the LISTEN connection closes under us
        self._watchers: list[Callable[[str], None]] = []

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    async def open(self) -> Self:
        """Connect, migrate the `pgwarden` schema (one replica at a time) and check the encryption key."""
        async with self._translate("open"):
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._max_connections,
                server_settings={"application_name": "pgwarden-state"},
            )
        try:
            async with self._translate("migrate"), self._pool.acquire() as conn, conn.transaction():
                # Replicas starting together would race on CREATE SCHEMA IF NOT EXISTS (it is not atomic).
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('pgwarden.state.migrate'))")
                await self._migrate(conn)
                await self._check_key(conn)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        await self._drop_listener()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (version integer NOT NULL)")
        version = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_version")
        for number, script in pending(POSTGRES_MIGRATIONS, version, where=self._where,
                                      hint="upgrade pgwarden on every replica"):
            await conn.execute(script)
            await conn.execute(f"DELETE FROM {SCHEMA}.schema_version")
            await conn.execute(f"INSERT INTO {SCHEMA}.schema_version (version) VALUES ($1)", number)

    async def _check_key(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            f"INSERT INTO {SCHEMA}.meta (name, value) VALUES ('key_check', $1) ON CONFLICT DO NOTHING",
            self._sealer.key_check(),
        )
        stored = await conn.fetchval(f"SELECT value FROM {SCHEMA}.meta WHERE name = 'key_check'")
        self._sealer.verify_key_check(stored, where=self._where)

    @asynccontextmanager
    async def _translate(self, action: str) -> AsyncIterator[None]:
        """Turn driver and network errors into StateStoreUnavailable; the message never holds the password."""
        try:
            yield
        except _UNAVAILABLE as exc:
            message = str(exc)
            leaks = _may_leak_password(message, self._dsn)
            error = StateStoreUnavailable(
                f"state store {self._where}: cannot {action}: {type(exc).__name__}"
                + ("" if leaks else f": {message}"),
                hint="check --state; on first start the role needs CREATE on the database",
            )
            if leaks:
                raise error from None
            raise error from exc

    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StateStoreUnavailable(f"state store {self._where} is not open")
        return self._pool

    async def _execute(self, sql: str, *args: Any) -> int:
        async with self._translate("write"):
            return _count(await self._db().execute(sql, *args))

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._translate("read"):
            rows: list[asyncpg.Record] = await self._db().fetch(sql, *args)
            return rows

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._translate("read"):
            return await self._db().fetchrow(sql, *args)

    async def _insert(self, what: str, sql: str, *args: Any) -> None:
        async with self._translate("write"):
            try:
                await self._db().execute(sql, *args)
            except asyncpg.UniqueViolationError as exc:
                raise StateConflict(f"{what} already exists") from exc

    # --- sessions ---

    async def create_session(
        self, *, user: str, idp: str, method: AuthMethod | str, aal: AssuranceLevel, ttl_s: int,
        now: datetime | None = None, user_agent: str = "", ip: str = "", attrs: dict[str, Any] | None = None,
        refresh_hash: str | None = None,
    ) -> IdentitySession:
        s = build_session(user=user, idp=idp, method=method, aal=aal, ttl_s=ttl_s, now=now,
                          user_agent=user_agent, ip=ip, attrs=attrs)
        refresh = None if refresh_hash is None else require_hash(refresh_hash, "refresh_hash")
        await self._insert(
            "session refresh credential",
            f"INSERT INTO {SCHEMA}.sessions ({SESSION_COLUMNS}, refresh_hash) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11::jsonb, $12)",
            s.id, user, idp, str(s.method), int(s.aal), s.created_at, s.expires_at, s.last_seen_at,
            user_agent, ip, json.dumps(s.attrs), refresh,
        )
        return s

    async def get_session(self, session_id: str) -> IdentitySession | None:
        row = await self._fetchrow(f"SELECT {SESSION_COLUMNS} FROM {SCHEMA}.sessions WHERE id = $1", session_id)
        return None if row is None else session_from_row(row)

    async def session_by_refresh_hash(self, refresh_hash: str) -> IdentitySession | None:
        sql = f"SELECT {SESSION_COLUMNS} FROM {SCHEMA}.sessions WHERE refresh_hash = $1"
        row = await self._fetchrow(sql, require_hash(refresh_hash, "refresh_hash"))
        return None if row is None else session_from_row(row)

    async def rotate_refresh_hash(self, session_id: str, old_hash: str, new_hash: str, now: datetime) -> bool:
        sql = (f"UPDATE {SCHEMA}.sessions SET refresh_hash = $3 WHERE id = $1 AND {_ACTIVE} AND refresh_hash = $4")
        return await self._execute(sql, session_id, require_aware(now, "now"), require_hash(new_hash, "new_hash"),
                                   require_hash(old_hash, "old_hash")) == 1

    async def touch_session(self, session_id: str, now: datetime) -> bool:
        sql = f"UPDATE {SCHEMA}.sessions SET last_seen_at = $2 WHERE id = $1 AND {_ACTIVE}"
        return await self._execute(sql, session_id, require_aware(now, "now")) == 1

    async def list_sessions(
        self, user: str | None = None, include_inactive: bool = False, *, now: datetime | None = None
    ) -> list[IdentitySession]:
        sql = (f"SELECT {SESSION_COLUMNS} FROM {SCHEMA}.sessions WHERE ($1::text IS NULL OR user_name = $1) "
               f"AND ($3::boolean OR ({_ACTIVE})) ORDER BY created_at, id")
        at = require_aware(now or utc_now(), "now")
        return [session_from_row(r) for r in await self._fetch(sql, user, at, include_inactive)]

    async def revoke_session(self, session_id: str, now: datetime) -> bool:
        return bool(await self._revoke_where("id = $1", session_id, now))

    async def revoke_user_sessions(self, user: str, now: datetime) -> list[str]:
        return await self._revoke_where("user_name = $1", user, now)

    async def _revoke_where(self, condition: str, value: str, now: datetime) -> list[str]:
        # NOTIFY rides in the same statement: it is delivered to every replica if and only if the UPDATE commits.
        sql = (f"WITH revoked AS (UPDATE {SCHEMA}.sessions SET revoked_at = $2 WHERE {condition} AND {_ACTIVE} "
               f"RETURNING id) SELECT id, pg_notify('{REVOCATION_CHANNEL}', id) FROM revoked ORDER BY id")
        return [r["id"] for r in await self._fetch(sql, value, require_aware(now, "now"))]

    async def purge_expired(self, now: datetime) -> int:
        at = require_aware(now, "now")
        await self._execute(f"DELETE FROM {SCHEMA}.device_codes WHERE expires_at <= $1", at)
        await self._execute(f"DELETE FROM {SCHEMA}.counters WHERE window_end <= $1", at)
        await self._execute(f"DELETE FROM {SCHEMA}.ephemeral WHERE expires_at <= $1", at)
        return await self._execute(f"DELETE FROM {SCHEMA}.sessions WHERE expires_at <= $1", at)

    async def watch_revocations(self, callback: Callable[[str], None], *, restart: bool = False) -> None:
        """Register `callback` (once) and hold LISTEN on a dedicated connection, opening it if it is gone;
        `restart` replaces it even if it looks alive (after an outage it may be half-open)."""
        if callback not in self._watchers:
            self._watchers.append(callback)
        # A dedicated connection: a pooled one would be handed to queries and could not hold LISTEN.
        async with self._listener_lock:
            if not restart and self._listener is not None and not self._listener.is_closed():
                return
            await self._drop_listener()
            self._listener_lost.clear()
            async with self._translate("listen"):
                listener = await asyncpg.connect(
                    self._dsn, timeout=LISTEN_CONNECT_TIMEOUT_S,
                    server_settings={"application_name": LISTEN_APPLICATION_NAME})
                try:
                    listener.add_termination_listener(self._on_listener_closed)
                    await listener.add_listener(REVOCATION_CHANNEL, self._on_revocation)
                except BaseException:
                    listener.terminate()
                    raise
            self._listener = listener
            if listener.is_closed():  # it died before it was ours: its termination callback found no match
                self._listener_lost.set()

    async def revocation_watch_lost(self) -> None:
        """Return once the LISTEN connection has closed (server restart, terminated backend, network)."""
        if self._listener is None or self._listener.is_closed():
            return
        await self._listener_lost.wait()

    def _on_listener_closed(self, conn: object) -> None:
        if conn is self._listener:
            self._listener_lost.set()

    async def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if listener.is_closed():
            return
        try:
            await asyncio.wait_for(listener.close(), LISTEN_CONNECT_TIMEOUT_S)
        except _UNAVAILABLE:  # TimeoutError included
            listener.terminate()  # a dead peer does not answer Terminate: drop the socket

    def _on_revocation(self, conn: object, pid: int, channel: str, payload: object) -> None:
        loop = asyncio.get_running_loop()
        for callback in self._watchers:
            loop.call_soon(callback, str(payload))  # one failing watcher must not starve the others

    # --- passkeys ---

    async def add_passkey(self, credential: PasskeyCredential) -> None:
        c = credential
        await self._insert(
            "passkey credential id",
            f"INSERT INTO {SCHEMA}.passkeys ({PASSKEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            c.credential_id, c.user, c.public_key, c.sign_count, list(c.transports),
            require_aware(c.created_at, "created_at"),
            None if c.last_used_at is None else require_aware(c.last_used_at, "last_used_at"),
        )

    async def passkeys_for(self, user: str) -> list[PasskeyCredential]:
        sql = (f"SELECT {PASSKEY_COLUMNS} FROM {SCHEMA}.passkeys WHERE user_name = $1 "
               "ORDER BY created_at, credential_id")
        return [passkey_from_row(r) for r in await self._fetch(sql, user)]

    async def passkey_by_id(self, credential_id: bytes) -> PasskeyCredential | None:
        row = await self._fetchrow(f"SELECT {PASSKEY_COLUMNS} FROM {SCHEMA}.passkeys WHERE credential_id = $1",
                                   credential_id)
        return None if row is None else passkey_from_row(row)

    async def update_sign_count(self, credential_id: bytes, count: int, now: datetime) -> bool:
        # WebAuthn §6.1.1: a counter that does not grow means a cloned authenticator, unless both are 0
        # (authenticators without a counter).
        sql = (f"UPDATE {SCHEMA}.passkeys SET sign_count = $2, last_used_at = $3 WHERE credential_id = $1 "
               "AND (sign_count < $2 OR (sign_count = 0 AND $2 = 0))")
        return await self._execute(sql, credential_id, count, require_aware(now, "now")) == 1

    async def remove_passkey(self, credential_id: bytes) -> bool:
        return await self._execute(f"DELETE FROM {SCHEMA}.passkeys WHERE credential_id = $1", credential_id) == 1

    # --- TOTP ---

    async def save_totp(
        self, user: str, secret: SecretValue, confirmed: bool = False, *, now: datetime | None = None
    ) -> None:
        sealed = self._sealer.seal(secret.reveal().encode("utf-8"), aad=totp_aad(user))
        confirmed_at = require_aware(now or utc_now(), "now") if confirmed else None
        # A new secret starts a new step history: last_step resets with it.
        await self._execute(
            f"INSERT INTO {SCHEMA}.totp (user_name, secret_sealed, confirmed_at, last_step) VALUES ($1, $2, $3, NULL) "
            "ON CONFLICT (user_name) DO UPDATE SET secret_sealed = excluded.secret_sealed, "
            "confirmed_at = excluded.confirmed_at, last_step = NULL",
            user, sealed, confirmed_at,
        )

    async def get_totp(self, user: str) -> TotpEnrollment | None:
        row = await self._fetchrow(f"SELECT secret_sealed, confirmed_at FROM {SCHEMA}.totp WHERE user_name = $1", user)
        if row is None:
            return None
        plain = self._sealer.unseal(row[0], aad=totp_aad(user), where=f"{self._where}, totp secret of {user!r}")
        return TotpEnrollment(user=user, secret=SecretValue(plain.decode("utf-8")), confirmed_at=row[1])

    async def confirm_totp(self, user: str, now: datetime | None = None) -> bool:
        sql = f"UPDATE {SCHEMA}.totp SET confirmed_at = $2 WHERE user_name = $1 AND confirmed_at IS NULL"
        return await self._execute(sql, user, require_aware(now or utc_now(), "now")) == 1

    async def delete_totp(self, user: str) -> bool:
        return await self._execute(f"DELETE FROM {SCHEMA}.totp WHERE user_name = $1", user) == 1

    async def mark_totp_used(self, user: str, time_step: int) -> bool:
        # Concurrent claims queue on the row lock; the loser re-reads last_step after the winner commits.
        sql = (f"UPDATE {SCHEMA}.totp SET last_step = $2 WHERE user_name = $1 "
               "AND (last_step IS NULL OR last_step < $2)")
        return await self._execute(sql, user, time_step) == 1

    # --- device codes ---

    async def create_device_code(
        self, *, device_code_hash: str, user_code: str, client: str, expires_at: datetime, interval_s: int
    ) -> DeviceCode:
        code = DeviceCode(device_code_hash=require_hash(device_code_hash, "device_code_hash"), user_code=user_code,
                          client=client, expires_at=require_aware(expires_at, "expires_at"), interval_s=interval_s)
        await self._insert(
            "device code or user code",
            f"INSERT INTO {SCHEMA}.device_codes (device_code_hash, user_code, user_code_key, client, expires_at, "
            "interval_s) VALUES ($1, $2, $3, $4, $5, $6)",
            code.device_code_hash, user_code, normalize_user_code(user_code), client, code.expires_at, interval_s,
        )
        return code

    async def device_code_by_user_code(self, user_code: str) -> DeviceCode | None:
        sql = f"SELECT {DEVICE_COLUMNS} FROM {SCHEMA}.device_codes WHERE user_code_key = $1"
        row = await self._fetchrow(sql, normalize_user_code(user_code))
        return None if row is None else device_code_from_row(row)

    async def device_code_by_hash(self, device_code_hash: str) -> DeviceCode | None:
        sql = f"SELECT {DEVICE_COLUMNS} FROM {SCHEMA}.device_codes WHERE device_code_hash = $1"
        row = await self._fetchrow(sql, require_hash(device_code_hash, "device_code_hash"))
        return None if row is None else device_code_from_row(row)

    async def approve_device_code(self, user_code: str, session_id: str, now: datetime | None = None) -> bool:
        sql = (f"UPDATE {SCHEMA}.device_codes SET approved_session_id = $3 WHERE user_code_key = $1 "
               "AND approved_session_id IS NULL AND NOT denied AND expires_at > $2 AND EXISTS "
               f"(SELECT 1 FROM {SCHEMA}.sessions WHERE id = $3 AND {_ACTIVE})")
        at = require_aware(now or utc_now(), "now")
        return await self._execute(sql, normalize_user_code(user_code), at, session_id) == 1

    async def deny_device_code(self, user_code: str, now: datetime | None = None) -> bool:
        sql = (f"UPDATE {SCHEMA}.device_codes SET denied = true WHERE user_code_key = $1 "
               "AND approved_session_id IS NULL AND NOT denied AND expires_at > $2")
        return await self._execute(sql, normalize_user_code(user_code), require_aware(now or utc_now(), "now")) == 1

    async def consume_device_code(self, device_code_hash: str, now: datetime) -> DeviceCode | None:
        sql = (f"DELETE FROM {SCHEMA}.device_codes WHERE device_code_hash = $1 AND approved_session_id IS NOT NULL "
               f"AND NOT denied AND expires_at > $2 RETURNING {DEVICE_COLUMNS}")
        row = await self._fetchrow(sql, require_hash(device_code_hash, "device_code_hash"), require_aware(now, "now"))
        return None if row is None else device_code_from_row(row)


    # --- counters (rate limits, failure budgets) ---

    async def hit_counter(self, key: str, *, window_s: int, cost: int = 1, now: datetime | None = None) -> WindowCount:
        ends = window_end(now or utc_now(), window_s)
        sql = (f"INSERT INTO {SCHEMA}.counters AS c (key, window_end, count) VALUES ($1, $2, $3) "
               "ON CONFLICT (key, window_end) DO UPDATE SET count = c.count + excluded.count RETURNING count")
        async with self._translate("write"):
            count = await self._db().fetchval(sql, counter_key(key), ends, cost)
        return WindowCount(count=int(count), resets_at=ends)

    # --- ephemeral records (login flows, one-time codes, challenges) ---

    async def put_ephemeral(self, kind: str, key: str, value: bytes, *, expires_at: datetime, max_rows: int,
                            now: datetime | None = None) -> int:
        at, key_hash = require_aware(now or utc_now(), "now"), hash_secret(key)
        sealed = self._sealer.seal(value, aad=ephemeral_aad(kind, key_hash))
        async with self._translate("write"), self._db().acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {SCHEMA}.ephemeral (kind, key_hash, value_sealed, stored_at, expires_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, key_hash) DO UPDATE SET value_sealed = "
                "excluded.value_sealed, stored_at = excluded.stored_at, expires_at = excluded.expires_at",
                kind, key_hash, sealed, at, require_aware(expires_at, "expires_at"))
            # Expired rows of this kind first, then the least recently stored beyond the bound.
            status = await conn.execute(
                f"DELETE FROM {SCHEMA}.ephemeral WHERE kind = $1 AND (expires_at <= $2 OR key_hash IN "
                f"(SELECT key_hash FROM {SCHEMA}.ephemeral WHERE kind = $1 AND expires_at > $2 "
                "ORDER BY stored_at DESC OFFSET $3))", kind, at, max_rows)
        return _count(status)

    async def take_ephemeral(self, kind: str, key: str, now: datetime | None = None) -> bytes | None:
        at, key_hash = require_aware(now or utc_now(), "now"), hash_secret(key)
        row = await self._fetchrow(
            f"DELETE FROM {SCHEMA}.ephemeral WHERE kind = $1 AND key_hash = $2 RETURNING value_sealed, expires_at",
            kind, key_hash)
        if row is None or row["expires_at"] <= at:
            return None
        return self._sealer.unseal(row["value_sealed"], aad=ephemeral_aad(kind, key_hash),
                                   where=f"{self._where} ephemeral {kind}")

