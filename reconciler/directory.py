"""A manifest directory to a Snapshot in one call: load, decrypt, validate, build, without a loop.

For `pgwarden proxy --manifests`, the bench and tests; the reconcile loop calls the same stages itself,
so each raises the same error here as there (UnreadableManifests, UndecryptableSecrets, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from proxy.snapshot import Snapshot
from reconciler import build, load, validate
from reconciler import decrypt as decrypt_stage
from reconciler.errors import ConfigError, DecryptionFailed, UndecryptableSecrets
from reconciler.load import Document
from reconciler.sops import KeyRing, is_sops_document

Decrypt = Callable[[Document], Document]


def load_snapshot(
    root: Path, *, revision: str | None = None, source: str | None = None, decrypt: Decrypt | None = None,
    keys: KeyRing | None = None, allow_plaintext_secrets: bool = True,
) -> Snapshot:
    """The Snapshot for the manifests under `root`: load, decrypt, validate, build (the reconcile loop's
    pure stages). Raises the failing stage's ManifestErrors subclass, listing every problem it found.

    With `keys`, or when plaintext Secrets are refused, sops files are decrypted whole (one MAC per
    file) by `reconciler.decrypt`. Otherwise `decrypt`, if given, receives each encrypted document.
    Whatever either raises names places, never plaintext.
    """
    files, refused = load.read_directory(root)
    documents = load.parse_files(files, refused)
    if keys is not None or not allow_plaintext_secrets:
        documents = decrypt_stage.secrets(documents, keys, allow_plaintext=allow_plaintext_secrets)
    else:
        documents = decrypt_documents(documents, decrypt)
    validate.validate_all(documents)
    return build.build_snapshot(documents, revision=revision or load.directory_revision(files),
                                source=source or str(root))


def decrypt_documents(documents: Sequence[Document], decrypt: Decrypt | None) -> list[Document]:
    """Pass every encrypted document through `decrypt`; collect every failure."""
    out: list[Document] = []
    problems: list[ConfigError] = []
    for doc in documents:
        if not is_sops_document(doc.body):
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
        raise UndecryptableSecrets(problems)
    return out
