"""One call from a manifest directory to a Snapshot: load, decrypt, validate, build.

For `pgwarden` commands and tests; the reconcile loop runs the same stages itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from proxy.snapshot import Snapshot
from reconciler import build, load, validate
from reconciler.errors import ConfigError, DecryptionFailed, ManifestErrors
from reconciler.load import Document, ManifestFile

Decrypt = Callable[[Document], Document]


def load_snapshot(root: Path, *, revision: str | None = None, decrypt: Decrypt | None = None) -> Snapshot:
    """The Snapshot for the manifests under `root`. Raises ManifestErrors listing every problem.

    `decrypt` receives each document that carries a top-level `sops` mapping and returns it
    decrypted. Whatever it raises must not contain plaintext; a ConfigError keeps its place.
    """
    files, problems = load.read_directory(root)
    documents = load.parse_files(files, problems)
    documents = decrypt_documents(documents, decrypt)
    validate.validate_all(documents)
    return build.build_snapshot(documents, revision=revision or directory_revision(files), source=str(root))


def directory_revision(files: Iterable[ManifestFile]) -> str:
    """`dir:` + 12 hex digits of a SHA-256 over each file's path and bytes, in path order."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.path):
        # Length-prefix both parts so moving bytes between a name and a body changes the digest.
        name = file.path.encode()
        digest.update(len(name).to_bytes(8, "big") + name + len(file.data).to_bytes(8, "big") + file.data)
    return "dir:" + digest.hexdigest()[:12]


def is_encrypted(document: Document) -> bool:
    """sops marks an encrypted document with a top-level `sops` mapping."""
    return isinstance(document.body.get("sops"), dict)


def decrypt_documents(documents: Sequence[Document], decrypt: Decrypt | None) -> list[Document]:
    """Pass every encrypted document through `decrypt`; collect every failure."""
    out: list[Document] = []
    problems: list[ConfigError] = []
    for doc in documents:
        if not is_encrypted(doc):
            out.append(doc)
            continue
        what = "Secret" if doc.kind == "Secret" else "document"  # sops may have encrypted `kind` too
        if decrypt is None:
            problems.append(
                DecryptionFailed(
                    f"encrypted {what} but no decryption keys configured",
                    source=doc.source("sops"),
                    hint="give pgwarden an age or PGP key that is a recipient of this file",
                )
            )
            continue
        try:
            # The hook returns a body; kind and name are read again, since sops may have hidden them.
            out.append(load.with_body(doc, decrypt(doc).body))
        except ConfigError as exc:
            problems.append(exc)
        except Exception as exc:  # the hook's own errors name the key path, never the value
            problems.append(DecryptionFailed(f"cannot decrypt {what}: {exc}", source=doc.source("sops")))
    if problems:
        raise ManifestErrors(problems)
    return out
