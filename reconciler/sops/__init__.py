"""Native sops v3: decrypt and encrypt YAML, JSON, dotenv, INI and binary files in memory.

Age keys go through pyrage, PGP keys through the `gpg` binary; every value is bound to its key path
and the MAC is always verified. Errors name the file and key path, never a value.
"""

from reconciler.sops.creation_rules import find_creation_recipients, find_sops_config
from reconciler.sops.datakey import RecipientGroup
from reconciler.sops.decrypt import (
    decrypt_bytes,
    decrypt_document,
    decrypt_documents,
    decrypt_file,
    is_sops_document,
)
from reconciler.sops.encrypt import dump_yaml, encrypt_documents, encrypt_secret_manifest
from reconciler.sops.errors import (
    BackendError,
    DataKeyUnavailable,
    EncryptionFailed,
    KeyConfigError,
    MacMismatch,
    NotASopsFile,
    SlotFailure,
    SopsDecryptionError,
    SopsError,
    SopsFormatError,
)
from reconciler.sops.formats import INPUT_TYPES, OUTPUT_TYPES, detect_format, render
from reconciler.sops.keys import KeyRing
from reconciler.sops.metadata import EncryptionRule

__all__ = [
    "INPUT_TYPES",
    "OUTPUT_TYPES",
    "BackendError",
    "DataKeyUnavailable",
    "SopsDecryptionError",
    "EncryptionFailed",
    "EncryptionRule",
    "KeyConfigError",
    "KeyRing",
    "MacMismatch",
    "NotASopsFile",
    "RecipientGroup",
    "SlotFailure",
    "SopsError",
    "SopsFormatError",
    "decrypt_bytes",
    "decrypt_document",
    "decrypt_documents",
    "decrypt_file",
    "detect_format",
    "dump_yaml",
    "encrypt_documents",
    "encrypt_secret_manifest",
    "find_creation_recipients",
    "find_sops_config",
    "is_sops_document",
    "render",
]
