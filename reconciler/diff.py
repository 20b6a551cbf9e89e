"""What would change: compare two revisions' documents (or the live state with a desired Snapshot).

Pure: values in, a ChangeSet out; diff_report.py renders it as text or as a Markdown PR comment. A Secret's
value, a fingerprint and any sops ciphertext are compared in here and leave only as "(value hidden)".
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from proxy.snapshot import Snapshot
from proxy.snapshot_wire import to_wire
from reconciler.errors import format_path
from reconciler.load import Document
from reconciler.sops.cipher import is_encrypted_string
from reconciler.sops.errors import SopsFormatError
from reconciler.sops.metadata import parse_metadata

# Apply order (dependencies first), as Flux and Argo order kinds; other kinds follow alphabetically.
KIND_ORDER = ("Secret", "User", "Group", "Service", "Policy")
# Keys whose whole subtree is secret in any kind: a Secret's value, even under a mistyped `kind`.
_SECRET_KEYS = ("data", "stringData")


class Action(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


class Hidden(Enum):
    """Stands in for a value that is never shown: a Secret's value, its fingerprint, any ciphertext."""

    VALUE = "(value hidden)"

    def __repr__(self) -> str:
        return self.value


class Absent(Enum):
    """`before` of an added field, `after` of a removed one."""

    FIELD = "(absent)"

    def __repr__(self) -> str:
        return self.value


HIDDEN = Hidden.VALUE
ABSENT = Absent.FIELD


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldChange:
    """One leaf that differs; `before`/`after` are ABSENT when the field is added/removed."""

    path: str  # dot path, e.g. spec.dynamicConfig.configs[1].postgres.user
    before: Any
    after: Any

    @property
    def is_hidden(self) -> bool:
        return self.before is HIDDEN or self.after is HIDDEN


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectChange:
    """One object added, removed or changed; `fields` lists every leaf that differs."""

    kind: str
    name: str
    action: Action
    fields: list[FieldChange] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeSet:
    """Every ObjectChange between two states, ordered by kind (apply order), then name."""

    changes: list[ObjectChange] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def __iter__(self) -> Iterator[ObjectChange]:
        return iter(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def summary(self) -> dict[str, dict[str, int]]:
        """{kind: {"added": n, "changed": n, "removed": n}} for each kind that has a change."""
        counts: dict[str, dict[str, int]] = {}
        for change in self.changes:
            per_kind = counts.setdefault(change.kind, {a.value: 0 for a in Action})
            per_kind[change.action.value] += 1
        return counts


# --- comparing --------------------------------------------------------------------------------


class _Opaque:
    """A compared-but-never-shown leaf: equality by its token, a repr that shows nothing."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque) and hmac.compare_digest(self._token.encode(), other._token.encode())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return HIDDEN.value


_Key = tuple[str, str]
_View = tuple[dict[str, Any], dict[str, Any]]  # (compared first, compared only when the first is equal)


def diff_documents(before_docs: Sequence[Document], after_docs: Sequence[Document]) -> ChangeSet:
    """Compare two revisions by (kind, metadata.name), then field by field; Secrets masked."""
    return _diff_objects(_document_views(before_docs), _document_views(after_docs))


def diff_snapshots(live_wire: Mapping[str, Any], desired: Snapshot, *, fingerprint_key: bytes) -> ChangeSet:
    """Compare the proxy's `GET /v1/state` body with a desired Snapshot; Secrets by fingerprint.

    `fingerprint_key` must be the proxy's, or every Secret reads as changed.
    """
    # Through JSON, so both sides have the types the admin API sends (tuples -> lists, dates -> str).
    desired_wire = json.loads(json.dumps(to_wire(desired, fingerprint_key=fingerprint_key), default=str))
    return _diff_objects(_wire_views(live_wire), _wire_views(desired_wire))


def _diff_objects(before: Mapping[_Key, _View], after: Mapping[_Key, _View]) -> ChangeSet:
    changes: list[ObjectChange] = []
    for key in sorted(before.keys() | after.keys(), key=_object_order):
        kind, name = key
        if key not in before:
            changes.append(ObjectChange(kind=kind, name=name, action=Action.ADDED, fields=_leaves(after[key][0], "+")))
        elif key not in after:
            fields = _leaves(before[key][0], "-")
            changes.append(ObjectChange(kind=kind, name=name, action=Action.REMOVED, fields=fields))
        else:
            fields = []
            _compare(before[key][0], after[key][0], [], fields)
            if not fields:
                # The second view is derived from the first (e.g. routing built from the manifest):
                # compared only when the first agrees, to catch a state that was put by hand.
                _compare(before[key][1], after[key][1], [], fields)
            if fields:
                changes.append(ObjectChange(kind=kind, name=name, action=Action.CHANGED, fields=fields))
    return ChangeSet(changes=changes)


def _object_order(key: _Key) -> tuple[int, str, str]:
    kind, name = key
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), kind, name)


def _compare(before: Any, after: Any, path: list[str | int], out: list[FieldChange]) -> None:
    if _same(before, after):
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in after.items():
            if key in before:
                _compare(before[key], value, [*path, key], out)
            else:
                out.extend(_leaves(value, "+", [*path, key]))
        for key, value in before.items():
            if key not in after:
                out.extend(_leaves(value, "-", [*path, key]))
        return
    if isinstance(before, list) and isinstance(after, list) and not (_is_leaf(before) and _is_leaf(after)):
        _compare_lists(before, after, path, out)
        return
    out.append(FieldChange(path=format_path(path), before=_shown(before), after=_shown(after)))


def _compare_lists(before: list[Any], after: list[Any], path: list[str | int], out: list[FieldChange]) -> None:
    old, new = _names(before), _names(after)
    if old is None or new is None:  # unnamed items (e.g. routing rules): position is identity
        for i in range(max(len(before), len(after))):
            if i >= len(before):
                out.extend(_leaves(after[i], "+", [*path, i]))
            elif i >= len(after):
                out.extend(_leaves(before[i], "-", [*path, i]))
            else:
                _compare(before[i], after[i], [*path, i], out)
        return
    # Named items (configs): matched by name, so inserting one does not "change" all that follow.
    for name, i in new.items():
        if name in old:
            _compare(before[old[name]], after[i], [*path, i], out)
        else:
            out.extend(_leaves(after[i], "+", [*path, i]))
    for name, i in old.items():
        if name not in new:
            out.extend(_leaves(before[i], "-", [*path, i]))


def _names(items: list[Any]) -> dict[str, int] | None:
    """name -> index when every item is a mapping with a unique string `name`, else None."""
    names: dict[str, int] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name in names:
            return None
        names[name] = i
    return names


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps YAML's types apart (`true` is not `1`)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _is_leaf(value: Any) -> bool:
    """Scalars, empty containers and lists of scalars are shown whole (`groups: [a, b]`)."""
    if isinstance(value, dict):
        return not value
    if isinstance(value, list):
        return not any(isinstance(item, dict | list) for item in value)
    return True


def _leaves(value: Any, sign: str, path: Sequence[str | int] = ()) -> list[FieldChange]:
    """Every leaf of an added (`+`) or removed (`-`) value, as FieldChanges."""
    if not _is_leaf(value):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return [change for key, item in items for change in _leaves(item, sign, [*path, key])]
    shown = _shown(value)
    before, after = (ABSENT, shown) if sign == "+" else (shown, ABSENT)
    return [FieldChange(path=format_path(path), before=before, after=after)]


def _shown(value: Any) -> Any:
    """A copy safe to keep in a ChangeSet: every opaque leaf replaced by HIDDEN."""
    if isinstance(value, _Opaque):
        return HIDDEN
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


# --- views: what is compared, with secrets made opaque ---------------------------------------


def _document_views(documents: Iterable[Document]) -> dict[_Key, _View]:
    views: dict[_Key, _View] = {}
    for doc in documents:
        kind = "(encrypted kind)" if is_encrypted_string(doc.kind) else doc.kind or "(no kind)"
        name = doc.name if doc.name and not is_encrypted_string(doc.name) else ""
        key = (kind, name or f"(unnamed: {doc.file}, document {doc.index})")
        if key in views:  # an invalid revision may define one twice; keep both visible
            key = (kind, f"{key[1]} ({doc.file}, document {doc.index})")
        views[key] = (document_view(doc.body), {})
    return views


def document_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest as compared: no `kind` (it is in the key), Secret data and ciphertext opaque.

    Encrypted values compare by ciphertext and the sops MAC, so a re-encryption reads as a
    change: without keys nobody can tell whether the plaintext moved.
    """
    sops = body.get("sops") if isinstance(body.get("sops"), dict) else None
    mac = sops.get("mac") if sops is not None else None
    view: dict[str, Any] = {}
    for key, value in body.items():
        if key in ("kind", "sops"):
            continue
        view[key] = _opaque_all(value, f"{mac}") if key in _SECRET_KEYS else _opaque_ciphertext(value)
    if sops is not None:
        view["sops"] = {"recipients": _recipients(sops)}  # public keys only: who can decrypt
    return view


def _opaque_all(value: Any, mac: str) -> Any:
    if isinstance(value, dict):
        return {k: _opaque_all(v, mac) for k, v in value.items()}
    if is_encrypted_string(value):
        return _Opaque(f"enc:{value}\0{mac}")
    return _Opaque(f"plain:{type(value).__name__}:{value}")


def _opaque_ciphertext(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _opaque_ciphertext(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_opaque_ciphertext(v) for v in value]
    return _Opaque(f"enc:{value}") if is_encrypted_string(value) else value


def _recipients(sops: Mapping[str, Any]) -> list[str]:
    try:
        metadata = parse_metadata(sops)
    except SopsFormatError:
        return ["(unreadable sops metadata)"]
    return sorted({f"{slot.kind}:{slot.recipient}" for group in metadata.key_groups for slot in group})


_WIRE_SECTIONS = (("secrets", "Secret"), ("users", "User"), ("groups", "Group"), ("services", "Service"),
                  ("credentials", "Credential"))  # a Credential's wire form holds a fingerprint, never the secret


def _wire_views(wire: Mapping[str, Any]) -> dict[_Key, _View]:
    """Admin-API state as views: the manifest first, the routing derived from it second."""
    views: dict[_Key, _View] = {}
    for section, kind in _WIRE_SECTIONS:
        entries = wire.get(section)
        for name, entry in (entries or {}).items() if isinstance(entries, Mapping) else ():
            if not isinstance(entry, Mapping):
                continue
            if kind == "Secret":
                views[(kind, name)] = ({"data": {"value": _Opaque(f"fp:{entry.get('fingerprint')}")}}, {})
                continue
            manifest = entry.get("manifest")
            derived = {k: v for k, v in entry.items() if k != "manifest"}
            if "secretFingerprint" in derived:  # a Credential's: say that the secret changed, never show it
                derived["secretFingerprint"] = _Opaque(f"fp:{derived['secretFingerprint']}")
            views[(kind, name)] = (dict(manifest) if isinstance(manifest, Mapping) else {}, derived)
    return views
