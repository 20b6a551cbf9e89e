"""Walk one document tree, decrypting or encrypting each leaf with its key path as AAD, feeding the MAC.

The AAD is the mapping keys from the root joined by `:` plus a trailing `:`; sequence indices are not
part of it (sops.go `walkBranch`). `null` is never encrypted nor hashed; comments never hashed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.sops.cipher import Comment, decrypt_value, encrypt_value, is_encrypted_string
from reconciler.sops.errors import EncryptionFailed, SopsDecryptionError, SopsError, SopsFormatError
from reconciler.sops.mac import MacHasher
from reconciler.sops.metadata import EncryptionRule

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-/]+")


@dataclass(frozen=True, slots=True)
class CommentKey:
    """The mapping key under which dotenv and INI trees keep a comment line, in file order."""

    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Place:
    """Where a walk is, for error messages: file and (for multi-document YAML) document index."""

    file: str | None = None
    document: int | None = None


def format_key_path(parts: Sequence[str | int]) -> str:
    """`app2.db.password`, `an_array[1]`, `"not private".key`: key names are never secret."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:
            quoted = '"' + part.replace('"', '\\"') + '"'
            text += f".{quoted}" if text else quoted
    return text or "(document root)"


def _is_sequence(node: object) -> bool:
    return isinstance(node, Sequence) and not isinstance(node, str | bytes | bytearray)


class _Walk:
    """One pass over one document. Holds the per-walk state (key, rule, hasher) so recursion is short."""

    def __init__(
        self, *, data_key: bytes, rule: EncryptionRule, hasher: MacHasher, mac_only_encrypted: bool, place: Place
    ) -> None:
        self.key, self.rule, self.hasher = data_key, rule, hasher
        self.mac_only_encrypted, self.place = mac_only_encrypted, place

    def fail(self, error: type[SopsError], reason: str, shown: Sequence[str | int]) -> SopsError:
        return error(reason, file=self.place.file, document=self.place.document, key_path=format_key_path(shown))

    def node(self, node: Any, aad: tuple[str, ...], shown: tuple[str | int, ...], in_place: bool) -> Any:
        if isinstance(node, Mapping):
            out: MutableMapping[Any, Any] = node if in_place else {}  # type: ignore[assignment]
            for key, value in list(node.items()):
                if isinstance(key, CommentKey):
                    out[key] = self.comment(value, aad)
                elif not isinstance(key, str):
                    raise self.fail(
                        SopsFormatError, "mapping key is not a string (sops allows only string keys)", shown
                    )
                else:
                    out[key] = self.node(value, (*aad, key), (*shown, key), in_place)
            return out
        if _is_sequence(node):
            items = [self.node(v, aad, (*shown, i), in_place) for i, v in enumerate(node)]
            # sops writes a comment inside a list as a `type:comment` item; it is not data.
            items = [item for item in items if not isinstance(item, Comment)]
            if in_place:
                node[:] = items
                return node
            return items
        if node is None:
            return None
        return self.leaf(node, aad, shown)

    def leaf(self, value: Any, aad: tuple[str, ...], shown: tuple[str | int, ...]) -> Any:
        raise NotImplementedError

    def comment(self, value: Any, aad: tuple[str, ...]) -> Any:
        raise NotImplementedError


class _Decrypt(_Walk):
    def leaf(self, value: Any, aad: tuple[str, ...], shown: tuple[str | int, ...]) -> Any:
        if self.rule.is_comment_rule:
            # Comment rules key off comment lines a parsed YAML tree no longer has: decide by shape.
            # Safe because the MAC covers every plaintext unless mac_only_encrypted is set.
            is_encrypted = is_encrypted_string(value)
        else:
            is_encrypted = self.rule.is_encrypted(aad)
        plain = value
        if is_encrypted:
            if not isinstance(value, str):
                reason = f"value should be encrypted but is a plain {type(value).__name__}"
                raise self.fail(SopsDecryptionError, reason, shown)
            try:
                plain = decrypt_value(value, self.key, ":".join(aad) + ":")
            except SopsError as exc:
                raise self.fail(type(exc), exc.reason, shown) from None
        if isinstance(plain, Comment):
            return plain  # a comment-typed value is never hashed (sops.go Decrypt); lists drop it
        if is_encrypted or not self.mac_only_encrypted:
            self.hasher.add(plain)
        return plain

    def comment(self, value: Any, aad: tuple[str, ...]) -> Any:
        return decrypt_comment(value, self.key, [aad])


class _Encrypt(_Walk):
    def leaf(self, value: Any, aad: tuple[str, ...], shown: tuple[str | int, ...]) -> Any:
        is_encrypted = self.rule.is_encrypted(aad)
        try:
            if is_encrypted or not self.mac_only_encrypted:
                self.hasher.add(value)
            return encrypt_value(value, self.key, ":".join(aad) + ":") if is_encrypted else value
        except SopsError as exc:
            raise self.fail(EncryptionFailed, exc.reason, shown) from None

    def comment(self, value: Any, aad: tuple[str, ...]) -> Any:
        text = value.text if isinstance(value, Comment) else str(value)
        if not self.rule.is_encrypted(aad):
            return Comment(text)
        return Comment(encrypt_value(Comment(text), self.key, ":".join(aad) + ":"))


def decrypt_comment(value: Any, data_key: bytes, candidate_paths: Sequence[Sequence[str]]) -> Comment:
    """Decrypt a comment, trying each candidate enclosing path as AAD; keep it as is if none fits.

    sops keeps comments it cannot decrypt (older versions left them in clear). Comments are outside
    the MAC, so trying several paths weakens nothing that was protected.
    """
    text = value.text if isinstance(value, Comment) else str(value)
    if not is_encrypted_string(text):
        return Comment(text)
    for path in candidate_paths:
        try:
            plain = decrypt_value(text.strip(), data_key, ":".join(path) + ":")
        except SopsError:
            continue
        return plain if isinstance(plain, Comment) else Comment(str(plain))
    return Comment(text)


def decrypt_tree(
    tree: Mapping[str, Any],
    *,
    data_key: bytes,
    rule: EncryptionRule,
    hasher: MacHasher,
    mac_only_encrypted: bool,
    place: Place,
    in_place: bool = False,
) -> Any:
    """Decrypt one document (without its `sops` key), adding its leaves to `hasher` in order."""
    walk = _Decrypt(data_key=data_key, rule=rule, hasher=hasher, mac_only_encrypted=mac_only_encrypted, place=place)
    return walk.node(tree, (), (), in_place)


def encrypt_tree(
    tree: Mapping[str, Any],
    *,
    data_key: bytes,
    rule: EncryptionRule,
    hasher: MacHasher,
    mac_only_encrypted: bool,
    place: Place,
) -> dict[str, Any]:
    """Encrypt one plaintext document into a new tree, adding its leaves to `hasher` in order."""
    if rule.is_comment_rule:
        raise EncryptionFailed("comment-based encryption rules are not supported when encrypting")
    walk = _Encrypt(data_key=data_key, rule=rule, hasher=hasher, mac_only_encrypted=mac_only_encrypted, place=place)
    return walk.node(tree, (), (), False)


def strip_comments(node: Any) -> Any:
    """Drop CommentKey entries (dotenv/INI comment lines) from a decrypted tree."""
    if isinstance(node, Mapping):
        return {k: strip_comments(v) for k, v in node.items() if not isinstance(k, CommentKey)}
    if _is_sequence(node):
        return [strip_comments(v) for v in node if not isinstance(v, Comment)]
    return node
