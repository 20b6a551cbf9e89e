"""The `sops:` metadata block: key slots, key groups, the MAC and which leaves are encrypted.

Field names are the mapstructure tags of getsops/sops `stores/stores.go`; unknown keys are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.sops.errors import SopsFormatError

RULE_KEYS = (
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
)
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"

# Slot kinds in sops' default decryption order (age, then pgp), then the cloud KMS kinds.
SLOT_KINDS = ("age", "pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms")
_RECIPIENT_FIELDS = {
    "age": ("recipient",),
    "pgp": ("fp",),
    "kms": ("arn",),
    "gcp_kms": ("resource_id",),
    "azure_kv": ("vault_url", "name", "version"),
    "hc_vault": ("vault_address", "engine_path", "key_name"),
    "hckms": ("key_id",),
}
# RE2 (Go regexp) has no look-around and no backreferences; sops would refuse such a pattern.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=")


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptionRule:
    """Which leaves are encrypted: one of RULE_KEYS and its suffix or pattern."""

    kind: str = "unencrypted_suffix"
    pattern: str = DEFAULT_UNENCRYPTED_SUFFIX

    @property
    def is_comment_rule(self) -> bool:
        return self.kind.endswith("_comment_regex")

    def is_encrypted(self, path: Sequence[str]) -> bool:
        """sops `shouldBeEncrypted` for a leaf whose mapping-key path is `path`."""
        kind, pattern = self.kind, self.pattern
        if kind == "unencrypted_suffix":
            return not any(part.endswith(pattern) for part in path)
        if kind == "encrypted_suffix":
            return any(part.endswith(pattern) for part in path)
        if kind == "unencrypted_regex":
            return not any(re.search(pattern, part) for part in path)
        if kind == "encrypted_regex":
            return any(re.search(pattern, part) for part in path)
        # Comment rules depend on the comments above a value, which parsed YAML trees drop;
        # callers decide those leaves by their shape (see tree.py).
        return True

    def to_metadata(self) -> dict[str, str]:
        return {self.kind: self.pattern}


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySlot:
    """One encrypted copy of the data key (or of a Shamir share) for one master key."""

    kind: str
    recipient: str
    enc: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """The parsed `sops:` block of one file."""

    lastmodified: Any
    mac: str | None
    rule: EncryptionRule
    mac_only_encrypted: bool
    key_groups: tuple[tuple[KeySlot, ...], ...]
    shamir_threshold: int | None
    version: str | None


def parse_metadata(raw: object, *, file: str | None = None) -> Metadata:
    """Read a `sops:` mapping; raise SopsFormatError naming the offending field."""
    if not isinstance(raw, Mapping):
        raise SopsFormatError("the sops metadata block is not a mapping", file=file, key_path="sops")
    rules = [k for k in RULE_KEYS if raw.get(k) not in (None, "")]
    if len(rules) > 1:
        raise SopsFormatError(
            f"the sops metadata sets more than one of {', '.join(rules)}; sops allows only one",
            file=file,
            key_path="sops",
        )
    rule = EncryptionRule()
    if rules:
        rule = EncryptionRule(kind=rules[0], pattern=_field_str(raw, rules[0], file))
        if rule.kind.endswith("_regex"):
            _check_re2(rule, file)
    groups: list[tuple[KeySlot, ...]] = []
    if raw.get("key_groups"):
        key_groups = raw["key_groups"]
        if not isinstance(key_groups, Sequence) or isinstance(key_groups, str):
            raise SopsFormatError("key_groups is not a list", file=file, key_path="sops.key_groups")
        for index, group in enumerate(key_groups):
            groups.append(_parse_slots(group, file, f"sops.key_groups[{index}]"))
    else:
        groups.append(_parse_slots(raw, file, "sops"))
    mac = raw.get("mac")
    return Metadata(
        lastmodified=raw.get("lastmodified"),
        mac=mac if isinstance(mac, str) and mac else None,
        rule=rule,
        mac_only_encrypted=raw.get("mac_only_encrypted") in (True, "true"),
        key_groups=tuple(groups),
        shamir_threshold=_threshold(raw.get("shamir_threshold"), file),
        version=None if raw.get("version") is None else str(raw.get("version")),
    )


def _parse_slots(group: object, file: str | None, where: str) -> tuple[KeySlot, ...]:
    if not isinstance(group, Mapping):
        raise SopsFormatError("key group is not a mapping", file=file, key_path=where)
    slots: list[KeySlot] = []
    for kind in SLOT_KINDS:
        entries = group.get(kind) or []
        if not isinstance(entries, Sequence) or isinstance(entries, str):
            raise SopsFormatError(f"{kind} is not a list", file=file, key_path=f"{where}.{kind}")
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("enc"), str):
                raise SopsFormatError("key slot has no enc string", file=file, key_path=f"{where}.{kind}[{index}]")
            recipient = "/".join(str(entry.get(f) or "") for f in _RECIPIENT_FIELDS[kind]).strip("/")
            slots.append(KeySlot(kind=kind, recipient=recipient or "(unnamed)", enc=entry["enc"]))
    return tuple(slots)


def _field_str(raw: Mapping[str, Any], key: str, file: str | None) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise SopsFormatError(f"{key} is not a string", file=file, key_path=f"sops.{key}")
    return value


def _check_re2(rule: EncryptionRule, file: str | None) -> None:
    try:
        re.compile(rule.pattern)
    except re.error:
        ok = False
    else:
        ok = _NOT_RE2.search(rule.pattern) is None
    if not ok:
        raise SopsFormatError(
            f"{rule.kind} is not a regular expression Go's RE2 accepts",
            file=file,
            key_path=f"sops.{rule.kind}",
        )


def _threshold(value: object, file: str | None) -> int | None:
    if value in (None, "", 0):
        return None
    try:
        threshold = int(str(value))
    except ValueError:
        threshold = 0
    if threshold < 1:
        raise SopsFormatError("shamir_threshold is not a positive integer", file=file, key_path="sops.shamir_threshold")
    return threshold
