"""Names of prepared statements and cursors that SQL text creates, runs and drops, from libpg_query's tree.

The request gate (proxy/policy/enforce.py) keeps one table of the prepared statements a session has (from
protocol Parse and SQL PREPARE, which share one namespace in PostgreSQL) and one of its portals (protocol
Bind and SQL DECLARE CURSOR, which share another), so that whatever runs after a policy reload is decided
again under the new policies. Names are as the server sees them: identifiers already case-folded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The node tags this module reads; a parse tree whose JSON contains none of them has no names.
_TAGS = ("PrepareStmt", "ExecuteStmt", "DeallocateStmt", "DeclareCursorStmt", "FetchStmt", "ClosePortalStmt",
         "DiscardStmt")


@dataclass(frozen=True, slots=True)
class SqlNames:
    """What one SQL text does to the session's prepared statements and portals (cursors)."""

    prepares: tuple[str, ...] = ()  # PREPARE p
    executes: tuple[str, ...] = ()  # EXECUTE p (also inside EXPLAIN and CREATE TABLE AS)
    deallocates: tuple[str, ...] = ()  # DEALLOCATE p
    declares: tuple[str, ...] = ()  # DECLARE c CURSOR
    fetches: tuple[str, ...] = ()  # FETCH / MOVE c
    closes: tuple[str, ...] = ()  # CLOSE c
    drops_all_statements: bool = False  # DEALLOCATE ALL, DISCARD ALL
    drops_all_portals: bool = False  # CLOSE ALL, DISCARD ALL


def sql_names(tree_json: str, tree: dict[str, Any]) -> SqlNames | None:
    """The names a parse tree touches; None (the common case) when it touches none."""
    if not any(tag in tree_json for tag in _TAGS):
        return None
    found: dict[str, list[str]] = {k: [] for k in ("prepares", "executes", "deallocates", "declares", "fetches",
                                                   "closes")}
    flags = {"drops_all_statements": False, "drops_all_portals": False}
    _walk(tree, found, flags)
    if not any(found.values()) and not any(flags.values()):
        return None  # a tag name inside a string literal
    names = {k: tuple(dict.fromkeys(v)) for k, v in found.items()}  # in order, each once
    return SqlNames(prepares=names["prepares"], executes=names["executes"], deallocates=names["deallocates"],
                    declares=names["declares"], fetches=names["fetches"], closes=names["closes"],
                    drops_all_statements=flags["drops_all_statements"], drops_all_portals=flags["drops_all_portals"])


def _walk(value: Any, found: dict[str, list[str]], flags: dict[str, bool]) -> None:
    if isinstance(value, list):
        for item in value:
            _walk(item, found, flags)
        return
    if not isinstance(value, dict):
        return
    for tag, body in value.items():
        if isinstance(body, dict):
            _note(tag, body, found, flags)
        _walk(body, found, flags)


def _note(tag: str, body: dict[str, Any], found: dict[str, list[str]], flags: dict[str, bool]) -> None:
    if tag == "PrepareStmt":
        found["prepares"].append(str(body.get("name", "")))
    elif tag == "ExecuteStmt":
        found["executes"].append(str(body.get("name", "")))
    elif tag == "DeallocateStmt":
        if "name" in body:
            found["deallocates"].append(str(body["name"]))
        else:
            flags["drops_all_statements"] = True
    elif tag == "DeclareCursorStmt":
        found["declares"].append(str(body.get("portalname", "")))
    elif tag == "FetchStmt":
        found["fetches"].append(str(body.get("portalname", "")))
    elif tag == "ClosePortalStmt":
        if "portalname" in body:
            found["closes"].append(str(body["portalname"]))
        else:
            flags["drops_all_portals"] = True
    elif tag == "DiscardStmt" and body.get("target") == "DISCARD_ALL":
        flags["drops_all_statements"] = flags["drops_all_portals"] = True
