"""The embedded identity state store: one SQLite file (WAL, 0600) in the data directory.

sqlite3 connections are not thread-safe, so one worker thread owns the connection and every call runs there;
writes take `BEGIN IMMEDIATE` so that a second process on the same file (the CLI) cannot interleave.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

from identity.store.base import (
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
    normalize_user_code,
    require_aware,
    require_hash,
    totp_aad,
    utc_now,
    window_end,
)
from identity.store.migrations import DEVICE_COLUMNS, PASSKEY_COLUMNS, SESSION_COLUMNS, SQLITE_MIGRATIONS, pending
from identity.store.sqlite_rows import device_code_from_row, from_us_or_none, passkey_from_row, session_from_row, to_us
from proxy.snapshot import SecretValue

T = TypeVar("T")

class SqliteStore:
    """IdentityStore in one SQLite file. Mutable: it owns a connection and a worker thread."""

    def __init__(self, path: Path, *, encryption_key: bytes) -> None:
        self.path = path
        self._sealer = Sealer(encryption_key)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgwarden-state")
        self._conn: sqlite3.Connection | None = None
        self._watchers: list[Callable[[str], None]] = []

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def open(self) -> Self:
        """Create the file (0600) if needed, migrate the schema and check the encryption key."""
        try:
            await self._run(self._open_sync)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    # --- worker-thread side ---

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Create 0600 before SQLite touches it; SQLite gives -wal and -shm the mode of the main file.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)
            conn = sqlite3.connect(self.path, isolation_level=None)  # we issue BEGIN/COMMIT ourselves
            self._conn = conn
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes in WAL mode
            with self._write() as db:
                self._migrate(db)
                self._check_key(db)
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StateStoreUnavailable(f"{self.path}: not a usable pgwarden state store ({exc})") from exc

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        for number, script in pending(SQLITE_MIGRATIONS, version, where=str(self.path), hint="upgrade pgwarden"):
            # Not executescript(): it COMMITs first, and the migration must share our transaction.
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    def _check_key(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta (name, value) VALUES ('key_check', ?)", (self._sealer.key_check(),))
        else:
            self._sealer.verify_key_check(row[0], where=str(self.path))

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a deferred transaction that read an older WAL snapshot
        # would fail with SQLITE_BUSY_SNAPSHOT instead of waiting for busy_timeout.
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # COMMIT itself can fail (SQLITE_BUSY); never leave the transaction open
                db.execute("ROLLBACK")
            raise

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateStoreUnavailable(f"{self.path}: state store is not open")
        return self._conn

    def _update(self, sql: str, *params: Any) -> int:
        with self._write() as db:
            return db.execute(sql, params).rowcount

    def _fetchall(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self._db().execute(sql, params).fetchall()

    def _fetchone(self, sql: str, *params: Any) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db().execute(sql, params).fetchone()
        return row

    def _insert(self, what: str, sql: str, *params: Any) -> None:
        try:
            self._update(sql, *params)
        except sqlite3.IntegrityError as exc:
            raise StateConflict(f"{what} already exists") from exc

    def _revoke_where(self, condition: str, value: str, now_us: int) -> list[str]:
        where = f"revoked_at IS NULL AND expires_at > ? AND {condition}"
        with self._write() as db:  # the write lock makes SELECT-then-UPDATE atomic (no RETURNING before 3.35)
            ids = [row[0] for row in db.execute(f"SELECT id FROM sessions WHERE {where}", (now_us, value))]
            db.execute(f"UPDATE sessions SET revoked_at = ? WHERE {where}", (now_us, now_us, value))
            return ids

    def _purge(self, now_us: int) -> int:
        with self._write() as db:
            sessions = db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now_us,)).rowcount
            db.execute("DELETE FROM device_codes WHERE expires_at <= ?", (now_us,))
            db.execute("DELETE FROM counters WHERE window_end <= ?", (now_us,))
            db.execute("DELETE FROM ephemeral WHERE expires_at <= ?", (now_us,))
            return sessions

    def _consume(self, code_hash: str, now_us: int) -> tuple[Any, ...] | None:
        with self._write() as db:
            row: tuple[Any, ...] | None = db.execute(
                f"SELECT {DEVICE_COLUMNS} FROM device_codes WHERE device_code_hash = ? "
                "AND approved_session_id IS NOT NULL AND NOT denied AND expires_at > ?", (code_hash, now_us),
            ).fetchone()
            if row is not None:
                db.execute("DELETE FROM device_codes WHERE device_code_hash = ?", (code_hash,))
            return row

    # --- sessions ---

    async def create_session(
        self, *, user: str, idp: str, method: AuthMethod | str, aal: AssuranceLevel, ttl_s: int,
        now: datetime | None = None, user_agent: str = "", ip: str = "", attrs: dict[str, Any] | None = None,
        refresh_hash: str | None = None,
    ) -> IdentitySession:
        session = build_session(user=user, idp=idp, method=method, aal=aal, ttl_s=ttl_s, now=now,
                                user_agent=user_agent, ip=ip, attrs=attrs)
        created = to_us(session.created_at)
        await self._run(
            self._insert, "session refresh credential",
            f"INSERT INTO sessions ({SESSION_COLUMNS}, refresh_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            session.id, user, idp, str(session.method), int(session.aal), created,
            to_us(session.expires_at), created, None, user_agent, ip, json.dumps(session.attrs),
            None if refresh_hash is None else require_hash(refresh_hash, "refresh_hash"),
        )
        return session

    async def get_session(self, session_id: str) -> IdentitySession | None:
        row = await self._run(self._fetchone, f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", session_id)
        return None if row is None else session_from_row(row)

    async def session_by_refresh_hash(self, refresh_hash: str) -> IdentitySession | None:
        sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE refresh_hash = ?"
        row = await self._run(self._fetchone, sql, require_hash(refresh_hash, "refresh_hash"))
        return None if row is None else session_from_row(row)

    async def rotate_refresh_hash(self, session_id: str, old_hash: str, new_hash: str, now: datetime) -> bool:
        sql = ("UPDATE sessions SET refresh_hash = ? WHERE id = ? AND refresh_hash = ? "
               "AND revoked_at IS NULL AND expires_at > ?")
        return await self._run(self._update, sql, require_hash(new_hash, "new_hash"), session_id,
                               require_hash(old_hash, "old_hash"), to_us(now)) == 1

    async def touch_session(self, session_id: str, now: datetime) -> bool:
        sql = "UPDATE sessions SET last_seen_at = ? WHERE id = ? AND revoked_at IS NULL AND expires_at > ?"
        return await self._run(self._update, sql, to_us(now), session_id, to_us(now)) == 1

    async def list_sessions(
        self, user: str | None = None, include_inactive: bool = False, *, now: datetime | None = None
    ) -> list[IdentitySession]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if user is not None:
            where.append("user_name = ?")
            params.append(user)
        if not include_inactive:
            where.append("revoked_at IS NULL AND expires_at > ?")
            params.append(to_us(now or utc_now()))
        sql = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {' AND '.join(where)} ORDER BY created_at, id"
        return [session_from_row(r) for r in await self._run(self._fetchall, sql, *params)]

    async def revoke_session(self, session_id: str, now: datetime) -> bool:
        ids = await self._run(self._revoke_where, "id = ?", session_id, to_us(now))
        self._notify(ids)
        return bool(ids)

    async def revoke_user_sessions(self, user: str, now: datetime) -> list[str]:
        ids = await self._run(self._revoke_where, "user_name = ?", user, to_us(now))
        self._notify(ids)
        return ids

    async def purge_expired(self, now: datetime) -> int:
        return await self._run(self._purge, to_us(now))

    async def watch_revocations(self, callback: Callable[[str], None], *, restart: bool = False) -> None:
        # In-process only: another process writing this file (e.g. a CLI) is not seen. Revoke through the proxy.
        if callback not in self._watchers:
            self._watchers.append(callback)

    async def revocation_watch_lost(self) -> None:
        await asyncio.Event().wait()  # in-process notices cannot be lost

    def _notify(self, session_ids: list[str]) -> None:
        loop = asyncio.get_running_loop()
        for session_id in session_ids:
            for callback in self._watchers:
                loop.call_soon(callback, session_id)

    # --- passkeys ---

    async def add_passkey(self, credential: PasskeyCredential) -> None:
        c = credential
        await self._run(
            self._insert, "passkey credential id", f"INSERT INTO passkeys ({PASSKEY_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
            c.credential_id, c.user, c.public_key, c.sign_count, json.dumps(list(c.transports)),
            to_us(c.created_at), None if c.last_used_at is None else to_us(c.last_used_at),
        )

    async def passkeys_for(self, user: str) -> list[PasskeyCredential]:
        sql = f"SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_name = ? ORDER BY created_at, credential_id"
        return [passkey_from_row(r) for r in await self._run(self._fetchall, sql, user)]

    async def passkey_by_id(self, credential_id: bytes) -> PasskeyCredential | None:
        sql = f"SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = ?"
        row = await self._run(self._fetchone, sql, credential_id)
        return None if row is None else passkey_from_row(row)

    async def update_sign_count(self, credential_id: bytes, count: int, now: datetime) -> bool:
        # WebAuthn §6.1.1: a counter that does not grow means a cloned authenticator, unless both are 0
        # (authenticators without a counter). The check and the write are one statement, so no race.
        sql = ("UPDATE passkeys SET sign_count = ?, last_used_at = ? WHERE credential_id = ? "
               "AND (sign_count < ? OR (sign_count = 0 AND ? = 0))")
        return await self._run(self._update, sql, count, to_us(now), credential_id, count, count) == 1

    async def remove_passkey(self, credential_id: bytes) -> bool:
        return await self._run(self._update, "DELETE FROM passkeys WHERE credential_id = ?", credential_id) == 1

    # --- TOTP ---

    async def save_totp(
        self, user: str, secret: SecretValue, confirmed: bool = False, *, now: datetime | None = None
    ) -> None:
        sealed = self._sealer.seal(secret.reveal().encode("utf-8"), aad=totp_aad(user))
        confirmed_us = to_us(now or utc_now()) if confirmed else None
        # A new secret starts a new step history: last_step resets with it.
        sql = ("INSERT INTO totp (user_name, secret_sealed, confirmed_at, last_step) VALUES (?, ?, ?, NULL) "
               "ON CONFLICT (user_name) DO UPDATE SET secret_sealed = excluded.secret_sealed, "
               "confirmed_at = excluded.confirmed_at, last_step = NULL")
        await self._run(self._update, sql, user, sealed, confirmed_us)

    async def get_totp(self, user: str) -> TotpEnrollment | None:
        sql = "SELECT secret_sealed, confirmed_at FROM totp WHERE user_name = ?"
        row = await self._run(self._fetchone, sql, user)
        if row is None:
            return None
        plain = self._sealer.unseal(row[0], aad=totp_aad(user), where=f"{self.path}, totp secret of {user!r}")
        secret = SecretValue(plain.decode("utf-8"))
        return TotpEnrollment(user=user, secret=secret, confirmed_at=from_us_or_none(row[1]))

    async def confirm_totp(self, user: str, now: datetime | None = None) -> bool:
        sql = "UPDATE totp SET confirmed_at = ? WHERE user_name = ? AND confirmed_at IS NULL"
        return await self._run(self._update, sql, to_us(now or utc_now()), user) == 1

    async def delete_totp(self, user: str) -> bool:
        return await self._run(self._update, "DELETE FROM totp WHERE user_name = ?", user) == 1

    async def mark_totp_used(self, user: str, time_step: int) -> bool:
        sql = "UPDATE totp SET last_step = ? WHERE user_name = ? AND (last_step IS NULL OR last_step < ?)"
        return await self._run(self._update, sql, time_step, user, time_step) == 1

    # --- device codes ---

    async def create_device_code(
        self, *, device_code_hash: str, user_code: str, client: str, expires_at: datetime, interval_s: int
    ) -> DeviceCode:
        code = DeviceCode(device_code_hash=require_hash(device_code_hash, "device_code_hash"), user_code=user_code,
                          client=client, expires_at=require_aware(expires_at, "expires_at"), interval_s=interval_s)
        await self._run(
            self._insert, "device code or user code",
            "INSERT INTO device_codes (device_code_hash, user_code, user_code_key, client, expires_at, interval_s) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            code.device_code_hash, user_code, normalize_user_code(user_code), client, to_us(expires_at), interval_s,
        )
        return code

    async def device_code_by_user_code(self, user_code: str) -> DeviceCode | None:
        sql = f"SELECT {DEVICE_COLUMNS} FROM device_codes WHERE user_code_key = ?"
        row = await self._run(self._fetchone, sql, normalize_user_code(user_code))
        return None if row is None else device_code_from_row(row)

    async def device_code_by_hash(self, device_code_hash: str) -> DeviceCode | None:
        sql = f"SELECT {DEVICE_COLUMNS} FROM device_codes WHERE device_code_hash = ?"
        row = await self._run(self._fetchone, sql, require_hash(device_code_hash, "device_code_hash"))
        return None if row is None else device_code_from_row(row)

    async def approve_device_code(self, user_code: str, session_id: str, now: datetime | None = None) -> bool:
        at = to_us(now or utc_now())
        sql = ("UPDATE device_codes SET approved_session_id = ? WHERE user_code_key = ? "
               "AND approved_session_id IS NULL AND NOT denied AND expires_at > ? AND EXISTS "
               "(SELECT 1 FROM sessions WHERE id = ? AND revoked_at IS NULL AND expires_at > ?)")
        return await self._run(self._update, sql, session_id, normalize_user_code(user_code), at, session_id, at) == 1

    async def deny_device_code(self, user_code: str, now: datetime | None = None) -> bool:
        sql = ("UPDATE device_codes SET denied = 1 WHERE user_code_key = ? "
               "AND approved_session_id IS NULL AND NOT denied AND expires_at > ?")
        return await self._run(self._update, sql, normalize_user_code(user_code), to_us(now or utc_now())) == 1

    async def consume_device_code(self, device_code_hash: str, now: datetime) -> DeviceCode | None:
        row = await self._run(self._consume, require_hash(device_code_hash, "device_code_hash"), to_us(now))
        return None if row is None else device_code_from_row(row)


    # --- counters (rate limits, failure budgets) ---

    async def hit_counter(self, key: str, *, window_s: int, cost: int = 1, now: datetime | None = None) -> WindowCount:
        ends = window_end(now or utc_now(), window_s)
        count = await self._run(self._hit, counter_key(key), to_us(ends), cost)
        return WindowCount(count=count, resets_at=ends)

    def _hit(self, key: str, ends_us: int, cost: int) -> int:
        with self._write() as db:
            row = db.execute("INSERT INTO counters (key, window_end, count) VALUES (?, ?, ?) ON CONFLICT "
                             "(key, window_end) DO UPDATE SET count = count + excluded.count RETURNING count",
                             (key, ends_us, cost)).fetchone()
            return int(row[0])

    # --- ephemeral records (login flows, one-time codes, challenges) ---

    async def put_ephemeral(self, kind: str, key: str, value: bytes, *, expires_at: datetime, max_rows: int,
                            now: datetime | None = None) -> int:
        key_hash = hash_secret(key)
        sealed = self._sealer.seal(value, aad=ephemeral_aad(kind, key_hash))
        return await self._run(self._put_ephemeral, kind, key_hash, sealed, to_us(now or utc_now()),
                               to_us(expires_at), max_rows)

    def _put_ephemeral(self, kind: str, key_hash: str, sealed: bytes, now_us: int, expires_us: int,
                       max_rows: int) -> int:
        with self._write() as db:
            db.execute("INSERT INTO ephemeral (kind, key_hash, value_sealed, stored_at, expires_at) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, key_hash) DO UPDATE SET value_sealed = "
                       "excluded.value_sealed, stored_at = excluded.stored_at, expires_at = excluded.expires_at",
                       (kind, key_hash, sealed, now_us, expires_us))
            return db.execute(
                "DELETE FROM ephemeral WHERE kind = ? AND (expires_at <= ? OR key_hash IN (SELECT key_hash FROM "
                "ephemeral WHERE kind = ? AND expires_at > ? ORDER BY stored_at DESC LIMIT -1 OFFSET ?))",
                (kind, now_us, kind, now_us, max_rows)).rowcount

    async def take_ephemeral(self, kind: str, key: str, now: datetime | None = None) -> bytes | None:
        key_hash = hash_secret(key)
        sealed = await self._run(self._take_ephemeral, kind, key_hash, to_us(now or utc_now()))
        if sealed is None:
            return None
        return self._sealer.unseal(sealed, aad=ephemeral_aad(kind, key_hash), where=f"{self.path} ephemeral {kind}")

    def _take_ephemeral(self, kind: str, key_hash: str, now_us: int) -> bytes | None:
        with self._write() as db:
            row = db.execute("DELETE FROM ephemeral WHERE kind = ? AND key_hash = ? RETURNING value_sealed, "
                             "expires_at", (kind, key_hash)).fetchone()
        return None if row is None or row[1] <= now_us else bytes(row[0])

