"""Check Documents before building: JSON Schema per kind, then references, names and CEL.

Every check returns all its problems; `validate_all` raises them together as one InvalidManifests.
Messages are written here, never copied from jsonschema, so no field value is ever echoed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from proxy.guardrails import parse_duration_ms, schema_name_problem
from proxy.policy.cel import check_cost_with, compile_expression
from proxy.snapshot import AuthMechanism, SSLMode, Upstream
from reconciler import build, grant_checks, schema_check, workloads
from reconciler.build import merged_configs
from reconciler.conditions import condition_problems
from reconciler.errors import (
    ConfigError,
    DanglingReference,
    DuplicateName,
    InvalidManifests,
    SchemaViolation,
    format_path,
    suggestion,
)
from reconciler.load import Document

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"


def validate_all(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None) -> None:
    """Run every check; raise one InvalidManifests with everything found.

    Pass the same `verdicts` each time to reuse the schema verdicts of unchanged bodies (the loop does).
    """
    v = verdicts or SchemaVerdicts()
    problems = [*against_schemas(documents, verdicts=v), *references(documents, verdicts=v), *unique_names(documents),
                *expressions(documents), *policies(documents), *upstream_login_safety(documents, verdicts=v),
                *guard_rails(documents, verdicts=v), *grant_checks.window_problems(documents)]
    if problems:
        raise InvalidManifests(problems)


def against_schemas(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None
                    ) -> list[ConfigError]:
    """Each document against the JSON Schema in schemas/ whose `kind` const matches its kind."""
    v = verdicts or SchemaVerdicts()
    problems = [p for doc in documents for p in _schema_problems(doc, v)]
    return problems


def references(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None
               ) -> list[ConfigError]:
    """Every fromSecret, configName, parent and group names something that exists; no parent loops.

    Documents that failed their schema are checked too, as far as their shape allows.
    """
    names = _names_by_kind(documents)
    valid = {id(doc) for doc in _schema_valid(documents, verdicts or SchemaVerdicts())}
    claimed: dict[tuple[str, str], str] = {}  # (identityProvider, identifier) -> User
    problems: list[ConfigError] = []
    for doc in documents:
        if doc.kind == "Service":
            problems.extend(_service_references(doc, names, is_valid=id(doc) in valid))
        elif doc.kind == "User":
            for i, entry in enumerate(_list(_get(doc.body, "spec", "groups"))):
                group, path = (entry, f"spec.groups[{i}]") if isinstance(entry, str) else \
                    (_get(entry, "name"), f"spec.groups[{i}].name")  # a windowed membership
                if isinstance(group, str) and group not in names["Group"]:
                    problems.append(DanglingReference.to("Group", group, names["Group"], source=doc.source(path)))
            problems.extend(_identity_references(doc, names, claimed))
        elif doc.kind == "IdentityProvider":
            for method in IDENTITY_PROVIDER_TYPES:
                secret = _str(_get(doc.body, "spec", method, "clientSecret", "fromSecret"))
                if secret is not None and secret not in names["Secret"]:
                    path = f"spec.{method}.clientSecret.fromSecret"
                    problems.append(DanglingReference.to("Secret", secret, names["Secret"], source=doc.source(path)))
            problems.extend(workloads.identity_token_user_problems(doc, documents))
        elif doc.kind == "Credential":
            problems.extend(workloads.credential_problems(doc, documents, names))
    return problems


IDENTITY_PROVIDER_TYPES = ("oidc", "github", "saml", "oidcIdentityToken")


def _identity_references(
    doc: Document, names: Mapping[str, set[str]], claimed: dict[tuple[str, str], str]
) -> list[ConfigError]:
    """Each identity names an existing IdentityProvider and belongs to one User only."""
    problems: list[ConfigError] = []
    known = names.get("IdentityProvider", set())
    for i, identity in enumerate(_list(_get(doc.body, "spec", "authentication", "identities"))):
        provider = _str(_get(identity, "identityProvider"))
        identifier = _str(_get(identity, "identifier"))
        path = f"spec.authentication.identities[{i}]"
        if provider is not None and provider not in known:
            problems.append(DanglingReference.to("IdentityProvider", provider, known,
                                                 source=doc.source(f"{path}.identityProvider")))
        if provider is None or identifier is None:
            continue
        owner = claimed.setdefault((provider, identifier), doc.name)
        if owner != doc.name:
            problems.append(DuplicateName(
                f"this {provider} identity already belongs to User {owner!r}: one identity maps to one User",
                source=doc.source(f"{path}.identifier"),
            ))
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
    for doc in _schema_valid(documents, verdicts or SchemaVerdicts()):
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


# --- JSON Schema ------------------------------------------------------------------------------


@functools.cache
def _validators() -> dict[str, Draft202012Validator]:
    """kind -> validator, from every schemas/*.schema.json that declares its `kind` as a const.

    All schemas are registered by `$id`, so one may `$ref` another's `$defs` (a Policy's conditions).
    """
    schemas = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(SCHEMA_DIR.glob("*.schema.json"))]
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas if "$id" in schema
    )
    validators = {}
    for schema in schemas:
        Draft202012Validator.check_schema(schema)
        kind = schema.get("properties", {}).get("kind", {}).get("const")
        if kind is not None:
            validators[kind] = Draft202012Validator(schema, registry=registry)
    return validators


_VERIFYING_SSL_MODES = (SSLMode.VERIFY_CA.name, SSLMode.VERIFY_FULL.name)


def upstream_login_safety(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None
                          ) -> list[ConfigError]:
    """A config names MD5, PASSWORD or TRUST in postgres.auth.mechanisms only with sslMode VERIFY_CA or
    VERIFY_FULL (after merging its parent chain): without a verified server, whoever answers at the
    upstream address would get the password, a replayable hash, or the session."""
    problems: list[ConfigError] = []
    for doc in _schema_valid(documents, verdicts or SchemaVerdicts()):
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


@functools.cache
def _compiled_checks() -> dict[str, Callable[[Any], bool]]:
    """kind -> the compiled equivalent of its validator's is_valid, where schema_check covers the schema.
    Cached for the process: it depends only on the files in schemas/."""
    return {kind: check for kind, v in _validators().items() if (check := schema_check.compile_validator(v))}


class SchemaVerdicts:
    """Whether a document matches its kind's schema, remembered: a 10,000-User repository re-validates in
    a blink when one file changed. Mutable on purpose (the memory); owned by the reconcile loop."""

    def __init__(self, *, max_bodies: int = 100_000) -> None:
        # Compiled checks remember their verdict per body object (the Parser shares unchanged bodies).
        self._compiled = {kind: schema_check.remembering(check) for kind, check in _compiled_checks().items()}
        self._valid_bodies: set[tuple[str, str]] = set()  # by content, for schemas only jsonschema can check
        self._max_bodies = max_bodies

    def is_valid(self, doc: Document) -> bool:
        validators = _validators()
        if doc.kind not in validators:
            return False
        if (compiled := self._compiled.get(doc.kind)) is not None:
            return compiled(doc.body)  # a few µs: cheaper than the content key below
        # jsonschema costs ~0.3 ms a document; the key costs ~30 µs.
        key = (doc.kind, json.dumps(doc.body, sort_keys=True, default=str))
        if key in self._valid_bodies:
            return True
        if not validators[doc.kind].is_valid(doc.body):
            return False
        if len(self._valid_bodies) >= self._max_bodies:
            self._valid_bodies.clear()
        self._valid_bodies.add(key)
        return True


def _schema_problems(doc: Document, verdicts: SchemaVerdicts) -> list[ConfigError]:
    validators = _validators()
    if verdicts.is_valid(doc):
        return []
    if doc.kind not in validators:
        what = f"unknown kind {doc.kind!r}" if doc.kind else "missing or not a string"
        return [SchemaViolation(f"{what}; expected one of {', '.join(sorted(validators))}", source=doc.source("kind"))]
    errors = sorted(validators[doc.kind].iter_errors(doc.body), key=lambda e: [str(p) for p in e.absolute_path])
    return [SchemaViolation(message, source=doc.source(path)) for e in errors for path, message in _describe(e)]


def _schema_valid(documents: Iterable[Document], verdicts: SchemaVerdicts) -> Iterator[Document]:
    return (d for d in documents if verdicts.is_valid(d))


_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}
# bool before int: True is an int in Python, but not in JSON.
_PYTHON_TO_JSON = ((bool, "boolean"), (type(None), "null"), (int, "integer"), (float, "number"),
                   (str, "string"), (list, "array"), (dict, "object"))  # fmt: skip


def _json_type(value: Any) -> str:
    for kinds, name in _PYTHON_TO_JSON:
        if isinstance(value, kinds):
            return _JSON_TYPES[name]
    return f"a {type(value).__name__}"


def _describe(error: ValidationError) -> list[tuple[str, str]]:
    """(path, message) for one jsonschema error, built from the schema alone: no instance values."""
    parts = list(error.absolute_path)
    here = format_path(parts)
    keyword, expected, schema = error.validator, error.validator_value, error.schema
    instance = error.instance
    if keyword == "required":
        missing = [name for name in expected if isinstance(instance, dict) and name not in instance]
        return [(format_path([*parts, name]), "is required") for name in missing]
    if keyword == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in instance if k not in allowed] if isinstance(instance, dict) else []
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return [(format_path([*parts, k]), f"unknown field{suggestion(k, allowed)}{hint}") for k in extra]
    if keyword in ("minProperties", "maxProperties") and schema.get("maxProperties") == 1:
        return [(here, f"set exactly one of: {', '.join(schema.get('properties', {}))}")]
    if keyword == "type":
        wanted = [str(t) for t in (expected if isinstance(expected, list) else [expected])]
        return [(here, f"must be {' or '.join(_JSON_TYPES.get(t, t) for t in wanted)}, not {_json_type(instance)}")]
    messages: dict[str, Callable[[Any], str]] = {
        "enum": lambda v: f"must be one of: {', '.join(map(str, v))}",
        "const": lambda v: f"must be {v!r}",
        "pattern": lambda v: f"must match {v}" + (f" ({schema['description']})" if "description" in schema else ""),
        "minLength": lambda v: "must not be empty" if v == 1 else f"must be at least {v} characters",
        "maxLength": lambda v: f"must be at most {v} characters",
        "minimum": lambda v: f"must be at least {v}",
        "maximum": lambda v: f"must be at most {v}",
        "minItems": lambda v: "must not be empty" if v == 1 else f"must have at least {v} items",
        "maxItems": lambda v: f"must have at most {v} items",
        "uniqueItems": lambda v: "must not list an item twice",
    }
    render = messages.get(keyword)
    return [(here, render(expected) if render else f"does not satisfy the schema's {keyword!r}")]


# --- references -------------------------------------------------------------------------------
# These walk documents that may have failed their schema, so every lookup tolerates any shape.


def _get(value: Any, *keys: str) -> Any:
    """value[k1][k2]..., or None where a step is missing or not a mapping."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _names_by_kind(documents: Iterable[Document]) -> dict[str, set[str]]:
    # From every document, valid or not, so one typo does not cascade into "no such Secret" errors.
    names: dict[str, set[str]] = {"Secret": set(), "Group": set(), "User": set(), "Service": set(),
                                  "IdentityProvider": set()}
    for doc in documents:
        if doc.kind and doc.name:
            names.setdefault(doc.kind, set()).add(doc.name)
    return names


def _service_configs(spec: Any) -> list[tuple[str, dict[str, Any], str]]:
    """(name, config, path) for the default config and each named dynamic config, in manifest order."""
    found = [("default", spec["config"], "spec.config")] if isinstance(_get(spec, "config"), dict) else []
    for i, config in enumerate(_list(_get(spec, "dynamicConfig", "configs"))):
        name = _str(_get(config, "name"))
        if name is not None:
            found.append((name, config, f"spec.dynamicConfig.configs[{i}]"))
    return found


def _service_references(doc: Document, names: Mapping[str, set[str]], *, is_valid: bool) -> list[ConfigError]:
    spec = _get(doc.body, "spec")
    configs: dict[str, dict[str, Any]] = {}
    problems: list[ConfigError] = []
    for name, config, path in _service_configs(spec):
        if name in configs:
            problems.append(DuplicateName(f"config {name!r} is defined twice in this Service", source=doc.source(path)))
            continue
        configs[name] = config
    if is_valid and not configs:
        problems.append(
            SchemaViolation("needs `config` or at least one dynamicConfig.configs entry", source=doc.source("spec"))
        )
    for name, config, path in _service_configs(spec):
        for ref_path, secret in _secret_refs(config):
            if secret not in names["Secret"]:
                problems.append(DanglingReference.to("Secret", secret, names["Secret"],
                                                     source=doc.source(f"{path}.{ref_path}")))
        parent = _str(config.get("parent"))
        if parent is not None and parent not in configs:
            problems.append(DanglingReference.to("config", parent, configs, source=doc.source(f"{path}.parent")))
        if is_valid:  # otherwise the schema errors already say what is wrong with the upstream
            problems.extend(_upstream_problems(doc, name, path, configs))
    problems.extend(_parent_cycles(doc, configs))
    for i, rule in enumerate(_list(_get(spec, "dynamicConfig", "rules"))):
        config_name = _str(_get(rule, "configName"))
        if config_name is not None and config_name not in configs:
            path = f"spec.dynamicConfig.rules[{i}].configName"
            problems.append(DanglingReference.to("config", config_name, configs, source=doc.source(path)))
    return problems


def _secret_refs(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(path within the config, Secret name) for each `fromSecret` in one config."""
    refs = [
        ("postgres.auth.password.fromSecret", _get(config, "postgres", "auth", "password", "fromSecret")),
        ("postgres.tls.ca.fromSecret", _get(config, "postgres", "tls", "ca", "fromSecret")),
    ]
    return [(path, name) for path, name in refs if isinstance(name, str)]


def _upstream_problems(doc: Document, name: str, path: str, configs: Mapping[str, Any]) -> list[ConfigError]:
    """The config, or the nearest ancestor that sets one, has an upstream URL that parses."""
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current in configs and current not in seen:
        seen.add(current)
        url = _str(_get(configs[current], "upstream", "url"))
        if url is not None:
            if current != name:
                return []  # checked at the config that sets it
            try:
                Upstream.from_url(url)
            except ValueError:
                where = doc.source(f"{path}.upstream.url")
                return [SchemaViolation("not a valid postgres://host:port URL", source=where)]
            return []
        current = _str(configs[current].get("parent"))
    if current is not None:
        return []  # a dangling parent or a loop: reported on its own
    return [SchemaViolation("upstream.url is required (here or in a parent config)", source=doc.source(path))]


def _parent_cycles(doc: Document, configs: Mapping[str, Any]) -> list[ConfigError]:
    problems: list[ConfigError] = []
    reported: set[frozenset[str]] = set()
    paths = {name: path for name, _, path in reversed(_service_configs(_get(doc.body, "spec")))}
    for start in configs:
        chain = [start]
        parent = _str(configs[start].get("parent"))
        while parent is not None and parent in configs and parent not in chain:
            chain.append(parent)
            parent = _str(configs[parent].get("parent"))
        if parent is not None and parent in chain:
            loop = chain[chain.index(parent) :]
            if frozenset(loop) not in reported:
                reported.add(frozenset(loop))
                message = f"parent chain loops: {' -> '.join([*loop, loop[0]])}"
                problems.append(DanglingReference(message, source=doc.source(f"{paths[loop[0]]}.parent")))
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
