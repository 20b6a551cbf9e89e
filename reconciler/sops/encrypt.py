"""Encrypt documents into sops files that Go sops reads: new data key, encrypted leaves, encrypted MAC.

`encrypt_secret_manifest` writes a pgwarden Secret with only `data` encrypted, so `kind` and
`metadata` stay reviewable in git (they are still covered by the MAC).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.sops.cipher import DATA_KEY_BYTES
from reconciler.sops.datakey import RecipientGroup, seal_data_key
from reconciler.sops.errors import EncryptionFailed
from reconciler.sops.formats import yaml_writer
from reconciler.sops.mac import MacHasher, encrypt_mac
from reconciler.sops.metadata import EncryptionRule
from reconciler.sops.tree import Place, encrypt_tree

# The sops release whose file format we write (recorded in `sops.version`; informational for sops).
SOPS_FORMAT_VERSION = "3.13.1"
SECRET_RULE = EncryptionRule(kind="encrypted_regex", pattern=r"^(data|stringData)$")
DEFAULT_RULE = EncryptionRule()  # unencrypted_suffix: _unencrypted, as sops


def encrypt_documents(
    documents: Sequence[Mapping[str, Any]],
    *,
    recipients: Sequence[RecipientGroup],
    rule: EncryptionRule = DEFAULT_RULE,
    mac_only_encrypted: bool = False,
    shamir_threshold: int | None = None,
    gnupghome: Path | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Encrypt the documents of one file with one fresh data key; each gets the same `sops` block.

    Several recipient groups split the data key with Shamir (`shamir_threshold` of them needed).
    """
    if not documents:
        raise EncryptionFailed("nothing to encrypt: no documents")
    for index, document in enumerate(documents):
        if not isinstance(document, Mapping) or "sops" in document:
            raise EncryptionFailed("a document is not a mapping or is already encrypted", document=index)
    data_key = os.urandom(DATA_KEY_BYTES)
    hasher = MacHasher(mac_only_encrypted=mac_only_encrypted)
    encrypted = [
        encrypt_tree(
            document,
            data_key=data_key,
            rule=rule,
            hasher=hasher,
            mac_only_encrypted=mac_only_encrypted,
            place=Place(document=index if len(documents) > 1 else None),
        )
        for index, document in enumerate(documents)
    ]
    lastmodified = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata: dict[str, Any] = {
        **seal_data_key(data_key, recipients, threshold=shamir_threshold, gnupghome=gnupghome),
        **rule.to_metadata(),
        "lastmodified": lastmodified,
        "mac": encrypt_mac(hasher.hexdigest(), data_key, lastmodified),
        "version": SOPS_FORMAT_VERSION,
    }
    if mac_only_encrypted:
        metadata["mac_only_encrypted"] = True
    metadata = dict(sorted(metadata.items()))  # sops >= 3.9 writes the block sorted
    return [{**document, "sops": metadata} for document in encrypted]


def dump_yaml(documents: Sequence[Mapping[str, Any]]) -> str:
    """YAML text for encrypted documents (armored key blocks as literal `|` scalars)."""
    buffer = io.StringIO()
    yaml_writer().dump_all(list(documents), buffer)
    return buffer.getvalue()


def encrypt_secret_manifest(
    name: str,
    value: str,
    *,
    age_recipients: Sequence[str],
    pgp_fingerprints: Sequence[str] = (),
    gnupghome: Path | None = None,
) -> str:
    """A sops-encrypted pgwarden Secret manifest (`data.value` encrypted, MAC set) as YAML text."""
    if not name or any(c.isspace() for c in name):
        raise EncryptionFailed("the Secret name must be non-empty and contain no whitespace")
    if not isinstance(value, str):
        raise EncryptionFailed("the Secret value must be text")
    if not age_recipients and not pgp_fingerprints:
        raise EncryptionFailed(
            "no recipients: give at least one age recipient or PGP fingerprint",
            hint="pass --age RECIPIENT or add creation_rules to .sops.yaml",
        )
    manifest = {"kind": "Secret", "metadata": {"name": name}, "data": {"value": value}}
    group = RecipientGroup(age=tuple(age_recipients), pgp=tuple(pgp_fingerprints))
    documents = encrypt_documents([manifest], recipients=[group], rule=SECRET_RULE, gnupghome=gnupghome)
    return dump_yaml(documents)
