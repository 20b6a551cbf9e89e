"""The access matrix as text, JSON and Markdown, and the access lines of a diff between two matrices.

Only names, rules and decisions appear here: the matrix is built from a keyless snapshot, so no secret
value ever reaches these renderers.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from proxy.errors import PgwardenError
from proxy.snapshot import Snapshot
from reconciler.access import (
    CLASS_NAMES,
    STATEMENT_CLASSES,
    AccessMatrix,
    Cell,
    GrantNote,
    access_matrix,
    keyless_snapshot,
)
from reconciler.errors import ConfigError, ManifestErrors
from reconciler.load import Document
from reconciler.verdicts import ALLOW, REFUSED, Verdict

# Pairs a diff decides at most (about a millisecond each, per side): a Group of thousands across hundreds of
# Services would otherwise hold a pull request's CI for minutes to print more lines than anyone reads.
MAX_DIFF_PAIRS = 10_000
CLASS_TITLES = {"read": "read", "write": "write", "ddl": "DDL", "drop": "DROP/TRUNCATE", "copy-from": "COPY FROM",
                "copy-to": "COPY TO", "function-call": "function call"}


def connect_words(verdict: Verdict) -> str:
    """`connects as full_access (config full-access, database my_db; rule 1 ...)`, or the refusal."""
    if verdict.condition:
        return f"connect CONDITIONAL: {verdict.condition}"
    o = verdict.outcome
    if o.verdict == REFUSED:
        return f"cannot connect ({o.by})"
    return f"connects as {o.role} (config {o.config}, database {o.database or '(as requested)'}; {o.by})"


def is_reachable(cell: Cell | None) -> bool:
    """Whether the user can connect to the service in some variant."""
    return cell is not None and (cell.connect.decision != REFUSED)


# --- the matrix ----------------------------------------------------------------------------------


def render_text(matrix: AccessMatrix) -> str:
    lines = []
    for cell in matrix.cells:
        lines.append(f"{cell.user} · {cell.service} · {connect_words(cell.connect)}")
        lines += [f"    {'grant':<14} {note.words()}" for note in cell.grants]
        if cell.connect.decision == REFUSED:
            continue
        for name in CLASS_NAMES:
            lines.append(f"    {CLASS_TITLES[name]:<14} {cell.statements[name].summary()}")
    lines.append(f"\n{len(matrix.cells)} user × service pairs; clock conditions sampled hourly over a week in "
                 f"{matrix.zone}; sessions sampled: AAL1 token, AAL2 passkey, "
                 "AAL2-totp (a second factor)")
    return "\n".join(lines) + "\n"


def render_markdown(matrix: AccessMatrix) -> str:
    header = "| user | service | connects as | " + " | ".join(CLASS_TITLES[n] for n in CLASS_NAMES) + " |"
    lines = ["### Effective access", "", header, "|" + "---|" * (3 + len(CLASS_NAMES))]
    notes: list[str] = []

    def mark(verdict: Verdict) -> str:
        if not verdict.condition:
            return verdict.outcome.verdict
        notes.append(verdict.condition)
        return f"CONDITIONAL [{len(notes)}]"

    for cell in matrix.cells:
        if cell.connect.decision == REFUSED:
            row = [cell.user, cell.service, "cannot connect"] + ["—"] * len(CLASS_NAMES)
        else:
            o = cell.connect.outcome
            row = [cell.user, cell.service, mark(cell.connect) if cell.connect.condition else f"`{o.role}`"]
            row += [mark(cell.statements[n]) for n in CLASS_NAMES]
        lines.append("| " + " | ".join(_md(c) for c in row) + " |")
    if notes:
        lines += ["", *[f"{i}. {_md(n)}" for i, n in enumerate(notes, 1)]]
    windowed = [f"{cell.user} · {cell.service}: {note.words()}" for cell in matrix.cells for note in cell.grants]
    if windowed:
        lines += ["", "Grants with a validity window (decided as they stand now):", "",
                  *[f"- {_md(w)}" for w in windowed]]
    lines += ["", f"Clock conditions are sampled hourly over a week in {matrix.zone}; sessions as an AAL1 token, "
              "an AAL2 passkey login and an AAL2-totp login (a second factor)."]
    return "\n".join(lines) + "\n"


def to_json(matrix: AccessMatrix) -> dict[str, Any]:
    def verdict(v: Verdict) -> dict[str, Any]:
        return {"decision": v.decision, "by": v.outcome.by, **({"condition": v.condition} if v.condition else {})}

    cells = []
    for cell in matrix.cells:
        o = cell.connect.outcome
        connect = verdict(cell.connect) | ({"config": o.config, "role": o.role, "database": o.database}
                                           if o.config else {})
        statements = {name: verdict(cell.statements[name]) | {"statement": texts[0] or "(FunctionCall message)"}
                      for name, texts in STATEMENT_CLASSES}
        cells.append({"user": cell.user, "service": cell.service, "connect": connect, "statements": statements,
                      **({"grants": [{"grant": n.label, "window": n.window, "state": n.state} for n in cell.grants]}
                         if cell.grants else {})})
    return {"zone": matrix.zone, "cells": cells}


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the access diff -----------------------------------------------------------------------------


def access_changes(before: AccessMatrix, after: AccessMatrix) -> list[str]:
    """One line per user × service whose access changed, gains and losses included, in name order."""
    keys = sorted({(c.user, c.service) for c in (*before.cells, *after.cells)})
    lines = []
    for user, service in keys:
        old, new = before.cell(user, service), after.cell(user, service)
        head = f"{user} · {service} · "
        if not is_reachable(old) and not is_reachable(new):
            continue
        if not is_reachable(old):
            assert new is not None
            lines.append(head + f"gains access: {connect_words(new.connect)}" + _denied_classes(new))
            continue
        if not is_reachable(new):
            assert old is not None
            why = f" ({new.connect.outcome.by})" if new is not None else " (no longer exists)"
            lines.append(head + f"loses access{why}")
            continue
        assert old is not None and new is not None
        parts = []
        if old.connect != new.connect:
            parts.append(_connect_change(old.connect, new.connect))
        for name in CLASS_NAMES:
            a, b = old.statements[name], new.statements[name]
            if a != b:
                parts.append(f"{CLASS_TITLES[name]}: {_short(a)} → {_short(b)}")
        if old.grants != new.grants:
            parts.append(_grants_change(old.grants, new.grants))
        if parts:
            lines.append(head + " · ".join(parts))
    return lines


def _connect_change(a: Verdict, b: Verdict) -> str:
    if a.condition or b.condition or a.outcome.role == b.outcome.role:
        return f"{connect_words(a)} → {connect_words(b)}"
    return f"connects as {a.outcome.role} → {b.outcome.role} ({b.outcome.by})"


def _grants_change(old: tuple[GrantNote, ...], new: tuple[GrantNote, ...]) -> str:
    """`grant group "oncall" of user "bob": until A (active) → until B (active)`, per grant that changed."""
    a, b = {n.label: n for n in old}, {n.label: n for n in new}

    def shown(note: GrantNote | None) -> str:
        return f"{note.window} ({note.state})" if note else "none"

    return " · ".join(f"grant {label}: {shown(a.get(label))} → {shown(b.get(label))}"
                      for label in sorted(a.keys() | b.keys()) if a.get(label) != b.get(label))


def _short(v: Verdict) -> str:
    if v.condition:
        return f"CONDITIONAL ({v.condition})"
    return f"{v.outcome.verdict} ({v.outcome.by})"


def _denied_classes(cell: Cell) -> str:
    limited = [f"{CLASS_TITLES[n]}: {_short(v)}" for n, v in cell.statements.items() if v.decision != ALLOW]
    return "".join(f" · {p}" for p in limited)


def render_access_text(lines: list[str]) -> str:
    """The Access section of `pgwarden diff` (text)."""
    if not lines:
        return ""  # nobody's access changes: the object changes say it all
    return "Access\n" + "".join(f"  {line}\n" for line in lines) + "\n"


def render_access_markdown(lines: list[str]) -> str:
    """The Access section of `pgwarden diff --output markdown`."""
    if not lines:
        return ""
    return "### Access\n\n" + "".join(f"- {_md(line)}\n" for line in lines) + "\n"


def diff_access(before_docs: Sequence[Document], after_docs: Sequence[Document]) -> list[str]:
    """The access lines between two revisions' documents (the "before" side may be empty or unbuildable).

    Only the pairs whose inputs changed are decided (a changed User, or one whose Group or attached Policy
    changed, against every Service; every User against a changed Service), on both sides alike: a one-line
    change to a repository of thousands of Users costs one row and one column of the matrix, not all of it.
    Both sides are sampled in the same week, so a clock-dependent rule compares like with like.
    """
    now = datetime.datetime.now(datetime.UTC)  # both sides judge grant windows at the same instant
    reference = now.date()
    after = keyless_snapshot(after_docs)
    try:
        before = keyless_snapshot(before_docs)
    except (ConfigError, ManifestErrors, PgwardenError) as exc:
        # The old revision need not have been valid; its access is then unknown, not empty.
        return [f"(access before the change is unknown: the old revision does not build: {type(exc).__name__})"]
    users, services = changed_inputs(before, after)
    all_users = before.users.keys() | after.users.keys()
    all_services = before.services.keys() | after.services.keys()
    pairs = sorted({(u, s) for u in users for s in all_services} | {(u, s) for u in all_users for s in services})
    lines = access_changes(access_matrix(before, pairs=set(pairs[:MAX_DIFF_PAIRS]), reference=reference, at=now),
                           access_matrix(after, pairs=set(pairs[:MAX_DIFF_PAIRS]), reference=reference, at=now))
    if len(pairs) > MAX_DIFF_PAIRS:
        lines.append(f"(access of {len(pairs) - MAX_DIFF_PAIRS} more user × service pairs, after "
                     f"{' · '.join(pairs[MAX_DIFF_PAIRS - 1])}, not decided: over the diff's limit of "
                     f"{MAX_DIFF_PAIRS:,}; `pgwarden access --user U` decides any of them)")
    return lines


def changed_inputs(before: Snapshot, after: Snapshot) -> tuple[set[str], set[str]]:
    """The Users and Services whose access may differ: what a cell's decision reads, compared object by object."""
    def changed(kind: str) -> set[str]:
        old, new = getattr(before, kind), getattr(after, kind)
        return {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}

    policies = changed("policies")

    def uses_changed_policy(owner: Any) -> bool:
        return owner is not None and any(p in policies for p in owner.authorization.policies)

    groups = changed("groups") | {g for s in (before, after) for g, group in s.groups.items()
                                  if uses_changed_policy(group)}
    services = changed("services") | {n for s in (before, after) for n, svc in s.services.items()
                                      if uses_changed_policy(svc)}
    users = changed("users") | {n for s in (before, after) for n, user in s.users.items()
                                if uses_changed_policy(user) or groups.intersection(user.groups)}
    return users, services
