"""Decrypt the sops-encrypted documents of a revision, in memory only, one file at a time.

sops binds one data key and one MAC to a whole file, so every document of a file is decrypted
together. Plaintext Secrets in Git are refused unless the source allows them (local development).

A `Decryptor` does not decrypt again a file whose parsed documents and keys are those of its last call: a commit
usually changes a few files, and decrypting 2,000 Secret files costs ~0.7 s (an age unwrap and a MAC
each; a PGP slot spawns gpg). The result is what the live snapshot already holds, so nothing is
revealed that was not already in memory.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reconciler import load
from reconciler.errors import ConfigError, DecryptionFailed, UndecryptableSecrets
from reconciler.load import Document
from reconciler.sops import KeyRing, SopsError, decrypt_documents, is_sops_document


@dataclass(frozen=True, slots=True)
class _Decrypted:
    """One file's decryption, valid while the same parsed bodies and the same keys come back."""

    bodies: tuple[dict[str, Any], ...]  # held, so no other body can reuse their id() while cached
    keys: weakref.ref[KeyRing]
    identities: tuple[Any, ...]
    gnupghome: object
    plain: tuple[dict[str, Any], ...]

    def serves(self, docs: Sequence[Document], keys: KeyRing) -> bool:
        # The parse cache hands back the very same body objects for a file whose bytes did not change.
        return (
            self.keys() is keys
            and self.gnupghome == keys.gnupghome
            and len(self.identities) == len(keys.age_identities)
            and all(a is b for a, b in zip(self.identities, keys.age_identities, strict=True))
            and len(self.bodies) == len(docs)
            and all(body is doc.body for body, doc in zip(self.bodies, docs, strict=True))
        )


def secrets(documents: Sequence[Document], keys: KeyRing | None, *, allow_plaintext: bool = False) -> list[Document]:
    """Every document with encrypted files decrypted; raises UndecryptableSecrets naming each failure."""
    return Decryptor().secrets(documents, keys, allow_plaintext=allow_plaintext)


class Decryptor:
    """The decrypt stage with a memory of its last call: a file whose parsed bodies and keys come back
    unchanged is not decrypted again. Mutable on purpose; owned by the reconcile loop."""

    def __init__(self) -> None:
        self._last: dict[str, _Decrypted] = {}  # file -> its decryption in the last call

    def secrets(self, documents: Sequence[Document], keys: KeyRing | None, *,
                allow_plaintext: bool = False) -> list[Document]:
        """Every document with encrypted files decrypted; raises UndecryptableSecrets naming each failure."""
        decrypted: dict[str, _Decrypted] = {}
        try:
            return _secrets(documents, keys, allow_plaintext, self._last, decrypted)
        finally:
            self._last = decrypted  # only files of this call are kept: plaintext of removed files is let go


def _secrets(
    documents: Sequence[Document], keys: KeyRing | None, allow_plaintext: bool,
    last_call: dict[str, _Decrypted], decrypted: dict[str, _Decrypted],
) -> list[Document]:
    by_file: dict[str, list[Document]] = {}
    for doc in documents:
        by_file.setdefault(doc.file, []).append(doc)
    out: list[Document] = []
    problems: list[ConfigError] = []
    for file, docs in by_file.items():
        if not any(is_sops_document(d.body) for d in docs):
            for d in docs:
                if d.kind == "Secret" and not allow_plaintext:
                    problems.append(DecryptionFailed(
                        f'Secret "{d.name}" is not encrypted: Secrets in Git must be sops-encrypted',
                        source=d.source("data"),
                        hint=f"encrypt it: pgwarden secret create {d.name or 'NAME'} -o {file}",
                    ))
            out.extend(docs)
            continue
        if keys is None:
            problems.append(DecryptionFailed(
                "encrypted file but no decryption keys configured", source=docs[0].source("sops"),
                hint="give pgwarden an age key (--age-key-file or SOPS_AGE_KEY_FILE) that is a recipient",
            ))
            continue
        last = last_call.get(file)
        if last is not None and last.serves(docs, keys):
            decrypted[file] = last
            out.extend(load.with_body(d, body) for d, body in zip(docs, last.plain, strict=True))
            continue
        fmt = "json" if file.endswith(".json") else "yaml"
        try:
            plain = decrypt_documents([d.body for d in docs], keys, file=file, format=fmt)
        except SopsError as exc:
            # SopsError text names the file, key path and recipients, never a value.
            problems.append(DecryptionFailed(str(exc), source=docs[0].source(exc.key_path or "sops")))
            continue
        decrypted[file] = _Decrypted(
            bodies=tuple(d.body for d in docs), keys=weakref.ref(keys), identities=tuple(keys.age_identities),
            gnupghome=keys.gnupghome, plain=tuple(plain),
        )
        out.extend(load.with_body(d, body) for d, body in zip(docs, plain, strict=True))
    if problems:
        raise UndecryptableSecrets(problems)
    return out
