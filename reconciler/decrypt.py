"""Decrypt the sops-encrypted documents of a revision, in memory only, one file at a time.

sops binds one data key and one MAC to a whole file, so every document of a file is decrypted
together. Plaintext Secrets in Git are refused unless the source allows them (local development).
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler import load
from reconciler.errors import ConfigError, DecryptionFailed, ManifestErrors
from reconciler.load import Document
from reconciler.sops import KeyRing, SopsError, decrypt_documents, is_sops_document


def secrets(documents: Sequence[Document], keys: KeyRing | None, *, allow_plaintext: bool = False) -> list[Document]:
    """Every document with encrypted files decrypted; raises ManifestErrors naming each failure."""
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
        fmt = "json" if file.endswith(".json") else "yaml"
        try:
            plain = decrypt_documents([d.body for d in docs], keys, file=file, format=fmt)
        except SopsError as exc:
            # SopsError text names the file, key path and recipients, never a value.
            problems.append(DecryptionFailed(str(exc), source=docs[0].source(exc.key_path or "sops")))
            continue
        out.extend(load.with_body(d, body) for d, body in zip(docs, plain, strict=True))
    if problems:
        raise ManifestErrors(problems)
    return out
