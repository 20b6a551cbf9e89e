"""Each document against the JSON Schema of its kind in schemas/: validators, remembered verdicts, and
messages written here from the schema alone, so no field value is ever echoed."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from reconciler import schema_check
from reconciler.errors import ConfigError, SchemaViolation, format_path, suggestion
from reconciler.load import Document

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"

@functools.cache
def kind_validators() -> dict[str, Draft202012Validator]:
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

def compiled_checks() -> dict[str, Callable[[Any], bool]]:
    """kind -> the compiled equivalent of its validator's is_valid, where schema_check covers the schema.
    Cached for the process: it depends only on the files in schemas/."""
    return {kind: check for kind, v in kind_validators().items() if (check := schema_check.compile_validator(v))}


class SchemaVerdicts:
    """Whether a document matches its kind's schema, remembered: a 10,000-User repository re-validates in
    a blink when one file changed. Mutable on purpose (the memory); owned by the reconcile loop."""

    def __init__(self, *, max_bodies: int = 100_000) -> None:
        # Compiled checks remember their verdict per body object (the Parser shares unchanged bodies).
        self._compiled = {kind: schema_check.remembering(check) for kind, check in compiled_checks().items()}
        self._valid_bodies: set[tuple[str, str]] = set()  # by content, for schemas only jsonschema can check
        self._max_bodies = max_bodies

    def is_valid(self, doc: Document) -> bool:
        validators = kind_validators()
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


def schema_problems(doc: Document, verdicts: SchemaVerdicts) -> list[ConfigError]:
    """What is wrong with `doc` against its kind's schema (nothing if the verdict is 'valid')."""
    validators = kind_validators()
    if verdicts.is_valid(doc):
        return []
    if doc.kind not in validators:
        what = f"unknown kind {doc.kind!r}" if doc.kind else "missing or not a string"
        return [SchemaViolation(f"{what}; expected one of {', '.join(sorted(validators))}", source=doc.source("kind"))]
    errors = sorted(validators[doc.kind].iter_errors(doc.body), key=lambda e: [str(p) for p in e.absolute_path])
    return [SchemaViolation(message, source=doc.source(path)) for e in errors for path, message in _describe(e)]


def schema_valid(documents: Iterable[Document], verdicts: SchemaVerdicts) -> Iterator[Document]:
    """The documents that match their kind's schema."""
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

