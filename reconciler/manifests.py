"""One call from a manifest directory to a Snapshot: load, decrypt, validate, build.

For `pgwarden` commands and tests; the reconcile loop runs the same stages itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from proxy.snapshot import Snapshot
from reconciler import build, load, validate
from reconciler import decrypt as decrypt_stage
from reconciler.errors import ConfigError, DecryptionFailed, ManifestErrors
from reconciler.load import Document, ManifestFile
from reconciler.sops import KeyRing

Decrypt = Callable[[Document], Document]


def load_snapshot(
    root: Path, *, revision: str | None = None, source: str | None = None, decrypt: Decrypt | None = None,
    keys: KeyRing | None = None, allow_plaintext_secrets: bool = True,
) -> Snapshot:
    """The Snapshot for the manifests under `root`: load, decrypt, validate, build (the reconcile loop's
    pure stages, also used by `pgwarden proxy`). Raises ManifestErrors listing every problem.

    With `keys`, or when plaintext Secrets are refused, sops files are decrypted whole (one MAC per
    file) by `reconciler.decrypt`. Otherwise `decrypt`, if given, receives each encrypted document.
    Whatever either raises names places, never plaintext.
    """
    files, problems = load.read_directory(root)
    documents = load.parse_files(files, problems)
    if keys is not None or not allow_plaintext_secrets:
        documents = decrypt_stage.secrets(documents, keys, allow_plaintext=allow_plaintext_secrets)
    else:
        documents = decrypt_documents(documents, decrypt)
    validate.validate_all(documents)
    return build.build_snapshot(documents, revision=revision or directory_revision(files), source=source or str(root))


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
