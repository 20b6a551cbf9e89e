"""CEL conditions as manifests write them (match, not, all/any/none of): nesting depth and compile errors, placed.

Shared by `validate` (routing rules, Policies, aalRules) and `workloads` (claims mappings); each passes the
compiler for its variables, since a claims mapping sees `claims` where a routing rule sees `ctx`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.policy.cel import CelCompileError
from reconciler.errors import ConfigError, InvalidExpression, SchemaViolation, format_path
from reconciler.load import Document

MAX_CONDITION_DEPTH = 16  # Octelium's limit (admin/policy.go)


def condition_problems(doc: Document, condition: Any, path: list[str | int], *,
                       check: Callable[[str], object]) -> list[ConfigError]:
    """Every problem under `condition`; `check(expression)` raises CelCompileError for one that is wrong."""
    if not isinstance(condition, dict):
        return []  # the schema reports it
    if path.count("of") >= MAX_CONDITION_DEPTH:
        where = doc.source(format_path(path))
        return [SchemaViolation(f"conditions nest more than {MAX_CONDITION_DEPTH} levels", source=where)]
    problems: list[ConfigError] = []
    for key in ("match", "not"):
        expression = condition.get(key)
        if not isinstance(expression, str):
            continue
        try:
            check(expression)
        except CelCompileError as exc:
            problems.append(InvalidExpression(f"invalid CEL: {exc}", source=doc.source(format_path([*path, key]))))
    for key in ("all", "any", "none"):
        group = condition.get(key)
        children = group.get("of") if isinstance(group, dict) else None
        for i, child in enumerate(children if isinstance(children, list) else ()):
            problems.extend(condition_problems(doc, child, [*path, key, "of", i], check=check))
    return problems
