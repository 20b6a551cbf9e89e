"""What would change: compare two revisions' documents (or the live state with a desired Snapshot).

Pure: values in, a ChangeSet out, rendered as text or as a Markdown PR comment. A Secret's value,
a fingerprint and any sops ciphertext are compared in here and leave only as "(value hidden)".
"""

from __future__ import annotations

import hmac
import html
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import Enum, StrEnum
from typing import Any

from proxy.snapshot import Snapshot, to_wire
from reconciler.errors import format_path
from reconciler.load import Document
from reconciler.sops.cipher import is_encrypted_string
from reconciler.sops.errors import SopsFormatError
from reconciler.sops.metadata import parse_metadata

# Apply order (dependencies first), as Flux and Argo order kinds; other kinds follow alphabetically.
KIND_ORDER = ("Secret", "User", "Group", "Service", "Policy")
# GitHub refuses comments over 65,536 characters; leave room for a caller's header and footer.
MAX_MARKDOWN_CHARS = 60_000
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


# --- rendering --------------------------------------------------------------------------------

_SIGNS = {Action.ADDED: "+", Action.REMOVED: "-", Action.CHANGED: "~"}


def describe_counts(changes: ChangeSet) -> str:
    """`2 changed, 1 added (Secret: 1 changed; Service: 1 changed; Group: 1 added)`."""
    if changes.is_empty:
        return "no changes"
    totals = {a: sum(1 for c in changes if c.action is a) for a in (Action.CHANGED, Action.ADDED, Action.REMOVED)}
    overall = ", ".join(f"{n} {a.value}" for a, n in totals.items() if n)
    per_kind = "; ".join(
        f"{kind}: " + ", ".join(f"{n} {action}" for action, n in counts.items() if n)
        for kind, counts in changes.summary().items()
    )
    return f"{overall} ({per_kind})"


def render_text(changes: ChangeSet) -> str:
    """Colour-free `+`/`-`/`~` lines, one object then its fields, like `flux diff`."""
    lines: list[str] = []
    for change in changes:
        lines.append(f"{_SIGNS[change.action]} {change.kind} {change.name} ({change.action.value})")
        lines.extend(f"    {_field_line(f)}" for f in change.fields)
    if lines:
        lines.append("")
    lines.append(describe_counts(changes))
    return "\n".join(lines) + "\n"


def _field_line(f: FieldChange) -> str:
    if f.before is ABSENT:
        return f"+ {f.path}: {_inline(f.after)}"
    if f.after is ABSENT:
        return f"- {f.path}: {_inline(f.before)}"
    if f.is_hidden:
        return f"~ {f.path}: (changed, value hidden)"
    return f"~ {f.path}: {_inline(f.before)} -> {_inline(f.after)}"


def render_markdown(changes: ChangeSet, *, title: str = "pgwarden diff", subtitle: str = "") -> str:
    """A PR comment: heading with counts, a table per kind, each object's fields in <details> as YAML.

    Stays under MAX_MARKDOWN_CHARS: table rows first, then details, as many as fit.
    """
    heading = f"### {title}: {describe_counts(changes)}"
    head = [heading, subtitle] if subtitle else [heading]
    if changes.is_empty:
        return "\n\n".join([*head, "No object would be added, changed or removed."]) + "\n"
    footer = "_Secret values and sops ciphertext are never shown: a changed Secret reads `(changed, value hidden)`._"
    # Room for the joins, the footer and the "left out" note, whatever ends up included.
    budget = [MAX_MARKDOWN_CHARS - sum(len(p) + 2 for p in head) - len(footer) - 200]
    kinds = {kind: [c for c in changes if c.kind == kind] for kind in changes.summary()}
    tables = {kind: _table(kind, of_kind, budget) for kind, of_kind in kinds.items()}
    left_out = 0
    parts = list(head)
    for kind, of_kind in kinds.items():
        parts.append(tables[kind])
        for change in of_kind:
            details = _details(change)
            if len(details) + 2 > budget[0]:
                left_out += 1
                continue
            budget[0] -= len(details) + 2
            parts.append(details)
    if left_out:
        parts.append(f"_{left_out} object(s) not detailed to stay under GitHub's comment size limit; "
                     "run `pgwarden diff` locally for everything._")
    parts.append(footer)
    return "\n\n".join(parts) + "\n"


def _table(kind: str, changes: list[ObjectChange], budget: list[int]) -> str:
    lines = [f"#### {kind}", "", "| | Name | Fields |", "|---|---|---|"]
    budget[0] -= sum(len(line) + 1 for line in lines) + 2
    for i, c in enumerate(changes):
        row = f"| {_SIGNS[c.action]} {c.action.value} | {_md_code(c.name)} | {len(c.fields)} |"
        if len(row) + 1 > budget[0] - 100:  # keep room for the "more" row
            lines.append(f"| | _and {len(changes) - i} more_ | |")
            break
        budget[0] -= len(row) + 1
        lines.append(row)
    return "\n".join(lines)


def _details(change: ObjectChange) -> str:
    count = len(change.fields)
    summary = (f"{_SIGNS[change.action]} {html.escape(change.kind)} <code>{html.escape(change.name)}</code>: "
               f"{change.action.value}, {count} field{'s' if count != 1 else ''}")
    body = "\n".join(_yaml_line(f, change.action) for f in change.fields) or "# no fields"
    fence = "`" * max(3, _longest_backtick_run(body) + 1)
    return f"<details><summary>{summary}</summary>\n\n{fence}yaml\n{body}\n{fence}\n\n</details>"


def _yaml_line(f: FieldChange, action: Action) -> str:
    key = _yaml_str(f.path, is_flow=False)
    if action is not Action.CHANGED:  # every field of an added/removed object: just its value
        return f"{key}: {_inline(f.after if action is Action.ADDED else f.before)}"
    if f.before is ABSENT:
        return f"{key}: {{added: {_inline(f.after)}}}"
    if f.after is ABSENT:
        return f"{key}: {{removed: {_inline(f.before)}}}"
    if f.is_hidden:
        return f"{key}: (changed, value hidden)"
    return f"{key}: {{before: {_inline(f.before)}, after: {_inline(f.after)}}}"


_PLAIN_KEY = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@+\-\[\]' ]*")  # a block key: brackets are fine
_PLAIN_FLOW = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@+\-' ]*")  # inside {...}/[...]: no brackets
_RESERVED = re.compile(r"(?i)(true|false|yes|no|on|off|null|y|n)")


def _yaml_str(text: str, *, is_flow: bool = True) -> str:
    """A YAML scalar for `text`: plain when unambiguous, else JSON-quoted (JSON strings are YAML)."""
    plain = _PLAIN_FLOW if is_flow else _PLAIN_KEY
    if plain.fullmatch(text) and not _RESERVED.fullmatch(text) and not text.endswith(" "):
        return text
    return json.dumps(text, ensure_ascii=False)


def _inline(value: Any) -> str:
    """One-line YAML flow style; HIDDEN as `(value hidden)`."""
    if value is HIDDEN:
        return str(HIDDEN.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml_str(str(k))}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return _yaml_str(str(value))


def _md_code(text: str) -> str:
    ticks = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    escaped = text.replace("|", "\\|")  # GFM: a pipe inside a table cell, even in code, needs a backslash
    return f"{ticks}{pad}{escaped}{pad}{ticks}"


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)
