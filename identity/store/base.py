"""The identity state store seam: value types, the `IdentityStore` protocol, its errors and at-rest sealing.

Backends: `sqlite.SqliteStore` (embedded default) and `postgres.PostgresStore` (several replicas);
`opening.open_store` picks one. Secrets never reach a backend in plaintext: TOTP secrets are sealed with
AES-GCM, device codes and refresh credentials arrive as SHA-256 hashes.

StateStoreError                 every state store failure we raise on purpose
├── StateStoreUnavailable       the backend cannot be opened or reached
├── EncryptionKeyMismatch       sealed data does not open with the key we were given
├── SchemaTooNew                the store was migrated by a newer pgwarden
└── StateConflict               a unique value (credential id, user code, device code hash) already exists
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.errors import PgwardenError
from proxy.snapshot import SecretValue

ENCRYPTION_KEY_BYTES = 32
REVOCATION_CHANNEL = "pgwarden_session_revoked"
_SEAL_VERSION = b"\x01"  # leading byte of every sealed value, so the format can change later
_KEY_CHECK_PLAINTEXT = b"pgwarden state store key check"
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 §6.1: no vowels, so no words; no look-alike digits
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class StateStoreError(PgwardenError):
    """The identity state store could not do what was asked."""


class StateStoreUnavailable(StateStoreError):
    """The state store backend cannot be opened or reached."""


class EncryptionKeyMismatch(StateStoreError):
    """Sealed data in the store does not open with the encryption key we were given."""


class SchemaTooNew(StateStoreError):
    """The store's schema was migrated by a newer pgwarden than this one."""


class StateConflict(StateStoreError):
    """A value that must be unique (credential id, user code, device code hash) is already stored."""


class AuthMethod(StrEnum):
    """How a Session was authenticated (Octelium's `authentication.info.type`)."""

    OIDC = "oidc"
    GITHUB = "github"
    SAML = "saml"
    PASSKEY = "passkey"
    TOTP = "totp"
    TOKEN = "token"
    CLIENT_CREDENTIALS = "client_credentials"
    ASSERTION = "assertion"


class AssuranceLevel(IntEnum):
    """NIST SP 800-63B authenticator assurance, ordered so policies can write `aal >= AAL2`."""

    AAL1 = 1  # single factor, e.g. password-less SSO
    AAL2 = 2  # a second factor or phishing-resistant authenticator: passkey, TOTP

    def __str__(self) -> str:
        return self.name


def utc_now() -> datetime:
    return datetime.now(UTC)


def require_aware(value: datetime, name: str) -> datetime:
    """Return `value` in UTC; naive datetimes are refused because they compare wrongly across replicas."""
    if value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentitySession:
    """One login. Every credential issued from it names its `id` and dies with it."""

    id: str
    user: str
    idp: str
    method: AuthMethod
    aal: AssuranceLevel
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime
    revoked_at: datetime | None = None
    user_agent: str = ""
    ip: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    def state(self, now: datetime) -> str:
        """ACTIVE, REVOKED or EXPIRED; revocation wins so that a revoked session never reads as expired."""
        if self.revoked_at is not None:
            return "REVOKED"
        return "ACTIVE" if now < self.expires_at else "EXPIRED"

    def is_active(self, now: datetime) -> bool:
        return self.state(now) == "ACTIVE"

    def to_cel(self, now: datetime | None = None) -> dict[str, Any]:
        """`ctx.session` for policies, in Octelium's Session shape."""
        return {
            "metadata": {"name": self.id, "createdAt": rfc3339(self.created_at)},
            "spec": {"state": self.state(now or utc_now()), "expiresAt": rfc3339(self.expires_at)},
            "status": {
                "userRef": {"name": self.user},
                "authentication": {
                    "info": {"type": str(self.method), "aal": str(self.aal), "identityProvider": {"name": self.idp}}
                },
            },
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PasskeyCredential:
    """A WebAuthn credential registered to a user. Public data only: the private key stays on the device."""

    credential_id: bytes
    user: str
    public_key: bytes
    sign_count: int
    transports: list[str] = field(default_factory=list)
    created_at: datetime
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TotpEnrollment:
    """A user's TOTP secret (base32), decrypted in memory only. Unconfirmed until a first code checks out."""

    user: str
    secret: SecretValue
    confirmed_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceCode:
    """An RFC 8628 device authorization: the device polls with its code (stored hashed), a human types `user_code`."""

    device_code_hash: str
    user_code: str
    client: str
    expires_at: datetime
    interval_s: int
    approved_session_id: str | None = None
    denied: bool = False

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowCount:
    """A fixed-window counter after a hit: how many hits its window holds, and when the window ends."""

    count: int
    resets_at: datetime

    def retry_after_s(self, now: datetime) -> int:
        """Seconds until the window ends, at least 1 (for a Retry-After header)."""
        return max(1, int((self.resets_at - now).total_seconds() + 0.999))


MAX_COUNTER_KEY_CHARS = 256


def window_end(now: datetime, window_s: int) -> datetime:
    """The end of the fixed window of `window_s` seconds that holds `now`; windows are aligned to the epoch, so
    every replica computes the same one."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    seconds = int(require_aware(now, "now").timestamp())
    return datetime.fromtimestamp(seconds - seconds % window_s + window_s, UTC)


def counter_key(key: str) -> str:
    if not key or len(key) > MAX_COUNTER_KEY_CHARS:
        raise ValueError(f"a counter key has 1 to {MAX_COUNTER_KEY_CHARS} characters")
    return key


class IdentityStore(Protocol):
    """Sessions, passkeys, TOTP enrollments and device codes. Every method is safe to call from many replicas.

    Times are timezone-aware datetimes; a `now=None` argument means the current time.
    """

    async def create_session(
        self, *, user: str, idp: str, method: AuthMethod | str, aal: AssuranceLevel, ttl_s: int,
        now: datetime | None = None, user_agent: str = "", ip: str = "", attrs: dict[str, Any] | None = None,
        refresh_hash: str | None = None,
    ) -> IdentitySession: ...
    async def get_session(self, session_id: str) -> IdentitySession | None: ...
    async def session_by_refresh_hash(self, refresh_hash: str) -> IdentitySession | None: ...
    async def rotate_refresh_hash(self, session_id: str, old_hash: str, new_hash: str, now: datetime) -> bool:
        """Swap the refresh credential only if `old_hash` is current and the session active: one replay wins."""
    async def touch_session(self, session_id: str, now: datetime) -> bool: ...
    async def list_sessions(
        self, user: str | None = None, include_inactive: bool = False, *, now: datetime | None = None
    ) -> list[IdentitySession]: ...
    async def revoke_session(self, session_id: str, now: datetime) -> bool:
        """Revoke an active session; False if it is unknown, already revoked or expired."""
    async def revoke_user_sessions(self, user: str, now: datetime) -> list[str]: ...
    async def purge_expired(self, now: datetime) -> int:
        """Delete expired sessions and device codes; return how many sessions went."""
    async def watch_revocations(self, callback: Callable[[str], None], *, restart: bool = False) -> None:
        """Call `callback(session_id)` on the event loop for every revocation this store can see.

        Idempotent: call again to re-establish a lost feed (`restart` replaces one that may be half-open).
        Revocations made while the feed was down are not replayed: re-check live sessions after it."""
    async def revocation_watch_lost(self) -> None:
        """Return when the revocation feed has been lost (never, for a store that cannot lose it)."""
    async def add_passkey(self, credential: PasskeyCredential) -> None: ...
    async def passkeys_for(self, user: str) -> list[PasskeyCredential]: ...
    async def passkey_by_id(self, credential_id: bytes) -> PasskeyCredential | None: ...
    async def update_sign_count(self, credential_id: bytes, count: int, now: datetime) -> bool:
        """Store a new signature counter; False if it did not grow (WebAuthn §6.1.1: a possible clone)."""
    async def remove_passkey(self, credential_id: bytes) -> bool: ...
    async def save_totp(
        self, user: str, secret: SecretValue, confirmed: bool = False, *, now: datetime | None = None
    ) -> None: ...
    async def get_totp(self, user: str) -> TotpEnrollment | None: ...
    async def confirm_totp(self, user: str, now: datetime | None = None) -> bool: ...
    async def delete_totp(self, user: str) -> bool: ...
    async def mark_totp_used(self, user: str, time_step: int) -> bool:
        """Claim a TOTP time step; False if it, or a later one, was used already (RFC 6238 §5.2)."""
    async def create_device_code(
        self, *, device_code_hash: str, user_code: str, client: str, expires_at: datetime, interval_s: int
    ) -> DeviceCode: ...
    async def device_code_by_user_code(self, user_code: str) -> DeviceCode | None: ...
    async def device_code_by_hash(self, device_code_hash: str) -> DeviceCode | None: ...
    async def approve_device_code(self, user_code: str, session_id: str, now: datetime | None = None) -> bool:
        """Approve a pending, unexpired code with an active session; exactly one approver wins."""
    async def deny_device_code(self, user_code: str, now: datetime | None = None) -> bool: ...
    async def consume_device_code(self, device_code_hash: str, now: datetime) -> DeviceCode | None:
        """Delete and return an approved, unexpired code: of several polls, exactly one gets it."""
    async def hit_counter(self, key: str, *, window_s: int, cost: int = 1, now: datetime | None = None) -> WindowCount:
        """Add `cost` to the fixed-window counter `key` (cost 0 only reads it); shared by every process and replica
        on this store, for rate limits and failure budgets. `purge_expired` deletes ended windows."""
    async def put_ephemeral(self, kind: str, key: str, value: bytes, *, expires_at: datetime, max_rows: int,
                            now: datetime | None = None) -> int:
        """Store `value` sealed under `key` (kept hashed) until `expires_at`, replacing any value there; at most
        `max_rows` of one kind live, the least recently stored go first. Returns how many rows it evicted."""
    async def take_ephemeral(self, kind: str, key: str, now: datetime | None = None) -> bytes | None:
        """Delete and return the unexpired value under `key`: of several replicas asking, exactly one gets it."""
    async def close(self) -> None: ...


def build_session(
    *, user: str, idp: str, method: AuthMethod | str, aal: AssuranceLevel, ttl_s: int, now: datetime | None,
    user_agent: str, ip: str, attrs: dict[str, Any] | None,
) -> IdentitySession:
    """The value `create_session` stores, with a fresh id; both backends build it here."""
    if ttl_s <= 0:
        raise ValueError(f"session ttl_s must be positive, got {ttl_s}")
    created = require_aware(now or utc_now(), "now")
    return IdentitySession(
        id=new_session_id(), user=user, idp=idp, method=AuthMethod(method), aal=AssuranceLevel(aal),
        created_at=created, expires_at=created + timedelta(seconds=ttl_s), last_seen_at=created,
        user_agent=user_agent, ip=ip, attrs=dict(attrs or {}),
    )


# --- identifiers and hashes --------------------------------------------------------------------------------


def new_session_id() -> str:
    """128 random bits, urlsafe base64 without padding, never starting with '-'.

    People paste the id into `pgwarden sessions revoke ID`; one in 64 plain urlsafe ids starts with '-', which a
    command line reads as an option, so such draws are taken again (the id stays uniform over what remains)."""
    while True:
        ident = secrets.token_urlsafe(16)
        if not ident.startswith("-"):
            return ident


def new_device_code() -> str:
    return secrets.token_urlsafe(32)


def new_user_code() -> str:
    """Eight letters from RFC 8628's alphabet, shown as `BCDF-GHJK` (~34 bits; the flow must rate-limit)."""
    letters = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
    return f"{letters[:4]}-{letters[4:]}"


def normalize_user_code(user_code: str) -> str:
    """The lookup key for a typed user code: case and punctuation are ignored (RFC 8628 §6.1)."""
    return "".join(ch for ch in user_code.upper() if ch.isalnum())


def hash_secret(raw: str) -> str:
    """SHA-256 hex of a high-entropy bearer value (device code, refresh credential); the store keeps only this."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def require_hash(value: str, name: str) -> str:
    """Refuse anything but a SHA-256 hex digest, so a raw credential passed by mistake never gets stored."""
    if not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"{name} must be a SHA-256 hex digest (use hash_secret)")
    return value


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced by `***` (userinfo and `password=` parameter)."""
    masked = re.sub(r"(://[^:/?#@]*):[^/?#]*@", r"\1:***@", dsn)
    return re.sub(r"(password=)[^&\s]*", r"\1***", masked, flags=re.IGNORECASE)


# --- sealing at rest ---------------------------------------------------------------------------------------


class Sealer:
    """AES-256-GCM with a random nonce per value; the associated data binds a ciphertext to its row."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != ENCRYPTION_KEY_BYTES:
            raise ValueError(f"state store encryption key must be {ENCRYPTION_KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer('**********')"

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return _SEAL_VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal(self, sealed: bytes, *, aad: bytes, where: str) -> bytes:
        """Open a sealed value; `where` names the row in the error, never the value."""
        if sealed[:1] != _SEAL_VERSION or len(sealed) < 1 + 12 + 16:
            raise EncryptionKeyMismatch(f"{where}: not a sealed value this pgwarden can read")
        try:
            return self._aead.decrypt(sealed[1:13], sealed[13:], aad)
        except InvalidTag as exc:
            raise EncryptionKeyMismatch(
                f"{where}: cannot decrypt with this encryption key",
                detail="the state store was written with a different key, or the row was altered",
                hint="start pgwarden with the data directory (and its state key) that created this store",
            ) from exc

    def key_check(self) -> bytes:
        """A sealed known value, stored once so that opening with another key fails at once, not at first login."""
        return self.seal(_KEY_CHECK_PLAINTEXT, aad=b"key-check")

    def verify_key_check(self, sealed: bytes, *, where: str) -> None:
        if self.unseal(sealed, aad=b"key-check", where=where) != _KEY_CHECK_PLAINTEXT:
            raise EncryptionKeyMismatch(f"{where}: key check value is wrong")


def ephemeral_aad(kind: str, key_hash: str) -> bytes:
    # Bound to its kind and key: a sealed flow cannot be replayed as a one-time code, or under another flow's id.
    return f"ephemeral:{kind}:{key_hash}".encode()


def totp_aad(user: str) -> bytes:
    # Binding the ciphertext to its user stops a row-swap from giving Mallory Alice's secret.
    return b"totp:" + user.encode("utf-8")
