"""Pick and open the identity state store that `--state` names: SQLite in the data directory, or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from identity.store.base import IdentityStore, mask_dsn
from identity.store.postgres import PostgresStore
from identity.store.sqlite import SqliteStore

SQLITE_FILE = "state.db"


async def open_store(spec: str | None, data_dir: Path, *, encryption_key: bytes) -> IdentityStore:
    """Open (creating and migrating as needed) the store for `spec`: None or "sqlite", or a postgres:// URL.

    Raises ValueError for any other spec, and StateStoreError when the store cannot be opened; neither message
    contains the DSN's password.
    """
    if spec is None or spec.strip().lower() == "sqlite":
        return await SqliteStore(data_dir / SQLITE_FILE, encryption_key=encryption_key).open()
    if spec.startswith(("postgres://", "postgresql://")):
        return await PostgresStore(spec, encryption_key=encryption_key).open()
    # Show only the scheme of a URL we do not know: its userinfo may be a bare password (`redis://pw@host`).
    shown = spec.split("://", 1)[0] + "://…" if "://" in spec else mask_dsn(spec)
    raise ValueError(
        f"--state {shown!r} is not a state store: use 'sqlite' (the default, {data_dir / SQLITE_FILE}) "
        "or a postgres://user@host/db URL"
    )
