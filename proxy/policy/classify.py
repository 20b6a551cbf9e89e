"""Classify SQL with PostgreSQL's own parser (pglast / libpg_query): statement kinds, tables, read-only.

Cached twice by text: the exact string, then libpg_query's normalised form (literals become $n, ~6 µs), so
a query repeated with new literals costs one normalise and a dict lookup. A miss parses to JSON (~30 µs;
libpg_query's fast path, no Python AST) and walks plain dicts.

What `is_read_only` means: false for anything PostgreSQL refuses in a READ ONLY transaction that we can see
in the statement text (INSERT/UPDATE/DELETE/MERGE, also inside CTEs and EXPLAIN ANALYZE; DDL, GRANT/REVOKE,
TRUNCATE, COPY FROM, SELECT INTO, SELECT ... FOR UPDATE/SHARE, nextval()/setval() and a few other built-in
writers), and for what we cannot see into (CALL, DO, EXECUTE, VACUUM, LOCK, unknown statements, text that
does not parse). Functions a SELECT calls are not looked into: `functions` lists them for policies to judge.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pglast import parser

from proxy.policy.sqlnames import SqlNames, sql_names

MAX_CACHED = 8192
# Built-in functions that write, which PostgreSQL refuses in a read-only transaction (or that end sessions).
WRITING_FUNCTIONS = frozenset({
    "nextval", "setval", "lo_import", "lo_export", "lo_create", "lo_creat", "lo_unlink", "lo_put", "lo_from_bytea",
    "lowrite", "lo_truncate", "lo_truncate64", "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf",
    "pg_rotate_logfile", "pg_switch_wal", "pg_create_restore_point", "pg_promote", "pg_file_write",
    "pg_create_logical_replication_slot", "pg_create_physical_replication_slot", "pg_drop_replication_slot",
})
# Statements that neither change data nor schema (and may run in a READ ONLY transaction).
_READ_ONLY_KINDS = frozenset({
    "SELECT", "VALUES", "SHOW", "EXPLAIN", "BEGIN", "START TRANSACTION", "COMMIT", "ROLLBACK", "SAVEPOINT",
    "RELEASE", "ROLLBACK TO", "SET", "RESET", "SET CONSTRAINTS", "FETCH", "MOVE", "CLOSE", "DEALLOCATE",
    "LISTEN", "UNLISTEN", "DISCARD", "PREPARE", "DECLARE CURSOR", "COPY TO",
})
_RELATION_TYPES = frozenset({"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_INDEX", "OBJECT_SEQUENCE",
                            "OBJECT_FOREIGN_TABLE"})
_TRANSACTION_KINDS = {
    "TRANS_STMT_BEGIN": "BEGIN", "TRANS_STMT_START": "START TRANSACTION", "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK", "TRANS_STMT_SAVEPOINT": "SAVEPOINT", "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO", "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED", "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}
_FIXED_KINDS = {
    "InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE",
    "TruncateStmt": "TRUNCATE", "CallStmt": "CALL", "DoStmt": "DO", "ExecuteStmt": "EXECUTE",
    "VariableShowStmt": "SHOW", "LockStmt": "LOCK", "ListenStmt": "LISTEN", "UnlistenStmt": "UNLISTEN",
    "NotifyStmt": "NOTIFY", "DiscardStmt": "DISCARD", "DeallocateStmt": "DEALLOCATE", "CheckPointStmt": "CHECKPOINT",
    "ClusterStmt": "CLUSTER", "ReindexStmt": "REINDEX", "CommentStmt": "COMMENT", "SecLabelStmt": "SECURITY LABEL",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW", "LoadStmt": "LOAD", "ConstraintsSetStmt": "SET CONSTRAINTS",
    "ClosePortalStmt": "CLOSE", "IndexStmt": "CREATE INDEX", "ViewStmt": "CREATE VIEW", "CreateStmt": "CREATE TABLE",
    "CreatedbStmt": "CREATE DATABASE", "DropdbStmt": "DROP DATABASE", "CreateRoleStmt": "CREATE ROLE",
    "DropRoleStmt": "DROP ROLE", "CreateTrigStmt": "CREATE TRIGGER", "CompositeTypeStmt": "CREATE TYPE",
    "CreateEnumStmt": "CREATE TYPE", "CreateRangeStmt": "CREATE TYPE", "RuleStmt": "CREATE RULE",
    "ReassignOwnedStmt": "REASSIGN OWNED", "DropOwnedStmt": "DROP OWNED", "AlterDefaultPrivilegesStmt":
    "ALTER DEFAULT PRIVILEGES", "ImportForeignSchemaStmt": "IMPORT FOREIGN SCHEMA", "CreateCastStmt": "CREATE CAST",
}


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
    names: SqlNames | None = None  # prepared statements and cursors it creates, runs, drops (None: none)


UNKNOWN = Classification(kinds=("UNKNOWN",), tables=(), functions=(), is_read_only=False, fingerprint="")
_EMPTY = Classification(kinds=(), tables=(), functions=(), is_read_only=True, fingerprint="")

_by_text: OrderedDict[str, Classification] = OrderedDict()
_by_normalized: OrderedDict[str, Classification] = OrderedDict()


# A cheap literal-free key for the common case (pgbench -M simple, ORMs interpolating values): plain quoted
# strings and numbers replaced. Only texts where that replacement cannot change the token structure qualify:
# no dollar quotes or parameters, backslashes, comments, quoted identifiers or prefixed strings (E'', U&'', B''),
# all of which would let a quote or digit mean something else. Anything else goes to libpg_query's normalize.
_STRING = re.compile(r"'(?:[^']|'')*'")
# A token that starts with a digit is a numeric literal (identifiers cannot, unless quoted, which is excluded).
_NUMBER = re.compile(r"(?<![\w.])\d[\d.]*(?:[eE][+-]?\d+)?")
_by_shape: OrderedDict[str, Classification] = OrderedDict()


def _shape_key(sql: str) -> str | None:
    if "$" in sql or "\\" in sql or '"' in sql or "--" in sql or "/*" in sql:
        return None
    if "'" not in sql:
        return _NUMBER.sub("0", sql)
    parts: list[str] = []
    last = 0
    for m in _STRING.finditer(sql):
        start = m.start()
        if start and (sql[start - 1].isalnum() or sql[start - 1] in "_&"):
            return None  # E'..', U&'..', B'..', X'..' or a quote glued to a word: not a plain string
        parts.append(sql[last:start])
        parts.append("''")
        last = m.end()
    parts.append(sql[last:])
    outside = "".join(parts)
    if outside.count("'") != len(parts) - 1:  # two per string found
        return None  # an unterminated quote
    return _NUMBER.sub("0", outside)


def classify(sql: str) -> Classification:
    """Classify `sql` (one or more statements). Never raises: text that does not parse is UNKNOWN."""
    found = _by_text.get(sql)
    if found is not None:
        return found
    if "\x00" in sql:
        return UNKNOWN  # libpg_query stops at a NUL: it would judge (and cache) only the text before it
    shape = _shape_key(sql)
    if shape is not None:
        found = _by_shape.get(shape)
        if found is not None:
            return found  # not added to _by_text: fresh literals would only churn it
        found = _classify_normalized(sql)
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
        if key is not None:
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
    walk = _Walk()
    for raw in tree.get("stmts", []):
        walk.statement(raw.get("stmt", {}))
    if not walk.kinds:
        return _EMPTY if not tree.get("stmts") else UNKNOWN
    return Classification(
        kinds=tuple(dict.fromkeys(walk.kinds)), tables=tuple(dict.fromkeys(walk.tables)),
        functions=tuple(dict.fromkeys(walk.functions)), is_read_only=walk.is_read_only, fingerprint=fingerprint,
        copy_direction=walk.copy_direction, copy_table=walk.copy_table, names=sql_names(tree_json, tree),
    )


class _Walk:
    """Collects kinds, tables and functions over libpg_query's JSON parse tree."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.tables: list[str] = []
        self.functions: list[str] = []
        self.is_read_only = True
        self.copy_direction = ""
        self.copy_table = ""

    def kind(self, name: str) -> None:
        self.kinds.append(name)
        if name not in _READ_ONLY_KINDS:
            self.is_read_only = False

    def statement(self, node: dict[str, Any]) -> None:
        """One statement node {"SelectStmt": {...}}: its kind(s), then every table and function inside."""
        if not node:
            return
        (tag, body), = node.items()
        self.kind_of(tag, body)
        self.scan(body)

    def kind_of(self, tag: str, body: dict[str, Any]) -> None:
        if tag == "SelectStmt":
            if body.get("intoClause"):
                self.kind("SELECT INTO")
            else:
                self.kind("VALUES" if body.get("valuesLists") else "SELECT")
            if body.get("lockingClause"):
                self.is_read_only = False  # SELECT ... FOR UPDATE/SHARE: refused in a read-only transaction
        elif tag == "ExplainStmt":
            self.kind("EXPLAIN")
            query = body.get("query", {})
            if _explain_analyze(body.get("options", [])):
                (inner_tag, inner), = query.items()
                self.kind_of(inner_tag, inner)  # EXPLAIN ANALYZE runs the statement: it counts as that
        elif tag == "CopyStmt":
            self.copy_direction = "FROM" if body.get("is_from") else "TO"
            self.copy_table = _table(body["relation"]) if "relation" in body else ""
            self.kinds.append("COPY")
            self.kind("COPY FROM" if body.get("is_from") else "COPY TO")
            if "query" in body:  # COPY (DELETE ... RETURNING *) TO STDOUT runs the DELETE
                (inner_tag, inner), = body["query"].items()
                self.kind_of(inner_tag, inner)
        elif tag in ("PrepareStmt", "DeclareCursorStmt"):
            self.kind("PREPARE" if tag == "PrepareStmt" else "DECLARE CURSOR")
            (inner_tag, inner), = body["query"].items()
            self.kind_of(inner_tag, inner)  # what would run later: PREPARE of a DELETE is a write
        elif tag == "TransactionStmt":
            self.kind(_TRANSACTION_KINDS.get(body.get("kind", ""), "TRANSACTION"))
        elif tag == "VariableSetStmt":
            self.kind("RESET" if str(body.get("kind", "")).startswith("VAR_RESET") else "SET")
        elif tag == "FetchStmt":
            self.kind("MOVE" if body.get("ismove") else "FETCH")
        elif tag in ("GrantStmt", "GrantRoleStmt"):
            self.kind("GRANT" if body.get("is_grant") else "REVOKE")
        elif tag == "DropStmt":
            self.kind("DROP " + _object_type(body.get("removeType", "")))
            if body.get("removeType") in _RELATION_TYPES:  # DROP TABLE names its tables as lists of strings
                for name in body.get("objects", []):
                    items = name.get("List", {}).get("items", [])
                    self.tables.append(".".join(i.get("String", {}).get("sval", "") for i in items))
        elif tag == "VacuumStmt":
            self.kind("VACUUM" if body.get("is_vacuumcmd") else "ANALYZE")
        elif tag == "CreateTableAsStmt":
            is_view = body.get("objtype") == "OBJECT_MATVIEW"
            self.kind("CREATE MATERIALIZED VIEW" if is_view else "CREATE TABLE AS")
        elif tag in ("AlterTableStmt", "RenameStmt", "AlterObjectSchemaStmt", "AlterOwnerStmt"):
            field = {"AlterTableStmt": "objtype", "RenameStmt": "renameType"}.get(tag, "objectType")
            self.kind("ALTER " + _object_type(body.get(field, "")))
        elif tag in ("CreateFunctionStmt",):
            self.kind("CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION")
        elif tag in _FIXED_KINDS:
            self.kind(_FIXED_KINDS[tag])
        else:
            self.kind(_generic_kind(tag))

    def scan(self, value: Any) -> None:
        """Every RangeVar (table) and FuncCall below `value`; data-modifying CTEs add their kinds."""
        if isinstance(value, dict):
            for key, child in value.items():
                if key == "RangeVar":
                    self.tables.append(_table(child))
                elif key in ("relation",) and isinstance(child, dict) and "relname" in child:
                    self.tables.append(_table(child))  # a statement's target: a bare RangeVar body
                elif key == "FuncCall":
                    name = _function_name(child)
                    if name:
                        self.functions.append(name)
                        if name in WRITING_FUNCTIONS:
                            self.is_read_only = False
                elif key == "CommonTableExpr":
                    query = child.get("ctequery", {})
                    if query and next(iter(query)) != "SelectStmt":
                        (inner_tag, inner), = query.items()
                        self.kind_of(inner_tag, inner)  # WITH d AS (DELETE ...) SELECT: a DELETE
                self.scan(child)
        elif isinstance(value, list):
            for item in value:
                self.scan(item)


def _explain_analyze(options: list[Any]) -> bool:
    """Whether EXPLAIN runs the statement. Anything but a clear false counts as ANALYZE (the safe side)."""
    for option in options:
        elem = option.get("DefElem", {})
        if elem.get("defname") != "analyze":
            continue
        arg = elem.get("arg")
        if arg is None:
            return True
        if "Integer" in arg:
            return arg["Integer"].get("ival", 0) != 0  # libpg_query's JSON leaves out a zero ival
        text = str(arg.get("String", {}).get("sval", "")).lower()
        return text not in ("false", "off")
    return False


def _table(range_var: dict[str, Any]) -> str:
    name = str(range_var.get("relname", ""))
    schema = range_var.get("schemaname")
    return f"{schema}.{name}" if schema else name


def _function_name(call: dict[str, Any]) -> str:
    parts = [p.get("String", {}).get("sval", "") for p in call.get("funcname", [])]
    return parts[-1].lower() if parts else ""


def _object_type(value: str) -> str:
    return value.removeprefix("OBJECT_").replace("_", " ") or "OBJECT"


def _generic_kind(tag: str) -> str:
    """CreateSchemaStmt -> CREATE SCHEMA, AlterRoleStmt -> ALTER ROLE: PostgreSQL's node names say it."""
    words: list[str] = []
    for ch in tag.removesuffix("Stmt"):
        if ch.isupper() and words:
            words.append(" ")
        words.append(ch.upper())
    return "".join(words)
