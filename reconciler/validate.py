"""Check Documents before building: JSON Schema per kind, then references, names and CEL.

Every check returns all its problems; `validate_all` raises them together as one InvalidManifests.
The schema check lives in json_schema.py, the reference check in references.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxy.guardrails import parse_duration_ms, schema_name_problem
from proxy.policy.cel import check_cost_with, compile_expression
from proxy.snapshot import AuthMechanism, SSLMode
from reconciler import build
from reconciler.body_lookup import as_list as _list  # local short names: the checks below read like the manifest
from reconciler.body_lookup import as_str as _str
from reconciler.body_lookup import get as _get
from reconciler.body_lookup import service_configs as _service_configs
from reconciler.build import merged_configs
from reconciler.conditions import condition_problems
from reconciler.errors import (
    ConfigError,
    DanglingReference,
    DuplicateName,
    InvalidManifests,
    SchemaViolation,
    format_path,
)
from reconciler.json_schema import SchemaVerdicts, schema_problems, schema_valid
from reconciler.load import Document
from reconciler.references import references


def validate_all(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None) -> None:
    """Run every check; raise one InvalidManifests with everything found.

    Pass the same `verdicts` each time to reuse the schema verdicts of unchanged bodies (the loop does).
    """
    v = verdicts or SchemaVerdicts()
    problems = [*against_schemas(documents, verdicts=v), *references(documents, verdicts=v), *unique_names(documents),
                *expressions(documents), *policies(documents), *upstream_login_safety(documents, verdicts=v),
                *guard_rails(documents, verdicts=v)]
    if problems:
        raise InvalidManifests(problems)


def against_schemas(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None
                    ) -> list[ConfigError]:
    """Each document against the JSON Schema in schemas/ whose `kind` const matches its kind."""
    v = verdicts or SchemaVerdicts()
    problems = [p for doc in documents for p in schema_problems(doc, v)]
    return problems


def unique_names(documents: Sequence[Document]) -> list[ConfigError]:
    """No two documents of one kind share metadata.name."""
    first: dict[tuple[str, str], Document] = {}
    problems: list[ConfigError] = []
    for doc in documents:
        if not doc.kind or not doc.name:
            continue
        earlier = first.setdefault((doc.kind, doc.name), doc)
        if earlier is not doc:
            problems.append(
                DuplicateName(
                    f"{doc.kind} {doc.name!r} is already defined in {earlier.file}, document {earlier.index}",
                    source=doc.source("metadata.name"),
                )
            )
    return problems


def expressions(documents: Sequence[Document]) -> list[ConfigError]:
    """Every CEL expression compiles, and conditions nest at most 16 deep."""
    problems: list[ConfigError] = []
    for doc in documents:
        if doc.kind == "IdentityProvider":  # CEL over ctx.claims, evaluated at every login
            for i, rule in enumerate(_list(_get(doc.body, "spec", "aalRules"))):
                where: list[str | int] = ["spec", "aalRules", i, "condition"]
                problems.extend(_condition_problems(doc, _get(rule, "condition"), where))
        if doc.kind != "Service":
            continue
        for i, rule in enumerate(_list(_get(doc.body, "spec", "dynamicConfig", "rules"))):
            path: list[str | int] = ["spec", "dynamicConfig", "rules", i, "condition"]
            problems.extend(_condition_problems(doc, _get(rule, "condition"), path))
    return problems


def policies(documents: Sequence[Document]) -> list[ConfigError]:
    """Policy rules (in Policy documents and inlinePolicies): CEL compiles, nesting is bounded, rule names
    are unique per Policy; every `spec.authorization.policies` entry names a Policy."""
    known = {doc.name for doc in documents if doc.kind == "Policy" and doc.name}
    problems: list[ConfigError] = []
    for doc in documents:
        if doc.kind == "Policy":
            problems.extend(_policy_spec_problems(doc, _get(doc.body, "spec"), ["spec"]))
        elif doc.kind in ("Service", "Group", "User"):
            authorization = _get(doc.body, "spec", "authorization")
            for i, name in enumerate(_list(_get(authorization, "policies"))):
                if isinstance(name, str) and name not in known:
                    problems.append(DanglingReference.to("Policy", name, known,
                                                         source=doc.source(f"spec.authorization.policies[{i}]")))
            for i, inline in enumerate(_list(_get(authorization, "inlinePolicies"))):
                path: list[str | int] = ["spec", "authorization", "inlinePolicies", i, "spec"]
                problems.extend(_policy_spec_problems(doc, _get(inline, "spec"), path))
    return problems


def _policy_spec_problems(doc: Document, spec: Any, path: list[str | int]) -> list[ConfigError]:
    problems: list[ConfigError] = []
    seen: set[str] = set()
    for i, rule in enumerate(_list(_get(spec, "rules"))):
        name = _str(_get(rule, "name"))
        if name is not None and name in seen:
            where = doc.source(format_path([*path, "rules", i, "name"]))
            problems.append(DuplicateName(f"rule {name!r} is defined twice in this Policy", source=where))
        seen.add(name or "")
        problems.extend(_condition_problems(doc, _get(rule, "condition"), [*path, "rules", i, "condition"],
                                            attrs=_get(spec, "attrs")))
    return problems


def guard_rails(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None
                ) -> list[ConfigError]:
    """Each config's guardRails, with its parents merged in: durations in range, schema names PostgreSQL keeps
    whole, and authorization mode ALL wherever a rail locks a setting.

    Why mode ALL is required rather than implied: PostgreSQL has no locked setting, so only the per-query
    gate keeps a client's SET / set_config() from undoing a rail; a manifest must show that gate is on.
    """
    problems: list[ConfigError] = []
    for doc in schema_valid(documents, verdicts or SchemaVerdicts()):
        if doc.kind != "Service":
            continue
        spec = _get(doc.body, "spec")
        try:
            merged = merged_configs(spec)
        except (KeyError, ValueError):
            continue  # a dangling or looping parent: `references` reports it
        for name, config, path in _service_configs(spec):
            problems.extend(_guard_rail_problems(doc, path, config, merged.get(name, {})))
    return problems


def _guard_rail_problems(doc: Document, path: str, own: Mapping[str, Any], merged: Mapping[str, Any]
                         ) -> list[ConfigError]:
    problems: list[ConfigError] = []
    own_rails = _get(own, "postgres", "guardRails")
    where = f"{path}.postgres.guardRails"
    for key, value in (own_rails or {}).items():
        if key in ("statementTimeout", "idleInTransactionTimeout", "lockTimeout"):
            try:
                parse_duration_ms(value)
            except ValueError as exc:
                problems.append(SchemaViolation(str(exc), source=doc.source(f"{where}.{key}")))
        elif key == "searchPath":
            for i, schema in enumerate(value):
                problem = schema_name_problem(schema)
                if problem is not None:
                    problems.append(SchemaViolation(problem, source=doc.source(f"{where}.searchPath[{i}]")))
    rails = _get(merged, "postgres", "guardRails") or {}
    locks = rails.get("readOnly") is True or any(
        k in rails for k in ("statementTimeout", "idleInTransactionTimeout", "lockTimeout", "searchPath"))
    mode = _get(merged, "postgres", "authorization", "mode") or "NONE"
    if locks and mode != "ALL":
        inherited = "" if own_rails else " (inherited from its parent config)"
        problems.append(SchemaViolation(
            f"guard rails{inherited} need postgres.authorization.mode: ALL: only the per-query gate keeps clients "
            "from changing a locked setting with SET or set_config()",
            source=doc.source(where if own_rails else f"{path}.postgres.authorization.mode")))
    return problems


_VERIFYING_SSL_MODES = (SSLMode.VERIFY_CA.name, SSLMode.VERIFY_FULL.name)


def upstream_login_safety(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None
                          ) -> list[ConfigError]:
    """A config names MD5, PASSWORD or TRUST in postgres.auth.mechanisms only with sslMode VERIFY_CA or
    VERIFY_FULL (after merging its parent chain): without a verified server, whoever answers at the
    upstream address would get the password, a replayable hash, or the session."""
    problems: list[ConfigError] = []
    for doc in schema_valid(documents, verdicts or SchemaVerdicts()):
        if doc.kind != "Service":
            continue
        try:
            merged = build.merged_configs(doc.body["spec"])
        except (KeyError, ValueError):
            continue  # a dangling parent or a loop: `references` reports it
        for name, own, path in _service_configs(doc.body["spec"]):
            postgres = merged.get(name, {}).get("postgres", {})
            mechanisms = [AuthMechanism(m) for m in _list(_get(postgres, "auth", "mechanisms"))]
            unsafe = [m.value for m in mechanisms if m.needs_verified_tls]
            ssl_mode = _str(postgres.get("sslMode")) or SSLMode.PREFER.name
            if not unsafe or ssl_mode in _VERIFYING_SSL_MODES:
                continue
            if _get(own, "postgres", "auth", "mechanisms") is not None:
                where = f"{path}.postgres.auth.mechanisms"
            elif _get(own, "postgres", "sslMode") is not None:
                where = f"{path}.postgres.sslMode"
            else:
                where = path
            problems.append(SchemaViolation(
                f"postgres.auth.mechanisms names {', '.join(unsafe)}, which prove nothing about the server and "
                f"would give whoever answers the password, a replayable hash or the session; they need sslMode "
                f"VERIFY_CA or VERIFY_FULL (config {name!r} has {ssl_mode})",
                source=doc.source(where),
            ))
    return problems


# --- CEL --------------------------------------------------------------------------------------


def _condition_problems(doc: Document, condition: Any, path: list[str | int], *, attrs: Any = None
                        ) -> list[ConfigError]:
    """CEL problems under `condition`; a Policy's `attrs` lets the cost check count its lists' real sizes."""

    def check(expression: str) -> None:
        compile_expression(expression)
        if isinstance(attrs, dict) and "attrs" in expression:
            check_cost_with(expression, attrs=attrs)

    return condition_problems(doc, condition, path, check=check)
