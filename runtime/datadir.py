"""Where pgwarden keeps generated keys, certificates and its admin socket."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import platformdirs

from proxy.filesafe import write_private

ADMIN_SOCKET = "admin.sock"
FINGERPRINT_KEY = "fingerprint.key"
STATE_KEY = "state.key"


def default_data_dir() -> Path:
    """$PGWARDEN_DATA_DIR, else the per-user data directory (e.g. ~/.local/share/pgwarden)."""
    env = os.environ.get("PGWARDEN_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("pgwarden"))


def prepare(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return data_dir


def fingerprint_key(data_dir: Path) -> bytes:
    """The key that makes secret fingerprints comparable without revealing the secrets."""
    path = data_dir / FINGERPRINT_KEY
    if not path.exists():
        write_private(path, secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def state_key(data_dir: Path) -> bytes:
    """The key that seals secrets in the identity state store (TOTP seeds); replicas share it."""
    path = data_dir / STATE_KEY
    if not path.exists():
        write_private(path, secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())
