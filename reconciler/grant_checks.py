"""Checks of grant windows (`validFrom`/`validUntil` on memberships and Policy rules), placed at file and path.

`window_problems` rejects a revision (an unreadable instant, an empty window, a Group listed twice);
`expired_grants` only warns: a grant already past its window does nothing, but someone meant to remove it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from typing import Any

from proxy.snapshot import format_instant, parse_instant
from reconciler.errors import ConfigError, DuplicateName, SchemaViolation, format_path
from reconciler.load import Document

BOUNDS = ("validFrom", "validUntil")


def windows(doc: Document) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field path, mapping) of every place in `doc` that may carry validFrom/validUntil."""
    spec = doc.body.get("spec")
    if not isinstance(spec, dict):
        return
    if doc.kind == "User":
        for i, entry in enumerate(spec.get("groups") or []):
            if isinstance(entry, dict):
                yield format_path(["spec", "groups", i]), entry
    if doc.kind == "Policy":
        yield from _rule_windows(spec, ["spec"])
    if doc.kind in ("Service", "Group", "User") and isinstance(spec.get("authorization"), dict):
        for i, inline in enumerate(spec["authorization"].get("inlinePolicies") or []):
            if isinstance(inline, dict) and isinstance(inline.get("spec"), dict):
                yield from _rule_windows(inline["spec"], ["spec", "authorization", "inlinePolicies", i, "spec"])


def _rule_windows(spec: dict[str, Any], path: list[str | int]) -> Iterator[tuple[str, dict[str, Any]]]:
    rules = spec.get("rules")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, dict):
            yield format_path([*path, "rules", i]), rule


def window_problems(documents: Sequence[Document]) -> list[ConfigError]:
    """Every validFrom/validUntil is an RFC 3339 instant with a zone and validFrom < validUntil; a User lists
    each Group once (as a name or as a windowed entry, not both)."""
    problems: list[ConfigError] = []
    for doc in documents:
        for path, mapping in windows(doc):
            bounds = {key: parse_instant(mapping[key]) for key in BOUNDS if key in mapping}
            for key, value in bounds.items():
                if value is None:
                    problems.append(SchemaViolation(
                        "must be an RFC 3339 timestamp with a time zone, e.g. 2026-12-08T18:00:00Z",
                        source=doc.source(f"{path}.{key}")))
            start, end = bounds.get("validFrom"), bounds.get("validUntil")
            if start is not None and end is not None and start >= end:
                problems.append(SchemaViolation("validUntil must be later than validFrom: the window is empty",
                                                source=doc.source(f"{path}.validUntil")))
        if doc.kind == "User":
            problems.extend(_duplicate_groups(doc))
    return problems


def _duplicate_groups(doc: Document) -> list[ConfigError]:
    spec = doc.body.get("spec")
    entries = spec.get("groups") if isinstance(spec, dict) else None
    seen: set[str] = set()
    problems: list[ConfigError] = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        name = entry.get("name") if isinstance(entry, dict) else entry
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(DuplicateName(f"group {name!r} is listed twice: keep one entry (with its window, if any)",
                                          source=doc.source(f"spec.groups[{i}]")))
        seen.add(name)
    return problems


def expired_grants(documents: Sequence[Document], at: datetime.datetime) -> list[ConfigError]:
    """A warning for each grant whose validUntil is already past at `at`: it grants nothing any more."""
    found: list[ConfigError] = []
    for doc in documents:
        for path, mapping in windows(doc):
            until = parse_instant(mapping.get("validUntil")) if "validUntil" in mapping else None
            if until is not None and until <= at:
                what = f"group {mapping.get('name')!r}" if doc.kind == "User" and path.startswith("spec.groups") \
                    else f"rule {mapping.get('name')!r}"
                found.append(ConfigError(
                    f"{what} expired at {format_instant(until)}: it grants nothing any more",
                    source=doc.source(f"{path}.validUntil"), hint="remove expired grants in a pull request"))
    return found
