"""Classify SQL with PostgreSQL's own parser (pglast / libpg_query): statement kinds, tables, read-only.

Cached twice by text: the exact string, then libpg_query's normalised form (literals become $n, ~6 µs), so
a query repeated with new literals costs one normalise and a dict lookup. A miss parses to JSON (~30 µs;
libpg_query's fast path, no Python AST) and walks plain dicts.

A literal-free key is only sound for classifications that no literal decided. The walker records
`depends_on_literals` wherever it reads a literal's value (EXPLAIN options, SET/RESET and transaction
options, set_config() arguments, COPY targets and options); such a classification is cached under its exact
text only, never under the shape or normalised key, so `EXPLAIN (ANALYZE 0) DELETE` can never answer for
`EXPLAIN (ANALYZE 1) DELETE`.

What `is_read_only` means: false for anything PostgreSQL refuses in a READ ONLY transaction that we can see
in the statement text (INSERT/UPDATE/DELETE/MERGE, also inside CTEs and EXPLAIN ANALYZE; DDL, GRANT/REVOKE,
TRUNCATE, COPY FROM, SELECT INTO, FOR UPDATE/SHARE anywhere in the tree), for what writes outside the
database (COPY to or from a server file or PROGRAM), and for what we cannot see into (CALL, DO, EXECUTE,
FETCH/MOVE of a cursor declared earlier, SET CONSTRAINTS, which fires deferred triggers, VACUUM, LOCK,
unknown statements, text that does not parse). A statement is read-only only if every function
it calls is a known read-only built-in: a name in `builtin_functions.txt` (generated from PostgreSQL 15's
pg_catalog by `python -m bench.builtin_functions`), unqualified or qualified with pg_catalog. Any other name
(a user function, or a built-in that writes such as nextval, set_config, pg_notify, lo_*, advisory locks)
makes it not read-only.

Operators likewise: a name outside `builtin_operators.txt` (a user-defined operator) makes a statement not
read-only. Not covered, left to the upstream guard rail (default_transaction_read_only): a user's overload of
a built-in operator name on a user type, and casts, which can call user functions (a cast to a domain whose
CHECK calls one, a user type's input function, a user-defined cast); an unqualified built-in name that
resolves elsewhere through search_path or overloading (a user's `public.lower(mytype)`); functions called by
views, defaults, triggers and row-security policies.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

from pglast import parser

from proxy.policy.shape_key import shape_key
from proxy.policy.sqlnames import SqlNames, sql_names
from proxy.policy.statement_walk import StatementWalk

MAX_CACHED = 8192


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    """What a SQL string does, as policies see it in ctx.request.postgres.query / parse."""

    kinds: tuple[str, ...]  # distinct, in statement order: "SELECT", "DROP TABLE", "UNKNOWN", ...
    tables: tuple[str, ...]  # distinct relations named, "schema.table" where the text qualifies them
    functions: tuple[str, ...]  # distinct function names called (unqualified, lower case)
    is_read_only: bool
    fingerprint: str  # libpg_query's fingerprint: equal for statements that differ only in literals
    copy_direction: str = ""  # "FROM" / "TO" when a statement is COPY
    copy_table: str = ""
    # Settings the text changes, in order: (how, setting name lower-cased, value). `how` is SET,
    # set_config, BEGIN, START TRANSACTION, SET TRANSACTION or SET SESSION CHARACTERISTICS; the value is
    # the SET arguments (a tuple), set_config's text (a str), None for RESET / SET ... TO DEFAULT, or
    # NOT_LITERAL. A set_config whose name is not a literal has the name "*". Read by the guard rails.
    settings: tuple[tuple[str, str, str | tuple[str, ...] | None], ...] = ()
    # A literal's value decided part of this classification: cache it under its exact text only.
    depends_on_literals: bool = False
    names: SqlNames | None = None  # prepared statements and cursors it creates, runs, drops (None: none)


UNKNOWN = Classification(kinds=("UNKNOWN",), tables=(), functions=(), is_read_only=False, fingerprint="")
_EMPTY = Classification(kinds=(), tables=(), functions=(), is_read_only=True, fingerprint="")

_by_text: OrderedDict[str, Classification] = OrderedDict()
_by_normalized: OrderedDict[str, Classification] = OrderedDict()


# Literal-free keys for the common case (pgbench -M simple, ORMs interpolating values): see shape_key.py.
_by_shape: OrderedDict[str, Classification] = OrderedDict()


def classify(sql: str) -> Classification:
    """Classify `sql` (one or more statements). Never raises: text that does not parse is UNKNOWN."""
    found = _by_text.get(sql)
    if found is not None:
        return found
    if "\x00" in sql:
        return UNKNOWN  # libpg_query stops at a NUL: it would judge (and cache) only the text before it
    shape = shape_key(sql)
    if shape is not None:
        found = _by_shape.get(shape)
        if found is not None:
            return found  # not added to _by_text: fresh literals would only churn it
        found = _classify_normalized(sql)
        if found.depends_on_literals:
            _remember(_by_text, sql, found)
        else:
            _remember(_by_shape, shape, found)
        return found
    found = _classify_normalized(sql)
    _remember(_by_text, sql, found)
    return found


def _classify_normalized(sql: str) -> Classification:
    try:
        key = parser.normalize(sql)
    except Exception:  # noqa: BLE001 - libpg_query's scanner refused it: the parser would too
        key = None
    found = _by_normalized.get(key) if key is not None else None
    if found is None:
        found = _classify_uncached(sql)
        # Literal-free keys (this one and the shape) hold only classifications no literal decided. Texts
        # that map to one key have the same tree but for literal values, so the walker reads literals in
        # the same places for all of them: a classification stored here is right for every text it serves.
        if key is not None and not found.depends_on_literals:
            _remember(_by_normalized, key, found)
    return found


def _remember(cache: OrderedDict[str, Classification], key: str, value: Classification) -> None:
    cache[key] = value
    while len(cache) > MAX_CACHED:
        cache.popitem(last=False)  # insertion order: the oldest shape goes first


def _classify_uncached(sql: str) -> Classification:
    if not sql.strip():
        return _EMPTY
    try:
        tree_json = parser.parse_sql_json(sql)
        tree = json.loads(tree_json)
        fingerprint = parser.fingerprint(sql)
    except Exception:  # noqa: BLE001 - pglast.parser.ParseError, or anything else libpg_query refuses
        return UNKNOWN
    walk = StatementWalk()
    for raw in tree.get("stmts", []):
        walk.statement(raw.get("stmt", {}))
    if not walk.kinds:
        return _EMPTY if not tree.get("stmts") else UNKNOWN
    return Classification(
        kinds=tuple(dict.fromkeys(walk.kinds)), tables=tuple(dict.fromkeys(walk.tables)),
        functions=tuple(dict.fromkeys(walk.functions)), is_read_only=walk.is_read_only, fingerprint=fingerprint,
        copy_direction=walk.copy_direction, copy_table=walk.copy_table, settings=tuple(walk.settings),
        depends_on_literals=walk.depends_on_literals,
        names=sql_names(tree_json, tree),
    )


def classify_exact(sql: str) -> Classification:
    """Classify without any cache: for callers that read literal values (the cached forms may share one
    Classification between texts that differ only in literals)."""
    return _classify_uncached(sql) if "\x00" not in sql else UNKNOWN
