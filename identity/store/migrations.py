"""The identity state store's tables, one migration list per backend (PostgreSQL, SQLite), and the version
check both run before migrating. Never edit a released entry: append a new one."""

from __future__ import annotations

from identity.store.base import SchemaTooNew

SESSION_COLUMNS = ("id, user_name, idp, method, aal, created_at, expires_at, last_seen_at, revoked_at, "
                   "user_agent, ip, attrs")
PASSKEY_COLUMNS = "credential_id, user_name, public_key, sign_count, transports, created_at, last_used_at"
DEVICE_COLUMNS = "device_code_hash, user_code, client, expires_at, interval_s, approved_session_id, denied"

# PostgreSQL: every table in the `pgwarden` schema; times as timestamptz.
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pgwarden.meta (name text PRIMARY KEY, value bytea NOT NULL);
    CREATE TABLE pgwarden.sessions (
        id text PRIMARY KEY, user_name text NOT NULL, idp text NOT NULL, method text NOT NULL,
        aal smallint NOT NULL, created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,
        last_seen_at timestamptz NOT NULL, revoked_at timestamptz, user_agent text NOT NULL, ip text NOT NULL,
        attrs jsonb NOT NULL, refresh_hash text UNIQUE);
    CREATE INDEX sessions_user ON pgwarden.sessions (user_name);
    CREATE INDEX sessions_expires ON pgwarden.sessions (expires_at);
    CREATE TABLE pgwarden.passkeys (
        credential_id bytea PRIMARY KEY, user_name text NOT NULL, public_key bytea NOT NULL,
        sign_count bigint NOT NULL, transports text[] NOT NULL, created_at timestamptz NOT NULL,
        last_used_at timestamptz);
    CREATE INDEX passkeys_user ON pgwarden.passkeys (user_name);
    CREATE TABLE pgwarden.totp (
        user_name text PRIMARY KEY, secret_sealed bytea NOT NULL, confirmed_at timestamptz, last_step bigint);
    CREATE TABLE pgwarden.device_codes (
        device_code_hash text PRIMARY KEY, user_code text NOT NULL, user_code_key text NOT NULL UNIQUE,
        client text NOT NULL, expires_at timestamptz NOT NULL, interval_s integer NOT NULL,
        approved_session_id text, denied boolean NOT NULL DEFAULT false);
    """,
    """
    CREATE TABLE pgwarden.counters (
        key text NOT NULL, window_end timestamptz NOT NULL, count bigint NOT NULL, PRIMARY KEY (key, window_end));
    CREATE INDEX counters_window_end ON pgwarden.counters (window_end);
    """,
    """
    CREATE TABLE pgwarden.ephemeral (
        kind text NOT NULL, key_hash text NOT NULL, value_sealed bytea NOT NULL, stored_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL, PRIMARY KEY (kind, key_hash));
    CREATE INDEX ephemeral_expires ON pgwarden.ephemeral (expires_at);
    CREATE INDEX ephemeral_stored ON pgwarden.ephemeral (kind, stored_at);
    """,
    """
    CREATE TABLE pgwarden.replicas (
        id text PRIMARY KEY, backend_pid integer NOT NULL, cancel_address text NOT NULL, web_url text NOT NULL,
        revision text NOT NULL, connections jsonb NOT NULL, started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL);
    """,
)

# SQLite: times as integer microseconds since the epoch (exact and sortable).
SQLITE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY, user_name TEXT NOT NULL, idp TEXT NOT NULL, method TEXT NOT NULL,
        aal INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
        last_seen_at INTEGER NOT NULL, revoked_at INTEGER, user_agent TEXT NOT NULL, ip TEXT NOT NULL,
        attrs TEXT NOT NULL, refresh_hash TEXT UNIQUE);
    CREATE INDEX sessions_user ON sessions (user_name);
    CREATE INDEX sessions_expires ON sessions (expires_at);
    CREATE TABLE passkeys (
        credential_id BLOB PRIMARY KEY, user_name TEXT NOT NULL, public_key BLOB NOT NULL,
        sign_count INTEGER NOT NULL, transports TEXT NOT NULL, created_at INTEGER NOT NULL, last_used_at INTEGER);
    CREATE INDEX passkeys_user ON passkeys (user_name);
    CREATE TABLE totp (
        user_name TEXT PRIMARY KEY, secret_sealed BLOB NOT NULL, confirmed_at INTEGER, last_step INTEGER);
    CREATE TABLE device_codes (
        device_code_hash TEXT PRIMARY KEY, user_code TEXT NOT NULL, user_code_key TEXT NOT NULL UNIQUE,
        client TEXT NOT NULL, expires_at INTEGER NOT NULL, interval_s INTEGER NOT NULL,
        approved_session_id TEXT, denied INTEGER NOT NULL DEFAULT 0);
    """,
    """
    CREATE TABLE counters (
        key TEXT NOT NULL, window_end INTEGER NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (key, window_end));
    CREATE INDEX counters_window_end ON counters (window_end);
    """,
    """
    CREATE TABLE ephemeral (
        kind TEXT NOT NULL, key_hash TEXT NOT NULL, value_sealed BLOB NOT NULL, stored_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL, PRIMARY KEY (kind, key_hash));
    CREATE INDEX ephemeral_expires ON ephemeral (expires_at);
    CREATE INDEX ephemeral_stored ON ephemeral (kind, stored_at);
    """,
)


def pending(migrations: tuple[str, ...], version: int, *, where: str, hint: str) -> list[tuple[int, str]]:
    """(version number, script) for each migration a store at `version` still needs, in order.

    Raises SchemaTooNew if the store was migrated by a newer pgwarden (a version beyond `migrations`).
    """
    if version > len(migrations):
        raise SchemaTooNew(
            f"{where}: state store schema version {version} is newer than this pgwarden's ({len(migrations)})",
            hint=hint,
        )
    return list(enumerate(migrations[version:], start=version + 1))
