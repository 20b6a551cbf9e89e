"""Errors raised by the sops codec. They name the file and key path, never a value or ciphertext.

SopsError                      every error this package raises on purpose
├── NotASopsFile               the document has no `sops` metadata block
├── SopsFormatError            the file, an ENC[...] string or the metadata block is malformed
├── KeyConfigError             a key file, keyring, recipient or .sops.yaml could not be used
├── SopsDecryptionError        a value, the MAC or the data key could not be authenticated
│   ├── MacMismatch            the MAC is missing or does not match the decrypted values
│   └── DataKeyUnavailable     no key slot (or too few Shamir groups) opened the data key
├── EncryptionFailed           a value or the data key could not be encrypted
└── BackendError               the optional Go `sops` binary failed
"""

from __future__ import annotations

from dataclasses import dataclass


class SopsError(Exception):
    """Every error this package raises on purpose; `str()` is safe to log."""

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        key_path: str | None = None,
        document: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.key_path = key_path
        self.document = document
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        place = [p for p in (self.file, _document_label(self.document), self.key_path) if p]
        return f"{', '.join(place)}: {self.reason}" if place else self.reason

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructors do not survive pickling (multiprocessing, logging queues) by default.
        return _restore, (type(self), self.args, dict(self.__dict__))


def _restore(cls: type[SopsError], args: tuple[object, ...], state: dict[str, object]) -> SopsError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


def _document_label(document: int | None) -> str | None:
    # Documents are numbered from 1 in messages, as editors number them.
    return None if document is None else f"document {document + 1}"


class NotASopsFile(SopsError):
    """The document carries no `sops` metadata block, so it was never encrypted by sops."""


class SopsFormatError(SopsError):
    """The file, an ENC[...] string or the `sops` metadata block does not follow the sops format."""


class KeyConfigError(SopsError):
    """A key file, keyring, recipient or `.sops.yaml` rule could not be used."""


class SopsDecryptionError(SopsError):
    """A value, the MAC or the data key could not be decrypted and authenticated."""


class MacMismatch(SopsDecryptionError):
    """The file's MAC is missing or does not match its values: it was edited after encryption."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotFailure:
    """Why one key slot (an age recipient, a PGP fingerprint, a KMS key) did not open."""

    kind: str
    recipient: str
    reason: str
    group: int | None = None

    def describe(self) -> str:
        group = "" if self.group is None else f"group {self.group}: "
        return f"{group}{self.kind} {shorten_recipient(self.recipient)}: {self.reason}"


class DataKeyUnavailable(SopsDecryptionError):
    """No key slot opened the data key (or fewer Shamir groups than the threshold did)."""

    def __init__(
        self,
        reason: str,
        *,
        attempts: list[SlotFailure],
        file: str | None = None,
        key_path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.attempts = attempts
        lines = "".join(f"\n  - {a.describe()}" for a in attempts)
        super().__init__(reason + lines, file=file, key_path=key_path, hint=hint)


class EncryptionFailed(SopsError):
    """A value or the data key could not be encrypted for the requested recipients."""


class BackendError(SopsError):
    """The optional Go `sops` binary could not be run or refused the file."""


def shorten_recipient(recipient: str, max_chars: int = 72) -> str:
    """Keep long public recipients (post-quantum age keys are ~2 kB) readable in messages."""
    if len(recipient) <= max_chars:
        return recipient
    return f"{recipient[: max_chars - 12]}…{recipient[-8:]}"
