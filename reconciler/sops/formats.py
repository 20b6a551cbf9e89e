"""Parse YAML, JSON, dotenv, INI and binary sops files into ordered documents, and render trees back.

YAML is read with ruamel.yaml in YAML 1.2 mode, which types scalars as Go's yaml.v3 does (so clear
values hash the same); parser errors are reported by line and column, never with the source text.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.representer import RoundTripRepresenter

from reconciler.sops.cipher import GoTime, format_go_float, format_rfc3339_nano
from reconciler.sops.errors import SopsFormatError
from reconciler.sops.flat import parse_dotenv, parse_ini, render_dotenv, render_ini
from reconciler.sops.tree import strip_comments

INPUT_TYPES = ("yaml", "json", "dotenv", "ini", "binary")
OUTPUT_TYPES = INPUT_TYPES
_EXTENSIONS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv", ".ini": "ini"}
_INT64 = range(-(2**63), 2**63)


def detect_format(path: str) -> str:
    """sops' rule: by extension; anything else is the binary store (a JSON envelope)."""
    lowered = path.lower()
    for extension, kind in _EXTENSIONS.items():
        if lowered.endswith(extension):
            return kind
    return "binary"


def parse_documents(text: str, input_type: str, *, file: str | None) -> list[Any]:
    """The file's documents in order (several only for multi-document YAML), each a mapping."""
    if input_type == "yaml":
        return parse_yaml(text, file=file)
    if input_type in ("json", "binary"):
        return [parse_json(text, file=file)]
    if input_type == "dotenv":
        return [parse_dotenv(text, file=file)]
    if input_type == "ini":
        return [parse_ini(text, file=file)]
    raise SopsFormatError(f"unknown input type {input_type!r} (one of {', '.join(INPUT_TYPES)})", file=file)


class _Constructor(RoundTripConstructor):
    """Timestamps keep Go's nanoseconds (ruamel rounds to microseconds), so clear ones hash as sops does."""

    def construct_yaml_timestamp(self, node: Any, values: Any = None) -> Any:
        value = super().construct_yaml_timestamp(node, values)
        fraction = re.search(r"[.,](\d{7,9})", node.value)
        if fraction is None or not isinstance(value, datetime):
            return value
        moment = GoTime(*value.timetuple()[:6], int(fraction.group(1)[:6]), tzinfo=value.tzinfo)
        moment.nanosecond = int(fraction.group(1).ljust(9, "0"))
        return moment


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_timestamp)


def parse_yaml(text: str, *, file: str | None) -> list[Any]:
    """Round-trip load (comments kept in `.ca`), duplicate keys refused, top-level sequences refused."""
    loader = YAML(typ="rt")
    loader.Constructor = _Constructor
    try:
        documents = [d for d in loader.load_all(text) if d is not None]
    except YAMLError as exc:
        raise SopsFormatError(_describe_yaml_error(exc), file=file) from None
    for index, document in enumerate(documents):
        if not isinstance(document, Mapping):
            raise SopsFormatError("a YAML document's top level must be a mapping", file=file, document=index)
    return documents


def _describe_yaml_error(exc: YAMLError) -> str:
    # ruamel's messages quote source lines and duplicate values; keep only a scrubbed problem + place.
    problem = getattr(exc, "problem", None) or "invalid YAML"
    if "duplicate key" in problem:
        problem = "duplicate key"
    problem = re.sub(r"(['\"]).*?\1", "…", problem)[:100]
    mark = exc.problem_mark if isinstance(exc, MarkedYAMLError) else None
    if mark is None:
        return f"YAML syntax error: {problem}"
    return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def parse_json(text: str, *, file: str | None) -> dict[str, Any]:
    """JSON as sops >= 3.13.2 reads it: ints that fit int64 stay ints; duplicate keys refused."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise SopsFormatError(f"duplicate JSON key {key!r}", file=file)
            result[key] = value
        return result

    def number(literal: str) -> int | float:
        value = int(literal)
        return value if value in _INT64 else float(literal)

    try:
        document = json.loads(text, object_pairs_hook=pairs, parse_int=number)
    except json.JSONDecodeError as exc:
        raise SopsFormatError(
            f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}", file=file
        ) from None
    if not isinstance(document, dict):
        raise SopsFormatError("the JSON top level must be an object", file=file)
    return document


def render(tree: Any, output_type: str) -> str:
    """Render a decrypted tree (a mapping, or a list of them for multi-document YAML) as text."""
    if output_type == "yaml":
        return _render_yaml(tree)
    documents = tree if isinstance(tree, list) else [tree]
    if output_type == "json":
        payload = _go_json_numbers(strip_comments(tree))
        return json.dumps(payload, indent=4, ensure_ascii=False, default=_json_default) + "\n"
    if len(documents) != 1:
        raise SopsFormatError(f"{len(documents)} YAML documents cannot be written as {output_type}")
    document = documents[0]
    if output_type == "dotenv":
        return render_dotenv(document)
    if output_type == "ini":
        return render_ini(document)
    if output_type == "binary":
        data = document.get("data") if isinstance(document, Mapping) else None
        if not isinstance(data, str):
            raise SopsFormatError("binary output needs a tree with a string 'data' key")
        return data
    raise SopsFormatError(f"unknown output type {output_type!r} (one of {', '.join(OUTPUT_TYPES)})")


def _go_json_numbers(node: Any) -> Any:
    # Go's encoding/json writes float64 2.0 as 2 and 1e20 in full; match it so outputs diff cleanly.
    if isinstance(node, dict):
        return {k: _go_json_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_go_json_numbers(v) for v in node]
    if isinstance(node, float) and node.is_integer() and abs(node) < 1e21:
        return int(format_go_float(node))
    return node


def _json_default(value: Any) -> Any:
    if isinstance(value, date):
        return format_rfc3339_nano(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


class _Representer(RoundTripRepresenter):
    """Multi-line strings as literal blocks (`|`), as sops' yaml.v3 writes them."""


def _represent_str(representer: RoundTripRepresenter, value: str) -> Any:
    style = "|" if "\n" in value and not re.search(r"[ \t]\n|[^\S\n]$", value) else None
    return representer.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_time(representer: RoundTripRepresenter, value: date) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:timestamp", format_rfc3339_nano(value))


_Representer.add_representer(str, _represent_str)
_Representer.add_representer(date, _represent_time)
_Representer.add_representer(datetime, _represent_time)
_Representer.add_representer(GoTime, _represent_time)


def yaml_writer() -> YAML:
    """The YAML emitter used for output: 4-space indents like sops, key order kept."""
    writer = YAML(typ="rt")
    writer.Representer = _Representer
    writer.indent(mapping=4, sequence=4, offset=2)
    writer.width = 4096
    return writer


def _render_yaml(tree: Any) -> str:
    buffer = io.StringIO()
    documents = tree if isinstance(tree, list) else [tree]
    yaml_writer().dump_all([_without_comment_keys(d) for d in documents], buffer)
    return buffer.getvalue()


def _without_comment_keys(document: Any) -> Any:
    # dotenv/INI comments have no place in YAML output; ruamel trees keep theirs in `.ca`.
    if isinstance(document, dict) and type(document) is dict:
        return strip_comments(document)
    return document
