"""The walk over libpg_query's JSON parse tree behind `classify`: statement kinds, tables, functions, settings
changed, and whether anything in the tree can write. Plain dicts, no pglast AST."""

from __future__ import annotations

from importlib import resources
from typing import Any


def _load_names(filename: str) -> frozenset[str]:
    text = resources.files("proxy.policy").joinpath(filename).read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


# pg_catalog functions that neither write nor have side effects outside the statement (see the generator,
# bench/builtin_functions.py, for the rule). Exact names: PostgreSQL's catalog names are case-sensitive.
READ_ONLY_BUILTINS = _load_names("builtin_functions.txt")
# pg_catalog operator names whose every operator runs a non-volatile function.
READ_ONLY_OPERATORS = _load_names("builtin_operators.txt")
# Functions whose arguments decide how a statement is treated (settings they change): never normalised away.
_ARGUMENT_SENSITIVE_FUNCTIONS = frozenset({"set_config"})
# Statements that neither change data nor schema (and may run in a READ ONLY transaction). Not here, though
# they write nothing themselves: FETCH and MOVE run a cursor's query, declared by an earlier statement we
# cannot see from here (`DECLARE c CURSOR FOR SELECT f()`); SET CONSTRAINTS ... IMMEDIATE fires deferred
# constraint triggers (foreign-key checks lock rows; a constraint trigger may call any function).
READ_ONLY_KINDS = frozenset({
    "SELECT", "VALUES", "SHOW", "EXPLAIN", "BEGIN", "START TRANSACTION", "COMMIT", "ROLLBACK", "SAVEPOINT",
    "RELEASE", "ROLLBACK TO", "SET", "RESET", "CLOSE", "DEALLOCATE",
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


class StatementWalk:
    """Collects kinds, tables and functions over libpg_query's JSON parse tree."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.tables: list[str] = []
        self.functions: list[str] = []
        self.is_read_only = True
        self.copy_direction = ""
        self.copy_table = ""
        self.settings: list[tuple[str, str, str | tuple[str, ...] | None]] = []
        self.depends_on_literals = False

    def literal(self, node: Any) -> Any:
        """The value of a literal the classification reads (A_Const, Integer, String, Boolean, Float, or a
        DefElem's arg), recording that a literal decided it. Every read of a literal value goes through here
        (or through `literals`), so that no literal-free cache key can serve a classification it decided."""
        self.depends_on_literals = True
        return _literal_value(node)

    def literals(self, value: Any) -> None:
        """Mark a subtree whose literal values the classification depends on as a whole (SET arguments,
        transaction options, set_config() arguments): helpers that extract their values may come later."""
        self.depends_on_literals = True

    def kind(self, name: str) -> None:
        self.kinds.append(name)
        if name not in READ_ONLY_KINDS:
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
            if self._explain_analyze(body.get("options", [])):
                (inner_tag, inner), = query.items()
                self.kind_of(inner_tag, inner)  # EXPLAIN ANALYZE runs the statement: it counts as that
        elif tag == "CopyStmt":
            self.copy_direction = "FROM" if body.get("is_from") else "TO"
            self.copy_table = _table(body["relation"]) if "relation" in body else ""
            self.kinds.append("COPY")
            self.kind("COPY FROM" if body.get("is_from") else "COPY TO")
            # The target and options are literals: a server file or a shell command is a write outside the
            # database whatever the direction (PostgreSQL allows COPY TO a file in a read-only transaction).
            if body.get("options") or body.get("filename"):
                self.literals(body.get("options"))
            if body.get("is_program"):
                self.kind(f"COPY {self.copy_direction} PROGRAM")
            elif body.get("filename"):
                self.kind(f"COPY {self.copy_direction} FILE")
            if "query" in body:  # COPY (DELETE ... RETURNING *) TO STDOUT runs the DELETE
                (inner_tag, inner), = body["query"].items()
                self.kind_of(inner_tag, inner)
        elif tag in ("PrepareStmt", "DeclareCursorStmt"):
            self.kind("PREPARE" if tag == "PrepareStmt" else "DECLARE CURSOR")
            (inner_tag, inner), = body["query"].items()
            self.kind_of(inner_tag, inner)  # what would run later: PREPARE of a DELETE is a write
        elif tag == "TransactionStmt":
            self.kind(_TRANSACTION_KINDS.get(body.get("kind", ""), "TRANSACTION"))
            self.settings.extend(_setting_changes(self.kinds[-1], body.get("options", ())))
            if body.get("options"):
                self.literals(body["options"])  # BEGIN READ WRITE / ISOLATION LEVEL ...
        elif tag == "VariableSetStmt":
            self.kind("RESET" if str(body.get("kind", "")).startswith("VAR_RESET") else "SET")
            self.literals(body.get("args"))  # SET x = value, SET TRANSACTION READ WRITE, RESET (no args)
            self.settings.extend(_variable_set(body))
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
                if key == "lockingClause" and child:
                    self.is_read_only = False  # FOR UPDATE/SHARE in a CTE or subquery locks rows too
                elif key == "RangeVar":
                    self.tables.append(_table(child))
                elif key in ("relation",) and isinstance(child, dict) and "relname" in child:
                    self.tables.append(_table(child))  # a statement's target: a bare RangeVar body
                elif key == "FuncCall":
                    self.function(child)
                    if _function_name(child) == "set_config":
                        self.settings.append(_set_config(child.get("args", [])))
                elif key == "VariableSetStmt":  # CREATE/ALTER FUNCTION ... SET name = value, ALTER ROLE ... SET
                    self.settings.extend(_variable_set(child))
                elif key == "A_Expr":
                    self.operator(child)
                elif key == "CommonTableExpr":
                    query = child.get("ctequery", {})
                    if query and next(iter(query)) != "SelectStmt":
                        (inner_tag, inner), = query.items()
                        self.kind_of(inner_tag, inner)  # WITH d AS (DELETE ...) SELECT: a DELETE
                self.scan(child)
        elif isinstance(value, list):
            for item in value:
                self.scan(item)


    def function(self, call: dict[str, Any]) -> None:
        """A function call: listed by name; read-only only if it is a known read-only built-in."""
        parts = [p.get("String", {}).get("sval", "") for p in call.get("funcname", [])]
        if not parts:
            return
        self.functions.append(parts[-1].lower())
        schema = parts[0] if len(parts) > 1 else "pg_catalog"
        if len(parts) > 2 or schema != "pg_catalog" or parts[-1] not in READ_ONLY_BUILTINS:
            self.is_read_only = False  # a user function or a built-in that writes: we cannot see what it does
        if parts[-1] in _ARGUMENT_SENSITIVE_FUNCTIONS:
            self.literals(call.get("args"))

    def operator(self, expr: dict[str, Any]) -> None:
        """An operator: read-only only if its name is a read-only built-in operator's (BETWEEN's names are
        keywords for >= and <=). A user's overload of a built-in name on a user type is not seen here."""
        if str(expr.get("kind", "AEXPR_OP")).startswith(("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN")):
            return
        parts = [p.get("String", {}).get("sval", "") for p in expr.get("name", [])]
        if not parts:
            return
        schema = parts[0] if len(parts) > 1 else "pg_catalog"
        if len(parts) > 2 or schema != "pg_catalog" or parts[-1] not in READ_ONLY_OPERATORS:
            self.is_read_only = False

    def _explain_analyze(self, options: list[Any]) -> bool:
        """Whether EXPLAIN runs the statement. Anything but a clear false counts as ANALYZE (the safe side),
        and every ANALYZE option counts: PostgreSQL 15 takes the last of `(ANALYZE 0, ANALYZE 1)`."""
        analyze = False
        for option in options:
            elem = option.get("DefElem", {})
            if elem.get("defname") != "analyze":
                continue
            arg = elem.get("arg")
            if arg is None:
                return True
            value = self.literal(arg)
            if isinstance(value, bool | int):
                analyze = analyze or bool(value)
            else:
                analyze = analyze or str(value).lower() not in ("false", "off", "0", "no")
        return analyze


NOT_LITERAL = "\x00not a literal"  # a setting value we cannot read from the text (NUL never reaches the parser)
_MULTI_SETTINGS = {"TRANSACTION": "", "SESSION CHARACTERISTICS": "default_"}  # SET TRANSACTION / SESSION ...


def _literal(node: Any) -> str:
    """A constant's text as PostgreSQL would pass it to a setting (through casts), else NOT_LITERAL."""
    while isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    const = node.get("A_Const") if isinstance(node, dict) else None
    if not isinstance(const, dict):
        return NOT_LITERAL
    if "sval" in const:
        return str(const["sval"].get("sval", ""))
    if "ival" in const:
        return str(const["ival"].get("ival", 0))  # libpg_query leaves out a zero ival
    if "fval" in const:
        return str(const["fval"].get("fval", ""))
    if "boolval" in const:
        return "true" if const["boolval"].get("boolval") else "false"
    return NOT_LITERAL  # NULL


def _setting_changes(how: str, options: Any, prefix: str = "") -> list[tuple[str, str, str | tuple[str, ...]]]:
    """Transaction modes (BEGIN READ WRITE, SET TRANSACTION ...) as the settings they set."""
    found: list[tuple[str, str, str | tuple[str, ...]]] = []
    for option in options or ():
        elem = option.get("DefElem", {}) if isinstance(option, dict) else {}
        if elem.get("defname"):
            found.append((how, prefix + str(elem["defname"]).lower(), (_literal(elem.get("arg")),)))
    return found


def _variable_set(body: dict[str, Any]) -> list[tuple[str, str, str | tuple[str, ...] | None]]:
    kind, name = str(body.get("kind", "")), str(body.get("name", ""))
    if kind == "VAR_SET_MULTI":
        if name not in _MULTI_SETTINGS:
            return []  # SET TRANSACTION SNAPSHOT
        return list(_setting_changes(f"SET {name}", body.get("args"), _MULTI_SETTINGS[name]))
    if kind == "VAR_SET_VALUE":
        return [("SET", name.lower(), tuple(_literal(a) for a in body.get("args", ())))]
    if kind in ("VAR_SET_DEFAULT", "VAR_RESET", "VAR_SET_CURRENT"):
        return [("SET", name.lower(), None)]  # back to the session's startup value, or kept as it is
    return []  # RESET ALL: every setting back to its startup value


def _set_config(args: list[Any]) -> tuple[str, str, str]:
    name = _literal(args[0]) if len(args) == 3 else NOT_LITERAL
    value = _literal(args[1]) if len(args) == 3 else NOT_LITERAL
    return ("set_config", "*" if name == NOT_LITERAL else name.lower(), value)



def _function_name(call: dict[str, Any]) -> str:
    parts = [p.get("String", {}).get("sval", "") for p in call.get("funcname", [])]
    return parts[-1].lower() if parts else ""


def _literal_value(node: Any) -> Any:
    """A literal node's Python value. libpg_query's JSON leaves out zero / false / empty values."""
    if not isinstance(node, dict):
        return node
    if "A_Const" in node:
        node = node["A_Const"]
    for key, field in (("Integer", "ival"), ("ival", "ival"), ("Float", "fval"), ("fval", "fval"),
                       ("Boolean", "boolval"), ("boolval", "boolval"), ("String", "sval"), ("sval", "sval")):
        if key in node:
            inner = node[key]
            value = inner.get(field) if isinstance(inner, dict) else inner
            if value is None:
                return {"ival": 0, "fval": "0", "boolval": False, "sval": ""}[field]
            return value
    return None


def _table(range_var: dict[str, Any]) -> str:
    name = str(range_var.get("relname", ""))
    schema = range_var.get("schemaname")
    return f"{schema}.{name}" if schema else name


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
