"""A ChangeSet as text (`+`/`-`/`~` lines, like `flux diff`) or as a Markdown PR comment under GitHub's size
limit. Hidden values stay hidden: a changed Secret reads `(changed, value hidden)`."""

from __future__ import annotations

import html
import json
import re
from datetime import date
from typing import Any

from reconciler.diff import ABSENT, HIDDEN, Action, ChangeSet, FieldChange, ObjectChange

# GitHub refuses comments over 65,536 characters; leave room for a caller's header and footer.
MAX_MARKDOWN_CHARS = 60_000

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
