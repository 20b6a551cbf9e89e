"""Open the 32-byte data key from a file's key slots, or seal a new one for recipients.

One key group: any slot opens the whole key. Several groups: each opens a Shamir share, and
`shamir_threshold` shares rebuild the key (sops.go `UpdateMasterKeys`, `decryptKeyGroups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyrage
from pyrage import ssh, x25519

import reconciler.sops.gpg as gpg
import reconciler.sops.shamir as shamir
from reconciler.sops.cipher import DATA_KEY_BYTES
from reconciler.sops.errors import (
    DataKeyUnavailable,
    EncryptionFailed,
    SlotFailure,
    SopsDecryptionError,
    SopsError,
    shorten_recipient,
)
from reconciler.sops.keys import PYRAGE_VERSION, KeyRing
from reconciler.sops.metadata import KeySlot, Metadata

_SHARE_BYTES = DATA_KEY_BYTES + 1  # y bytes || x coordinate


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientGroup:
    """The master keys of one key group, for encryption."""

    age: tuple[str, ...] = ()
    pgp: tuple[str, ...] = ()


def open_data_key(metadata: Metadata, keys: KeyRing, *, file: str | None) -> bytes:
    """Return the data key, or raise DataKeyUnavailable listing every slot and why it failed."""
    groups = metadata.key_groups
    hint = "load the matching private key: --age-key-file / SOPS_AGE_KEY_FILE, --pgp-key-file or --gnupghome"
    if any(slot.recipient.startswith("age1pq1") for group in groups for slot in group):
        hint = (
            "post-quantum age needs a newer age implementation: decrypt with Go sops >= 3.12 "
            "(--backend go), or re-encrypt the file for an X25519 (age1…) recipient"
        )
    if len(groups) == 1:
        key, failures = _open_group(groups[0], keys, length=DATA_KEY_BYTES, group=None)
        if key is None:
            reason = "no key could decrypt the data key" if groups[0] else "the file has no key slots"
            raise DataKeyUnavailable(reason, attempts=failures, file=file, key_path="sops", hint=hint)
        return key
    needed = metadata.shamir_threshold or 2  # without a threshold sops combines what opened (>= 2)
    shares: list[bytes] = []
    failures = []
    for index, group in enumerate(groups):
        share, group_failures = _open_group(group, keys, length=_SHARE_BYTES, group=index)
        failures += group_failures
        if share is not None:
            shares.append(share)
            if metadata.shamir_threshold and len(shares) == needed:
                break
    if len(shares) < needed:
        raise DataKeyUnavailable(
            f"only {len(shares)} of the {needed} Shamir key groups needed for the data key could be opened",
            attempts=failures,
            file=file,
            key_path="sops.key_groups",
            hint=hint,
        )
    try:
        return shamir.combine(shares)
    except SopsError as exc:
        raise SopsDecryptionError(exc.reason, file=file, key_path="sops.key_groups") from None


def _open_group(
    slots: Sequence[KeySlot], keys: KeyRing, *, length: int, group: int | None
) -> tuple[bytes | None, list[SlotFailure]]:
    failures: list[SlotFailure] = []
    for slot in slots:  # already in sops' default order: age, pgp, then the rest
        try:
            opened = _open_slot(slot, keys)
        except gpg.GpgFailed as exc:
            failures.append(SlotFailure(kind=slot.kind, recipient=slot.recipient, reason=exc.reason, group=group))
            continue
        if len(opened) != length:
            reason = f"decrypted to {len(opened)} bytes instead of {length}"
            failures.append(SlotFailure(kind=slot.kind, recipient=slot.recipient, reason=reason, group=group))
            continue
        return opened, []
    return None, failures


def _open_slot(slot: KeySlot, keys: KeyRing) -> bytes:
    if slot.kind == "age":
        return _open_age(slot, keys)
    if slot.kind == "pgp":
        if keys.gnupghome is None:
            raise gpg.GpgFailed("no PGP keyring configured (use --gnupghome, --pgp-key-file or GNUPGHOME)")
        return gpg.decrypt(keys.gnupghome, slot.enc, throwaway=keys.owns_gnupghome)
    raise gpg.GpgFailed(f"{slot.kind} keys are not supported natively; use the Go sops backend")


def _open_age(slot: KeySlot, keys: KeyRing) -> bytes:
    # GpgFailed doubles as the "this slot did not open" signal for every slot kind.
    unusable = keys.describe_unusable()
    post_quantum = slot.recipient.startswith("age1pq1")
    if not keys.age_identities:
        reason = "no age identity loaded (use --age-key-file, SOPS_AGE_KEY_FILE or SOPS_AGE_KEY)"
        if post_quantum:
            reason = f"post-quantum age recipient, which pyrage {PYRAGE_VERSION} cannot decrypt"
        raise gpg.GpgFailed(f"{reason}; {unusable}" if unusable else reason)
    try:
        return pyrage.decrypt(slot.enc.encode(), keys.age_identities)
    except pyrage.DecryptError:
        count = len(keys.age_identities)
        reason = f"none of the {count} loaded age identit{'y' if count == 1 else 'ies'} matches"
        if post_quantum:
            reason += f" (post-quantum recipient, which pyrage {PYRAGE_VERSION} cannot decrypt)"
        raise gpg.GpgFailed(f"{reason}; {unusable}" if unusable else reason) from None


def seal_data_key(
    data_key: bytes, groups: Sequence[RecipientGroup], *, threshold: int | None, gnupghome: Path | None
) -> dict[str, object]:
    """The key-slot part of a `sops:` block: top-level `age`/`pgp`, or `key_groups` + threshold."""
    if not groups or any(not (g.age or g.pgp) for g in groups):
        raise EncryptionFailed("every key group needs at least one age or PGP recipient")
    if len(groups) == 1:
        return _seal_group(data_key, groups[0], gnupghome)
    needed = threshold or len(groups)
    try:
        shares = shamir.split(data_key, len(groups), needed)
    except SopsError as exc:
        raise EncryptionFailed(exc.reason) from None
    sealed = [_seal_group(share, group, gnupghome) for share, group in zip(shares, groups, strict=True)]
    return {"key_groups": sealed, "shamir_threshold": needed}


def _seal_group(secret: bytes, group: RecipientGroup, gnupghome: Path | None) -> dict[str, object]:
    sealed: dict[str, object] = {}
    if group.age:
        sealed["age"] = [{"recipient": r, "enc": _seal_age(secret, r)} for r in group.age]
    if group.pgp:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sealed["pgp"] = [
            {"created_at": now, "enc": _seal_pgp(secret, fp, gnupghome), "fp": fp.upper()} for fp in group.pgp
        ]
    return sealed


def _seal_age(secret: bytes, recipient: str) -> str:
    try:
        if recipient.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            parsed = ssh.Recipient.from_str(recipient)
        else:
            parsed = x25519.Recipient.from_str(recipient)
    except pyrage.RecipientError:
        reason = "not a valid age recipient"
        if recipient.startswith("age1pq1"):
            reason = f"post-quantum age recipient, which pyrage {PYRAGE_VERSION} cannot encrypt to"
        raise EncryptionFailed(f"age recipient {shorten_recipient(recipient)}: {reason}") from None
    return pyrage.encrypt(secret, [parsed], armored=True).decode("ascii")


def _seal_pgp(secret: bytes, fingerprint: str, gnupghome: Path | None) -> str:
    try:
        return gpg.encrypt(gnupghome, fingerprint, secret)
    except gpg.GpgFailed as exc:
        raise EncryptionFailed(f"pgp {fingerprint}: {exc.reason}") from None
