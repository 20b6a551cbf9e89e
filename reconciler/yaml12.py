"""Manifest YAML through libyaml: plain documents typed as the ruamel.yaml YAML 1.2 loader types them.

ruamel.yaml's pure-Python parser costs ~2 ms a document (19 s of a 13,000-document repository);
libyaml's C parser, driven through PyYAML's `CParser` event stream, costs a few µs. This module
turns that stream into the same plain values `reconciler.load` has always produced:

- plain scalars resolve by ruamel's YAML 1.2 rules, not PyYAML's YAML 1.1 ones: `on`/`yes`/`no`
  stay strings, `0777` is 777, `1:20` a string; `true`/`True`/`TRUE`, `null`/`~`/empty,
  `.inf`/`.nan`, `0o`/`0x`/`0b` ints and timestamps are typed;
- anything outside the common shape raises `Unsupported`, and the caller parses that file with
  ruamel as before: a syntax error, a duplicate key, an explicit tag, a `%YAML`/`%TAG` directive, a
  merge key (`<<`), a reused or undefined anchor, a key that is not a string, a document that is not
  a mapping, or more values or levels than `load` accepts. So every error message (file, line,
  column), and every rare construct's meaning, stays exactly what ruamel says.

Events, not PyYAML's C composer: that composer recurses in C and crashes the process on a deeply
nested file (`[[[[…`); the event loop here is iterative and stops at the depth limit.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

from yaml import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml._yaml import CParser


class Unsupported(Exception):  # noqa: N818 - a signal to fall back, not an error to report
    """This stream needs the ruamel path (for its error message or a rare construct's meaning)."""


# ruamel.yaml's YAML 1.2 implicit resolvers (ruamel/yaml/resolver.py, version (1, 2)), in its order.
# Values that only match these need ruamel's constructor (underscores, 0o/0x/0b, exponents, .inf,
# timestamps): `_typed_by_ruamel` asks ruamel for them, so their meaning cannot drift.
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULL = frozenset(("", "~", "null", "Null", "NULL"))
_FLOAT_12 = re.compile(
    r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_INT_12 = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0o?[0-7_]+
    |[-+]?[0-9_]+
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_TIMESTAMP = re.compile(
    r"""^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
    |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
    (?:[Tt]|[ \t]+)[0-9][0-9]?
    :[0-9][0-9] :[0-9][0-9] (?:\.[0-9]*)?
    (?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""",
    re.X,
)
_NUMBER_START = frozenset("-+0123456789.")
# The forms typed here directly; every other int/float/timestamp goes to ruamel.
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_SIMPLE_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]+")


def plain_scalar(value: str) -> Any:
    """A plain (unquoted, untagged) scalar as ruamel's YAML 1.2 round-trip loader types it."""
    if not value:
        return None
    first = value[0]
    if first in "tTfF" and value in _BOOL:
        return _BOOL[value]
    if first in _NUMBER_START:
        if _DECIMAL.fullmatch(value):
            return int(value)  # 1.2 has no 0-prefixed octal: `0777` is 777, as in ruamel
        if _SIMPLE_FLOAT.fullmatch(value):
            return float(value)
        if _FLOAT_12.match(value) or (first != "." and _INT_12.match(value)):
            return _typed_by_ruamel(value)
    if first in "~nN" and value in _NULL:
        return None
    if first == "<" and value == "<<":
        raise Unsupported("merge key")
    if first == "=" and value == "=":
        raise Unsupported("the `=` value tag")
    if first.isdigit() and _TIMESTAMP.match(value):
        return _typed_by_ruamel(value)
    return value


@functools.lru_cache(maxsize=4096)
def _typed_by_ruamel(value: str) -> Any:
    """The rare numeric and timestamp forms, typed by ruamel itself (as load's `_plain` converts them)."""
    from reconciler import load  # load imports this module

    try:
        [document] = load.ruamel_documents(f"v: {value}\n")
        return load.plain_value(document["v"])
    except Exception as exc:  # `_`, `2024-13-45`, ...: the file's ruamel parse reports it
        raise Unsupported("a value ruamel refuses or types differently") from exc


class _Frame:
    """A collection being built: its value, the key awaiting its value (mappings), its anchor."""

    __slots__ = ("anchor", "key", "value")

    def __init__(self, value: Any, anchor: str | None) -> None:
        self.value = value
        self.anchor = anchor
        self.key: str | None = None


_NO_KEY = None


def documents(text: str, *, max_values: int, max_depth: int) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """(1-based index, 1-based line of the content, body or None for an empty document) per document.

    Raises Unsupported for anything the ruamel path must handle (see the module docstring); the caller
    must then discard what was yielded and parse the whole text with ruamel.
    """
    parser = CParser(text)
    index = 0
    anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, values inside, levels inside)
    stack: list[_Frame] = []
    count = 0
    line = 1
    root: Any = None
    try:
        while True:
            try:
                event = parser.get_event()
            except Exception as exc:  # libyaml's syntax errors: ruamel words and places them
                raise Unsupported("syntax error") from exc
            kind = type(event)
            if kind is ScalarEvent:
                if event.tag is not None:
                    raise Unsupported("explicit tag")
                value: Any = plain_scalar(event.value) if event.implicit[0] else event.value
                if not stack or type(stack[-1].value) is list or stack[-1].key is not _NO_KEY:
                    count += 1  # a value; keys are not counted, as in load's limit
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                if event.tag is not None:
                    raise Unsupported("explicit tag")
                if not stack:
                    if kind is SequenceStartEvent:
                        raise Unsupported("a document that is not a mapping")
                    line = event.start_mark.line + 1
                elif stack[-1].key is _NO_KEY and type(stack[-1].value) is dict:
                    raise Unsupported("a collection as a mapping key")
                if len(stack) >= max_depth:
                    raise Unsupported("too deep")
                count += 1
                stack.append(_Frame({} if kind is MappingStartEvent else [], event.anchor))
                continue
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                frame = stack.pop()
                value = frame.value
                if frame.anchor is not None:
                    _remember(anchors, frame.anchor, value, max_values)
                    frame.anchor = None
            elif kind is AliasEvent:
                if event.anchor not in anchors:
                    raise Unsupported("undefined alias")
                value, size, levels = anchors[event.anchor]
                count += size
                if len(stack) + levels > max_depth:
                    raise Unsupported("too deep")
                value = _copy(value)  # each use gets its own copy, as ruamel's tree -> plain conversion did
                _add(stack, value, None, from_alias=True)
                if count > max_values:
                    raise Unsupported("too many values")
                continue
            elif kind is DocumentStartEvent:
                if event.version is not None or event.tags:
                    raise Unsupported("%YAML or %TAG directive")
                index += 1
                anchors.clear()
                count = 0
                root = None
                continue
            elif kind is DocumentEndEvent:
                yield index, line, root
                continue
            elif kind is StreamStartEvent:
                continue
            elif kind is StreamEndEvent:
                return
            else:  # pragma: no cover - libyaml has no other events
                raise Unsupported(kind.__name__)
            if count > max_values:
                raise Unsupported("too many values")
            if not stack:  # the document's root
                if kind is ScalarEvent and value is not None:
                    raise Unsupported("a document that is not a mapping")
                root = value
                continue
            anchor = event.anchor if kind is ScalarEvent else None
            if anchor is not None:
                _remember(anchors, anchor, value, max_values)
            _add(stack, value, anchor, from_alias=False)
    finally:
        parser.dispose()


def _add(stack: list[_Frame], value: Any, anchor: str | None, *, from_alias: bool) -> None:
    frame = stack[-1]
    target = frame.value
    if type(target) is list:
        target.append(value)
        return
    if frame.key is _NO_KEY:
        if type(value) is not str:
            raise Unsupported("a mapping key that is not a string")
        if value in target:
            raise Unsupported("duplicate key")
        frame.key = value
        return
    target[frame.key] = value
    frame.key = _NO_KEY


def _remember(anchors: dict[str, tuple[Any, int, int]], name: str, value: Any, max_values: int) -> None:
    if name in anchors:
        raise Unsupported("anchor defined twice")
    size, levels = _measure(value, max_values)
    anchors[name] = (value, size, levels)


def _measure(value: Any, max_values: int) -> tuple[int, int]:
    """(values, levels below) of a finished anchored value; aliases inside were copied, so it is a tree."""
    if type(value) is dict:
        items: Any = value.values()
    elif type(value) is list:
        items = value
    else:
        return 1, 0
    size, levels = 1, 0
    for item in items:
        s, lv = _measure(item, max_values)
        size += s
        levels = max(levels, lv + 1)
        if size > max_values:
            raise Unsupported("too many values")
    return size, levels


def _copy(value: Any) -> Any:
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) for v in value]
    return value
