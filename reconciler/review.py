"""A revision's documents as review sees them: validated without decryption keys.

Encrypted Secrets are checked for their sops *shape* (metadata, MAC, an ENC[...] value) and
validated with a placeholder value; plaintext Secrets are refused unless explicitly allowed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler import load, validate
from reconciler.errors import ConfigError, DecryptionFailed, InvalidManifests, ManifestErrors
from reconciler.load import Document
from reconciler.sops import SopsFormatError, is_sops_document
from reconciler.sops.cipher import is_encrypted_string
from reconciler.sops.metadata import parse_metadata

# Stands in for an encrypted value during schema/reference checks; it never leaves this module's copies.
PLACEHOLDER_VALUE = "(encrypted)"


class UnencryptedSecret(ConfigError):
    """A Secret manifest without sops encryption, where only encrypted Secrets are accepted."""


def load_for_review(path: Path, *, allow_plaintext_secrets: bool = False) -> list[Document]:
    """Load a manifest directory (or one file) and check it without keys; raises ManifestErrors.

    Returns the documents as written (encrypted Secrets keep their ciphertext, for `diff`).
    """
    if path.is_file():
        documents = load.load_file(path, path.parent)
    else:
        documents = load.load_directory(path)
    return review_documents(documents, allow_plaintext_secrets=allow_plaintext_secrets)


def review_documents(documents: Sequence[Document], *, allow_plaintext_secrets: bool = False) -> list[Document]:
    """Every check `validate` runs, with no keys: sops shape, schemas, references, names, CEL.

    Returns `documents` unchanged. All problems are raised together in one ManifestErrors.
    """
    problems: list[ConfigError] = []
    stand_ins: list[Document] = []
    for doc in documents:
        problems.extend(encryption_problems(doc, allow_plaintext_secrets=allow_plaintext_secrets))
        if not is_sops_document(doc.body):
            stand_ins.append(doc)
        elif doc.kind == "Secret" and not _has_encrypted_name(doc):
            stand_ins.append(_with_placeholder(doc))
        # else: the schema checks would quote an encrypted kind or name ("unknown kind 'ENC[...]'");
        # the encryption problem already reported says enough.
    try:
        validate.validate_all(stand_ins)
    except ManifestErrors as exc:
        problems.extend(exc.errors)
    if problems:
        raise InvalidManifests(problems)
    return list(documents)


def encryption_problems(doc: Document, *, allow_plaintext_secrets: bool = False) -> list[ConfigError]:
    """What is wrong with how this document is (or is not) encrypted; never quotes a value."""
    if not is_sops_document(doc.body):
        if doc.kind == "Secret" and not allow_plaintext_secrets:
            return [_plaintext(doc)]
        return []
    if doc.kind != "Secret":
        # Without keys nothing in it can be validated, and an encrypted kind or name would hide
        # what the document is from reviewers.
        return [
            DecryptionFailed(
                "only Secret manifests may be sops-encrypted (and only their `data`)",
                source=doc.source("sops"),
                hint="keep kind and metadata readable: encrypted_regex ^(data|stringData)$",
            )
        ]
    problems: list[ConfigError] = []
    if _has_encrypted_name(doc):
        problems.append(
            DecryptionFailed(
                "metadata.name is encrypted: encrypt only `data` so the name stays reviewable",
                source=doc.source("metadata.name"),
                hint="re-create it with `pgwarden secret create`",
            )
        )
    problems.extend(_sops_metadata_problems(doc))
    data = doc.body.get("data")
    if isinstance(data, dict) and "value" in data and not is_encrypted_string(data["value"]):
        # sops metadata present but the value in clear: a misapplied encrypted_regex (sops#1886).
        problems.append(
            DecryptionFailed(
                "data.value is not encrypted (not an ENC[AES256_GCM,...] string) although the document "
                "carries sops metadata",
                source=doc.source("data.value"),
                hint="re-encrypt it with `pgwarden secret create` or `sops encrypt`",
            )
        )
    return problems


def count_kinds(documents: Sequence[Document]) -> dict[str, int]:
    """Documents per kind, in first-seen order (for `✓ 7 documents valid (...)`)."""
    return dict(Counter(doc.kind or "(no kind)" for doc in documents))


def _has_encrypted_name(doc: Document) -> bool:
    metadata = doc.body.get("metadata")
    return isinstance(metadata, dict) and is_encrypted_string(metadata.get("name"))


def _sops_metadata_problems(doc: Document) -> list[ConfigError]:
    try:
        metadata = parse_metadata(doc.body["sops"], file=doc.file)
    except SopsFormatError as exc:
        # `reason` names the field only; the place comes from our SourceRef.
        return [DecryptionFailed(f"malformed sops metadata: {exc.reason}", source=doc.source(exc.key_path or "sops"))]
    problems: list[ConfigError] = []
    if metadata.mac is None or not is_encrypted_string(metadata.mac):
        problems.append(
            DecryptionFailed(
                "sops metadata has no MAC: the file cannot be verified",
                source=doc.source("sops.mac"),
                hint="re-encrypt it with `pgwarden secret create` or `sops encrypt`",
            )
        )
    if not any(metadata.key_groups):
        problems.append(
            DecryptionFailed("sops metadata has no key slots: no key could ever decrypt it", source=doc.source("sops"))
        )
    return problems


def _plaintext(doc: Document) -> UnencryptedSecret:
    name = doc.name or "(unnamed)"
    return UnencryptedSecret(
        f"Secret {name} in {doc.file} is not encrypted: encrypt it with `pgwarden secret create`",
        source=doc.source("data"),
        hint=f"`pgwarden secret create {name} -o FILE` writes it encrypted; plaintext Secrets are accepted "
        "only with --allow-plaintext-secrets (local development directories)",
    )


def _with_placeholder(doc: Document) -> Document:
    """A copy for the schema checks: `sops` dropped, `data.value` replaced; a Secret needs only that it exists."""
    body: dict[str, Any] = {k: v for k, v in doc.body.items() if k != "sops"}
    data = body.get("data")
    if isinstance(data, dict) and "value" in data:
        body["data"] = {**data, "value": PLACEHOLDER_VALUE}
    return load.with_body(doc, body)
