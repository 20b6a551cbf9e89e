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

import datetime
import functools
import re
from collections.abc import Iterator
from typing import Any

from ruamel.yaml.util import create_timestamp, timestamp_regexp
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
)
from yaml._yaml import CParser

from reconciler import yaml_ruamel


class Unsupported(Exception):  # noqa: N818 - a signal to fall back, not an error to report
    """This stream needs the ruamel path (for its error message or a rare construct's meaning)."""


# ruamel.yaml's YAML 1.2 implicit resolvers (ruamel/yaml/resolver.py, version (1, 2)), in its order.
# Numbers beyond plain decimals (underscores, 0o/0x/0b, exponents, .inf) are rare: `_typed_by_ruamel`
# asks ruamel for them, so their meaning cannot drift.
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
# First characters of every plain scalar that may be anything but a string (and "" for null).
_SPECIAL_FIRST = frozenset(("", *"tTfF~nN<=", *_NUMBER_START))
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
        return _timestamp(value)
    return value


def _timestamp(value: str) -> Any:
    """A timestamp as ruamel's round-trip constructor builds it (with ruamel's own regexp and builder:
    a repository may hold thousands, too many to ask ruamel one by one), as a plain date or datetime."""
    match = timestamp_regexp.match(value)
    if match is None:
        raise Unsupported("a timestamp ruamel refuses")
    moment = create_timestamp(**match.groupdict())  # ValueError for 2024-13-45: ruamel reports it
    if isinstance(moment, datetime.datetime):
        return datetime.datetime(moment.year, moment.month, moment.day, moment.hour, moment.minute,
                                 moment.second, moment.microsecond, moment.tzinfo)
    return datetime.date(moment.year, moment.month, moment.day)


@functools.lru_cache(maxsize=4096)
def _typed_by_ruamel(value: str) -> Any:
    """The rare numeric and timestamp forms, typed by ruamel itself (as `yaml_ruamel.to_plain` converts them)."""
    try:
        [document] = yaml_ruamel.ruamel_documents(f"v: {value}\n")
        return yaml_ruamel.plain_value(document["v"])
    except Exception as exc:  # `_`, `2024-13-45`, ...: the file's ruamel parse reports it
        raise Unsupported("a value ruamel refuses or types differently") from exc


_KEY = object()  # a mapping's slot in `pending` while it waits for a key


# Where libyaml (YAML 1.1) and ruamel (1.2) read the same text differently, found by the differential
# tests: libyaml accepts a tab after `:` (ruamel refuses it), takes NEL, LS and PS for line breaks
# (1.2 does not), skips a byte order mark after the first, and accepts `...` twice in a row. Directives
# (`%YAML`, `%TAG`, reserved ones) are rare enough to leave to ruamel whole.
_DIVERGENT = re.compile("[\t\x85\u2028\u2029\ufeff]|^(?:\\.\\.\\.|%)", re.MULTILINE)


def documents(text: str, *, max_values: int, max_depth: int) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """(1-based index, 1-based line of the content, body or None for an empty document) per document.

    Raises Unsupported for anything the ruamel path must handle (see the module docstring); the caller
    must then discard what was yielded and parse the whole text with ruamel.
    """
    if _DIVERGENT.search(text):
        raise Unsupported("tabs, YAML 1.1 line breaks, byte order marks, `...` or directives")
    parser = CParser(text)
    get_event = parser.get_event
    index = 0
    line = 1
    anchors: dict[str, tuple[Any, int, int]] = {}  # name -> (value, values inside, levels below)
    # The open collections, innermost last: the collection, where its next value goes (_KEY: a
    # mapping waiting for a key, None: a sequence, else the key), and its anchor.
    containers: list[Any] = []
    pending: list[Any] = []
    anchored: list[str | None] = []
    count = 0  # values so far in this document, aliases expanded (keys are not counted, as in load)
    root: Any = None
    try:
        while True:
            try:
                event = get_event()
            except Exception as exc:  # libyaml's syntax errors: ruamel words and places them
                raise Unsupported("syntax error") from exc
            kind = type(event)
            if kind is ScalarEvent:
                if event.tag is not None:
                    raise Unsupported("explicit tag")
                value: Any = event.value
                if event.implicit[0] and value[:1] in _SPECIAL_FIRST:
                    value = plain_scalar(value)
                if event.anchor is not None:
                    _remember(anchors, event.anchor, value, max_values)
                if not containers:
                    if value is not None:
                        raise Unsupported("a document that is not a mapping")
                    root = None
                    continue
                key = pending[-1]
                if key is _KEY:
                    if type(value) is not str:
                        raise Unsupported("a mapping key that is not a string")
                    if value in containers[-1]:
                        raise Unsupported("duplicate key")
                    pending[-1] = value
                    continue
                count += 1
                if key is None:
                    containers[-1].append(value)
                else:
                    containers[-1][key] = value
                    pending[-1] = _KEY
                continue
            if kind is MappingStartEvent or kind is SequenceStartEvent:
                if event.tag is not None:
                    raise Unsupported("explicit tag")
                if not containers:
                    if kind is SequenceStartEvent:
                        raise Unsupported("a document that is not a mapping")
                    line = event.start_mark.line + 1
                elif pending[-1] is _KEY:
                    raise Unsupported("a collection as a mapping key")
                elif len(containers) >= max_depth:
                    raise Unsupported("too deep")
                count += 1
                if kind is MappingStartEvent:
                    containers.append({})
                    pending.append(_KEY)
                else:
                    containers.append([])
                    pending.append(None)
                anchored.append(event.anchor)
                continue
            if kind is MappingEndEvent or kind is SequenceEndEvent:
                value = containers.pop()
                pending.pop()
                anchor = anchored.pop()
                if anchor is not None:
                    _remember(anchors, anchor, value, max_values)
                if not containers:
                    root = value
                    continue
            elif kind is AliasEvent:
                if event.anchor not in anchors:
                    raise Unsupported("undefined alias")
                value, size, levels = anchors[event.anchor]
                if not containers or len(containers) + levels > max_depth:
                    raise Unsupported("an alias as the document, or too deep")
                if pending[-1] is not _KEY:
                    count += size
                value = _copy(value)  # each use gets its own copy, as ruamel's tree -> plain conversion did
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
            elif kind is StreamEndEvent:
                return
            else:  # StreamStartEvent
                continue
            # A finished collection, or an alias's value, goes into its parent.
            if count > max_values:
                raise Unsupported("too many values")
            key = pending[-1]
            if key is None:
                containers[-1].append(value)
            elif key is _KEY:
                if type(value) is not str:
                    raise Unsupported("a mapping key that is not a string")
                if value in containers[-1]:
                    raise Unsupported("duplicate key")
                pending[-1] = value
            else:
                containers[-1][key] = value
                pending[-1] = _KEY
    finally:
        parser.dispose()


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
