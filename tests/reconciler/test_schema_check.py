"""Compiled schema checks say yes/no exactly where jsonschema's validators do.

Seeds are the real manifests in examples-repo/ and docs/policies/; the property test mutates them
(values of every JSON type and some that are not JSON, removed and added keys, repeated items) and
compares `schema_check`'s predicate with `Draft202012Validator.is_valid` for the document's kind.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from reconciler import json_schema, load, schema_check

ROOT = Path(__file__).resolve().parents[2]


def seeds() -> list[tuple[str, dict[str, Any]]]:
    docs = load.load_directory(ROOT / "examples-repo") + load.load_directory(ROOT / "docs" / "policies")
    return [(d.kind, d.body) for d in docs if d.kind in json_schema.kind_validators()]


SEEDS = seeds()
PROPERTY_NAMES = sorted(
    set(json.dumps([json.loads(p.read_text()) for p in (ROOT / "schemas").glob("*.json")]).split('"')[1::2])
)[:400]


def test_the_bulk_kinds_are_compiled() -> None:
    compiled = json_schema.compiled_checks()
    assert {"User", "Group", "Service", "Secret"} <= set(compiled)
    assert {kind for kind, _ in SEEDS} >= {"User", "Group", "Service", "Secret", "Policy", "Credential"}
    for kind, body in SEEDS:
        assert compiled[kind](body) is json_schema.kind_validators()[kind].is_valid(body) is True


def schema_verdicts(schema: dict[str, Any], instance: Any) -> tuple[bool, bool]:
    resource = Resource.from_contents({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema})
    validator = Draft202012Validator(resource.contents, registry=Registry().with_resource("urn:t", resource))
    check = schema_check.compile_validator(validator)
    assert check is not None
    return check(instance), validator.is_valid(instance)


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"type": "integer"}, 1.0), ({"type": "integer"}, True), ({"type": "integer"}, 1.5),
        ({"type": "number"}, False), ({"type": "string"}, datetime.date(2024, 1, 1)),
        ({"minimum": 1}, math.nan), ({"maximum": 1}, math.nan), ({"minimum": 1}, "0"), ({"maximum": 5}, True),
        ({"enum": [1, "a"]}, True), ({"enum": [1, "a"]}, 1.0), ({"enum": ["a"]}, ["a"]), ({"const": False}, 0),
        ({"const": {"a": [1]}}, {"a": [True]}), ({"uniqueItems": True}, [1, True]), ({"uniqueItems": True}, [{}, {}]),
        ({"uniqueItems": True}, [[1], [1.0]]), ({"pattern": "b"}, "abc"), ({"pattern": "^b"}, "abc"),
        ({"minLength": 2}, "é"), ({"maxLength": 1}, "\U0001F600"), ({"items": False}, []), ({"items": False}, [1]),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, 1),
        ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, 1),
        ({"not": {"type": "null"}}, None), ({"anyOf": [{"type": "null"}, {"minimum": 3}]}, 2),
        ({"properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}, {"a": "x", "b": 1}),
        ({"properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}}, {"a": 1}),
        ({"additionalProperties": False}, {"x": 1}), ({"additionalProperties": False}, [1]),
        ({"required": ["a"]}, {}), ({"required": ["a"]}, "not an object"), ({"maxProperties": 1}, {"a": 1, "b": 2}),
        ({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}, [[[]], [1]]),
        ({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}, [[[]], []]),
    ],
)
def test_keyword_semantics_match_jsonschema(schema: dict[str, Any], instance: Any) -> None:
    compiled, reference = schema_verdicts(schema, instance)
    assert compiled is reference


def test_a_keyword_not_compiled_leaves_the_schema_to_jsonschema() -> None:
    for schema in ({"patternProperties": {"^x": {}}}, {"if": {"type": "string"}}, {"format": "email"},
                   {"properties": {"a": {"$dynamicRef": "#x"}}}):
        validator = Draft202012Validator(schema, registry=Registry())
        assert schema_check.compile_validator(validator) is None
    # Annotations and unknown keywords are ignored by jsonschema, and so compile.
    assert schema_check.compile_validator(Draft202012Validator({"description": "x", "x-note": 1, "examples": []}))


json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-3, 70000), st.floats(allow_nan=True), st.just(1.0),
        st.sampled_from(["", "a", "User", "POSTGRES", "REQUIRE", "x@y", "svc-1", "Bad Name", "ENC[x]", "a" * 300]),
        st.text(max_size=8), st.dates(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.sampled_from(PROPERTY_NAMES), st.text(max_size=4)),
                                            inner, max_size=3)),
    max_leaves=6,
)


def containers(value: Any) -> list[Any]:
    out = [value] if isinstance(value, (dict, list)) else []
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    for child in children:
        out.extend(containers(child))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Any]:
    kind, body = draw(st.sampled_from(SEEDS))
    body = copy.deepcopy(body)
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(containers(body)))
        op = draw(st.sampled_from(["set", "delete", "add", "repeat"]))
        if isinstance(target, dict):
            if op == "delete" and target:
                del target[draw(st.sampled_from(sorted(target)))]
            elif op == "set" and target:
                target[draw(st.sampled_from(sorted(target)))] = draw(json_values)
            else:
                target[draw(st.sampled_from(PROPERTY_NAMES))] = draw(json_values)
        elif target:
            at = draw(st.integers(0, len(target) - 1))
            if op == "delete":
                del target[at]
            elif op == "repeat":
                target.append(copy.deepcopy(target[at]))
            else:
                target[at] = draw(json_values)
        else:
            target.append(draw(json_values))
    return kind, body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_manifests_get_jsonschemas_verdict(case: tuple[str, Any]) -> None:
    kind, body = case
    assert json_schema.compiled_checks()[kind](body) is json_schema.kind_validators()[kind].is_valid(body)
