"""The sops MAC: SHA-512 over plaintext leaves in file order, stored encrypted with `lastmodified` as AAD."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, date, datetime
from typing import Any

from reconciler.sops.cipher import decrypt_value, encrypt_value, parse_rfc3339, to_bytes
from reconciler.sops.errors import MacMismatch, SopsError, SopsFormatError

# sops.go MACOnlyEncryptedInitialization: a MAC over only the encrypted leaves never equals a full one.
MAC_ONLY_ENCRYPTED_INIT = hashlib.sha256(b"sops").digest()


class MacHasher:
    """Accumulates leaves in walk order. Mutable by nature: one hasher per file walk."""

    def __init__(self, *, mac_only_encrypted: bool) -> None:
        self._hash = hashlib.sha512()
        if mac_only_encrypted:
            self._hash.update(MAC_ONLY_ENCRYPTED_INIT)

    def add(self, plaintext_value: Any) -> None:
        self._hash.update(to_bytes(plaintext_value))

    def hexdigest(self) -> str:
        return self._hash.hexdigest().upper()


def lastmodified_aad(lastmodified: object, *, file: str | None = None) -> str:
    """Go `time.Parse(RFC3339, s).Format(RFC3339)`: whole seconds, `Z` for a zero offset."""
    moment: datetime | None
    if isinstance(lastmodified, str):
        try:
            moment = parse_rfc3339(lastmodified.strip())
        except ValueError:
            moment = None
    elif isinstance(lastmodified, datetime):
        # A YAML loader may already have turned an unquoted timestamp into a datetime.
        moment = lastmodified if lastmodified.tzinfo else lastmodified.replace(tzinfo=UTC)
    elif isinstance(lastmodified, date):
        moment = datetime(lastmodified.year, lastmodified.month, lastmodified.day, tzinfo=UTC)
    else:
        moment = None
    if moment is None:
        raise SopsFormatError(
            "lastmodified is missing or not an RFC 3339 timestamp", file=file, key_path="sops.lastmodified"
        )
    offset = moment.utcoffset()
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes > 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def verify_mac(
    stored_mac: str | None, computed: str, data_key: bytes, lastmodified: object, *, file: str | None
) -> None:
    """Raise MacMismatch unless the stored MAC decrypts to `computed`. Never skipped, never echoed."""
    if not stored_mac:
        raise MacMismatch(
            "the file has no MAC, so its values cannot be authenticated",
            file=file,
            key_path="sops.mac",
            hint="re-encrypt the file with sops (sops updatekeys / sops -r -i) so it carries a MAC",
        )
    aad = lastmodified_aad(lastmodified, file=file)
    try:
        stored = decrypt_value(stored_mac, data_key, aad)
    except SopsError as exc:
        raise MacMismatch(f"the stored MAC does not decrypt ({exc.reason})", file=file, key_path="sops.mac") from None
    if not isinstance(stored, str) or not hmac.compare_digest(stored.upper(), computed):
        raise MacMismatch(
            "MAC mismatch: the file was changed after it was encrypted "
            "(or, for multi-document YAML, not all documents were decrypted together)",
            file=file,
            key_path="sops.mac",
            hint="restore the file from git or re-encrypt it from its plaintext with sops",
        )


def encrypt_mac(computed: str, data_key: bytes, lastmodified: str) -> str:
    """The `sops.mac` value for a MAC computed at encryption time."""
    return encrypt_value(computed, data_key, lastmodified_aad(lastmodified))
