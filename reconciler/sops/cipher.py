"""The sops value cipher: AES-256-GCM `ENC[...]` strings bound to their key path, with type tags.

Plaintext encodings follow Go sops (`aes/cipher.go`, `sops.go` `ToBytes`) byte for byte, because the
same bytes feed the MAC: ints as `strconv.Itoa`, floats as `FormatFloat(f, 'f', -1)`, bools as
`True`/`False`, times as RFC 3339 with nanoseconds.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from ruamel.yaml.scalarbool import ScalarBoolean

from reconciler.sops.errors import EncryptionFailed, SopsDecryptionError, SopsFormatError

# Go: ^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]; base64 never holds a comma.
_ENC = re.compile(r"ENC\[AES256_GCM,data:([^,]*),iv:([^,]+),tag:([^,]+),type:([a-z]+)\]")
IV_BYTES = 32  # sops' nonceSize; decryption accepts any length the GCM mode allows
DATA_KEY_BYTES = 32
_TAG_BYTES = 16


class GoTime(datetime):
    """A `type:time` value that keeps Go's nanoseconds; Python's datetime stops at microseconds.

    Mutable attribute on an otherwise immutable datetime, set once by `parse_rfc3339`.
    """

    nanosecond: int | None = None

    def __reduce_ex__(self, protocol: object) -> tuple[Any, tuple[str]]:
        # copy and pickle keep the nanoseconds: the text round-trips exactly.
        return parse_rfc3339, (format_rfc3339_nano(self),)


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line (text after `#` or `;`); sops encrypts it but leaves it out of the MAC."""

    text: str


def is_encrypted_string(value: object) -> bool:
    """True for a string in the `ENC[AES256_GCM,...]` grammar (it says nothing about the key)."""
    return isinstance(value, str) and _ENC.fullmatch(value.strip()) is not None


def decrypt_value(text: str, key: bytes, aad: str) -> Any:
    """Decrypt one ENC[...] string; the error never quotes `text`.

    Raises:
        SopsFormatError: `text` is not in the ENC[...] grammar.
        SopsDecryptionError: the tag does not verify (wrong key, tampered or moved value).
    """
    if text == "":
        return ""  # sops stores empty strings unencrypted
    match = _ENC.fullmatch(text.strip())
    if match is None:
        raise SopsFormatError("value is not a sops ENC[AES256_GCM,...] string")
    try:
        data, iv, tag = (base64.b64decode(part, validate=True) for part in match.group(1, 2, 3))
    except (binascii.Error, ValueError):
        raise SopsFormatError("ENC[...] value has invalid base64 in data, iv or tag") from None
    if len(tag) != _TAG_BYTES or len(iv) < 8:
        raise SopsFormatError("ENC[...] value has a malformed iv or tag")
    try:
        plaintext = AESGCM(key).decrypt(iv, data + tag, aad.encode())
    except InvalidTag:
        raise SopsDecryptionError(
            "value does not authenticate: wrong data key, tampered value, or value moved from another key"
        ) from None
    return decode_plaintext(plaintext, match.group(4))


def encrypt_value(value: Any, key: bytes, aad: str, *, iv: bytes | None = None) -> str:
    """Encrypt one leaf as sops does; empty strings and comments stay `""`."""
    type_tag, plaintext = encode_plaintext(value)
    if plaintext == b"" and type_tag in ("str", "comment"):
        return ""
    iv = os.urandom(IV_BYTES) if iv is None else iv
    sealed = AESGCM(key).encrypt(iv, plaintext, aad.encode())
    data, tag = sealed[:-_TAG_BYTES], sealed[-_TAG_BYTES:]
    b64 = base64.b64encode
    return f"ENC[AES256_GCM,data:{b64(data).decode()},iv:{b64(iv).decode()},tag:{b64(tag).decode()},type:{type_tag}]"


def encode_plaintext(value: Any) -> tuple[str, bytes]:
    """Return sops' type tag and plaintext bytes (the same bytes go into the MAC)."""
    if isinstance(value, Comment):
        return "comment", value.text.encode()
    if isinstance(value, str):
        return "str", value.encode()
    if isinstance(value, bool | ScalarBoolean):
        return "bool", b"True" if value else b"False"
    if isinstance(value, int):
        return "int", str(int(value)).encode()
    if isinstance(value, float):
        return "float", format_go_float(float(value)).encode()
    if isinstance(value, date):
        return "time", format_rfc3339_nano(value).encode()
    if isinstance(value, bytes):
        return "bytes", value
    raise EncryptionFailed(f"cannot encrypt a value of type {type(value).__name__}")


def to_bytes(value: Any) -> bytes:
    """The MAC input for one plaintext leaf (Go sops `ToBytes`)."""
    try:
        return encode_plaintext(value)[1]
    except EncryptionFailed:
        raise SopsFormatError(f"a value of type {type(value).__name__} cannot be hashed") from None


def decode_plaintext(plaintext: bytes, type_tag: str) -> Any:
    """Turn decrypted bytes back into a typed value; errors name the type, never the bytes."""
    if type_tag == "bytes":
        return plaintext
    try:
        text = plaintext.decode()
        if type_tag == "str":
            return text
        if type_tag == "comment":
            return Comment(text)
        if type_tag == "int" and re.fullmatch(r"[+-]?[0-9]+", text):
            return int(text)
        if type_tag == "float":
            return float(text)
        if type_tag == "bool":
            return _parse_go_bool(text)
        if type_tag == "time":
            return parse_rfc3339(text)
    except ValueError:
        pass
    raise SopsFormatError(f"decrypted value does not parse as its declared type {type_tag!r}")


def _parse_go_bool(text: str) -> bool:
    # Go strconv.ParseBool
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError("not a bool")


def format_go_float(value: float) -> str:
    """Go `strconv.FormatFloat(f, 'f', -1, 64)`: shortest round trip, no exponent, no `.0`."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_rfc3339_nano(value: date) -> str:
    """Go `time.Time.MarshalText`: a date is midnight UTC, a naive datetime is UTC, `Z` for offset 0."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    offset = value.utcoffset() if value.tzinfo is not None else None
    offset = offset or timedelta(0)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    nanoseconds = getattr(value, "nanosecond", None)
    if nanoseconds is None:
        nanoseconds = value.microsecond * 1000
    if nanoseconds:
        text += f".{nanoseconds:09d}".rstrip("0")
    if offset == timedelta(0):
        return text + "Z"
    sign = "+" if offset > timedelta(0) else "-"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def parse_rfc3339(text: str) -> GoTime:
    """Parse an RFC 3339 timestamp (sops `type:time`, `lastmodified`), keeping nanoseconds."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text, re.IGNORECASE)
    if match is None:
        raise ValueError("not RFC 3339")
    base, fraction, zone = match.groups()
    nanoseconds = int((fraction or "").ljust(9, "0"))
    parsed = datetime.fromisoformat(f"{base}.{nanoseconds // 1000:06d}{'+00:00' if zone.upper() == 'Z' else zone}")
    moment = GoTime(*parsed.timetuple()[:6], parsed.microsecond, tzinfo=parsed.tzinfo)
    moment.nanosecond = nanoseconds
    return moment
