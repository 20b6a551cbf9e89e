"""Errors in the manifests themselves, each placed at file, document and field path.

PgwardenError                      proxy/errors.py (the whole tree is drawn there)
├── ConfigError                    one problem, carries SourceRef(file, document, path)
│   ├── ManifestSyntaxError        unreadable file: YAML syntax, duplicate key, size limit, symlink
│   ├── SchemaViolation            a document does not match its kind's JSON Schema
│   ├── DanglingReference          names a Secret, config, parent or Group that does not exist; parent cycles
│   ├── DuplicateName              two documents of one kind share metadata.name
│   ├── InvalidExpression          a CEL condition does not compile
│   ├── DecryptionFailed           an encrypted Secret could not be (or may not be) decrypted
│   └── UnencryptedSecret          reconciler/review.py: keyless review refuses a plaintext Secret
└── ReconcileError                 a stage of the reconcile loop failed; `is_terminal` says if a retry can help
    ├── ManifestErrors             Terminal: every ConfigError one stage found, so a user fixes them all at once
    │   ├── UnreadableManifests    load: YAML syntax, size limits, symlinks
    │   ├── UndecryptableSecrets   decrypt: sops failures, missing keys, plaintext Secrets refused
    │   ├── InvalidManifests       validate: schemas, references, names, CEL
    │   └── UnbuildableManifests   build: a document the Snapshot cannot be built from
    ├── EmptyRevisionRefused       Terminal, apply: the revision has no objects and allowEmpty is off
    ├── SnapshotRefused            Terminal, apply: the proxy cannot compile the snapshot
    ├── TargetUnavailable          Transient, apply: the proxy (or a worker) could not take the snapshot now
    ├── SourceError                Transient, reconciler/source.py: the source could not be fetched
    └── UntrustedRevision          Terminal, reconciler/source.py: the commit is not signed by a trusted key

A Terminal error is about the revision itself: retrying the same revision cannot help, so the loop
stalls until a new one (controller-runtime's TerminalError). Anything else is retried with backoff.
`reconciler.status` maps each class to a condition reason, in one place.
Messages name the place, never the value: nothing here may echo a Secret's data.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from proxy.errors import PgwardenError

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_path(parts: Iterable[str | int]) -> str:
    """Render `["spec", "configs", 1, "name"]` as `spec.configs[1].name`; odd keys are quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceRef:
    """Where a problem is: a file relative to the manifest root, a 1-based document, a field path."""

    file: str
    document: int | None = None  # None: the whole file (too big, a symlink that escapes, not UTF-8)
    path: str = ""

    def __str__(self) -> str:
        parts = [self.file]
        if self.document is not None:
            parts.append(f"document {self.document}")
        place = ", ".join(parts)
        return f"{place}, {self.path}" if self.path else place


class ConfigError(PgwardenError):
    """A problem in the manifests; `source` says where. The message never contains a secret value."""

    def __init__(self, message: str, *, source: SourceRef, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.source = source

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


class ManifestSyntaxError(ConfigError):
    """A file that cannot be read as YAML/JSON manifests."""


class SchemaViolation(ConfigError):
    """A document that does not match the JSON Schema of its kind."""


class DanglingReference(ConfigError):
    """A reference to something that is not defined (or a `parent` chain that loops)."""

    @classmethod
    def to(cls, kind: str, name: str, known: Iterable[str], *, source: SourceRef) -> DanglingReference:
        """`no Group named 'admin' (did you mean 'admins'?)`: names are manifest names, never secret values."""
        return cls(f"no {kind} named {name!r}{suggestion(name, known)}", source=source)


def suggestion(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `known`, or ""."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class DuplicateName(ConfigError):
    """A second document of the same kind with the same metadata.name."""


class InvalidExpression(ConfigError):
    """A CEL expression that does not compile."""


class DecryptionFailed(ConfigError):
    """An encrypted Secret that could not be decrypted, or no keys to try."""


class ReconcileError(PgwardenError):
    """A stage of the reconcile loop failed; the last good snapshot stays live and nothing is pruned."""

    is_terminal: ClassVar[bool] = False

    @property
    def errors_text(self) -> list[str]:
        """One line per problem, for status (each names a place, never a value)."""
        return [self.message]


class Terminal:
    """Mixin: the revision itself is wrong, so retrying it cannot help; stalled until a new revision."""

    is_terminal: ClassVar[bool] = True


class ManifestErrors(Terminal, ReconcileError):
    """Every problem found in one pass over the manifests; str() lists one per line."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors: list[ConfigError] = sorted(errors, key=_order)
        count = len(self.errors)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the manifests")

    def __str__(self) -> str:
        return "\n".join([f"{self.message}:", *(f"  {e}" for e in self.errors)])

    @property
    def errors_text(self) -> list[str]:
        return [str(e) for e in self.errors]


class UnreadableManifests(ManifestErrors):
    """The load stage: files that cannot be read as YAML/JSON manifests."""


class UndecryptableSecrets(ManifestErrors):
    """The decrypt stage: encrypted files that cannot (or may not) be decrypted, plaintext Secrets refused."""


class InvalidManifests(ManifestErrors):
    """The validate stage: documents that break a schema, a reference, a name or a CEL rule."""


class UnbuildableManifests(ManifestErrors):
    """The build stage: documents the Snapshot cannot be built from."""


class EmptyRevisionRefused(Terminal, ReconcileError):
    """The revision has no objects: applying it would remove everything, so it is refused."""


class SnapshotRefused(Terminal, ReconcileError):
    """The proxy cannot compile the snapshot; the same revision would be refused again."""


class TargetUnavailable(ReconcileError):
    """The proxy, or one of its workers, could not take the snapshot now; retried with backoff."""


def _order(error: ConfigError) -> tuple[str, int]:
    # Stable sort: within one document, errors keep the order the checks found them.
    return (error.source.file, error.source.document or 0)
