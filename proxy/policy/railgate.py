"""The per-query half of the guard rails: refuse requests that would change a setting a rail locks.

Asked by ConnectionPolicy before the policy rules, so a refusal takes the gate's usual denial path (42501).
What counts as changing a locked setting: SET / SET LOCAL / SET SESSION of it, set_config() of it (or of a
name that is not a literal), BEGIN / START TRANSACTION / SET TRANSACTION / SET SESSION CHARACTERISTICS
READ WRITE against readOnly, a CREATE FUNCTION ... SET clause for it, a write to pg_settings (its rule calls
set_config), a DO block or a built-in that runs SQL text (query_to_xml, ts_stat, ts_rewrite: any of them
can call set_config where no one can see), a fast-path FunctionCall of set_config, and with readOnly a
COMMIT followed by more statements in one Query. Setting the rail's own value, RESET and SET ... TO DEFAULT
(back to the startup value, which is the rail's) are allowed, except for transaction_read_only, whose RESET
makes the transaction read-write.
"""

from __future__ import annotations

import json

from pglast import parser

from proxy.guardrails import TRANSACTION_END_KINDS, Lock, keeps_rail, locked_settings, rail_denied
from proxy.policy.classify import NOT_LITERAL, Classification, classify_exact
from proxy.snapshot import GuardRails

SET_CONFIG_OID = 2078  # pg_proc: set_config(text, text, boolean)
RULE_PREFIX = "guardRails."  # a Decision whose rule starts so is a rail's: its reason is the whole message
_MAX_REMEMBERED = 1024
# RESET / SET ... TO DEFAULT return a setting to its startup value (the rail's), except these, which go back
# to the server's built-in default: `BEGIN; RESET transaction_read_only; INSERT ...` writes in PostgreSQL 15.
_RESET_TO_BOOT = frozenset({"transaction_read_only"})
_WRITES = frozenset({"UPDATE", "INSERT", "DELETE", "MERGE"})
# Built-in functions that run a query given as text (through SPI): set_config() inside it is out of sight.
_RUNS_SQL_TEXT = frozenset({"query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema", "ts_stat",
                            "ts_rewrite"})
_ENDS = frozenset({"TRANS_STMT_COMMIT", "TRANS_STMT_PREPARE"})


RailDecision = tuple[str, str]  # (rail, the whole refusal message); engine.py makes it a Decision


class RailGate:
    """The locked settings of one config; shared by its sessions (immutable but for a memo by exact text)."""

    def __init__(self, rails: GuardRails, config: str) -> None:
        self.config = config
        self._read_only = rails.read_only
        # Statement kinds to look into: DO always, transaction ends with readOnly.
        self._kinds = frozenset({"DO"}) | (TRANSACTION_END_KINDS if rails.read_only else frozenset())
        self._locks = locked_settings(rails)
        self._first_rail = next(iter(self._locks.values())).rail if self._locks else ""
        self._by_text: dict[str, RailDecision | None] = {}
        self._plain: dict[int, Classification] = {}  # classifications that change no setting, by id

    def check(self, sql: str, c: Classification) -> RailDecision | None:
        """The refusal for this statement text, or None when it leaves every locked setting alone."""
        if self._plain.get(id(c)) is c:
            return None  # the common case: a classification (one per query shape) already found plain
        if not c.settings and self._kinds.isdisjoint(c.kinds) and _RUNS_SQL_TEXT.isdisjoint(c.functions) and (
                _WRITES.isdisjoint(c.kinds) or not any(t.endswith("pg_settings") for t in c.tables)):
            if len(self._plain) >= _MAX_REMEMBERED:
                self._plain.clear()
            self._plain[id(c)] = c  # held, so its id is not reused while remembered
            return None
        if sql in self._by_text:
            return self._by_text[sql]
        # Values are read from this exact text: a cached Classification may stand for texts that differ
        # only in literals, and a literal is exactly what tells `SET statement_timeout = 0` from the rail's.
        decision = self._decide(classify_exact(sql), sql)
        if len(self._by_text) >= _MAX_REMEMBERED:
            self._by_text.clear()
        self._by_text[sql] = decision
        return decision

    def check_function_call(self, oid: int) -> RailDecision | None:
        if oid != SET_CONFIG_OID or not self._first_rail:
            return None
        return self._deny("function call set_config", self._first_rail)

    def _decide(self, c: Classification, sql: str) -> RailDecision | None:
        if "DO" in c.kinds and self._locks:
            return self._deny("DO", self._first_rail)
        if self._locks and not _RUNS_SQL_TEXT.isdisjoint(c.functions):
            found = sorted(_RUNS_SQL_TEXT.intersection(c.functions))[0]
            return self._deny(f"{found}() (it runs SQL text, which could call set_config)", self._first_rail)
        if _WRITES.intersection(c.kinds) and any(t.split(".")[-1] == "pg_settings" for t in c.tables):
            # pg_settings' update rule calls set_config(): `UPDATE pg_settings SET setting = ...` is a SET.
            return self._deny("writing pg_settings", self._first_rail)
        if self._read_only and not TRANSACTION_END_KINDS.isdisjoint(c.kinds) and _commits_before_more(sql):
            return self._deny("COMMIT followed by more statements in one query", "readOnly")
        for how, name, value in c.settings:
            if name == "*":  # set_config(<not a literal>, ...): it could be any of them
                if self._first_rail:
                    return self._deny("set_config with a setting name that is not a literal", self._first_rail)
                continue
            lock = self._locks.get(name)
            if lock is None or (value is None and name not in _RESET_TO_BOOT) or (
                    value is not None and _keeps(lock, value)):
                continue
            if name.endswith("transaction_read_only") and how != "SET" and how != "set_config":
                what = f"{how} READ WRITE" if how != "SET SESSION CHARACTERISTICS" else (
                    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
            else:
                what = f"{how} {name}" if how == "SET" else f"{how}({name})"
            return self._deny(what, lock.rail)
        return None

    def _deny(self, what: str, rail: str) -> RailDecision:
        return rail, rail_denied(what, rail, self.config)


def _commits_before_more(sql: str) -> bool:
    """A COMMIT (or PREPARE TRANSACTION) with more statements after it in one Query.

    The statements after it run in a new transaction, read-only or not by default_transaction_read_only as
    a statement before the COMMIT may have left it; the server reports that change only with the Query's
    ReadyForQuery, too late to stop them. (COMMIT AND CHAIN keeps the transaction read-only; ROLLBACK
    undoes the change.)
    """
    try:
        statements = json.loads(parser.parse_sql_json(sql)).get("stmts", [])
    except Exception:  # noqa: BLE001 - the classifier has judged it already; refuse what we cannot read
        return True
    for i, raw in enumerate(statements):
        stmt = raw.get("stmt", {}).get("TransactionStmt", {})
        if stmt.get("kind") in _ENDS and not stmt.get("chain") and i + 1 < len(statements):
            return True
    return False


def _keeps(lock: Lock, value: str | tuple[str, ...]) -> bool:
    if value == NOT_LITERAL or (isinstance(value, tuple) and NOT_LITERAL in value):
        return False
    return keeps_rail(lock, value)
