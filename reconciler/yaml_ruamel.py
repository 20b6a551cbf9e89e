"""ruamel's YAML 1.2 round-trip loader, and its values as plain Python within the load stage's limits.

`load` parses the rare files libyaml cannot (`yaml12`) with it; `yaml12` asks it to type its rare scalars.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.error import YAMLFutureWarning, YAMLWarning
from ruamel.yaml.scalarbool import ScalarBoolean

from reconciler.errors import ManifestSyntaxError, SourceRef, format_path

MAX_VALUES_PER_DOCUMENT = 100_000  # after aliases expand: refuses "billion laughs" documents
MAX_DEPTH = 100  # levels below a document's root
# ruamel's warnings (a reused anchor, a %YAML 1.1 directive) quote the source lines around the place,
# and a manifest line may hold a secret: they must not reach stderr or the logs.
warnings.filterwarnings("ignore", category=YAMLWarning)
warnings.filterwarnings("ignore", category=YAMLFutureWarning)
# Explicit tags that name plain data (`!!map`, `!!str`, ...); anything else, e.g. `!!python/object`, is refused.
_STANDARD_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("map", "omap", "seq", "str", "int", "float", "bool", "null")}


def ruamel_documents(text: str) -> list[Any]:
    """ruamel's round-trip load of a whole stream (YAML 1.2; raises its own YAMLError)."""
    return list(new_loader().load_all(text))


def plain_value(value: Any) -> Any:
    """One ruamel value as plain Python, as documents hold it (for `yaml12`'s rare scalars)."""
    return to_plain(value, [], SourceRef(file=""), [0])


def new_loader() -> YAML:
    """A round-trip loader that refuses duplicate keys."""
    yaml = YAML(typ="rt", pure=True)  # rt: keeps line numbers; its default is YAML 1.2 ("on" stays a string)
    yaml.allow_duplicate_keys = False
    return yaml


def to_plain(value: Any, path: list[str | int], source: SourceRef, count: list[int]) -> Any:
    """ruamel's round-trip types -> dict/list/str/int/float/bool/None/date(time), checking as we go."""
    count[0] += 1
    if count[0] > MAX_VALUES_PER_DOCUMENT or len(path) > MAX_DEPTH:
        raise ManifestSyntaxError(
            f"document expands to more than {MAX_VALUES_PER_DOCUMENT} values or 100 levels (aliases?)", source=source
        )
    where = replace(source, path=format_path(path))
    tag = getattr(getattr(value, "tag", None), "value", None)
    if isinstance(value, TaggedScalar) and tag == "tag:yaml.org,2002:str":
        return str(value.value)  # `!!str 1`: ruamel keeps the tag, the meaning is just a string
    if isinstance(value, TaggedScalar) or (tag is not None and tag not in _STANDARD_TAGS):
        raise ManifestSyntaxError(f"YAML tag {tag!r} is not supported", source=where)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ManifestSyntaxError("mapping keys must be strings", source=where)
            out[key] = to_plain(item, [*path, key], source, count)
        return out
    if isinstance(value, list):
        return [to_plain(item, [*path, i], source, count) for i, item in enumerate(value)]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, ScalarBoolean):  # an anchored `&a false`: ruamel keeps an int subclass for the anchor
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, datetime.datetime):
        return datetime.datetime(  # drop ruamel's TimeStamp subclass, keep the instant
            value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond, value.tzinfo
        )
    if isinstance(value, datetime.date):
        return datetime.date(value.year, value.month, value.day)
    raise ManifestSyntaxError(f"YAML {type(value).__name__} values (binary, sets) are not supported", source=where)
