"""The per-query half of the guard rails: refuse requests that would change a setting a rail locks.

Asked by SessionPolicy before the policy rules, so a refusal takes the gate's usual denial path (42501).
What counts as changing a locked setting: SET / SET LOCAL / SET SESSION of it, set_config() of it (or of a
name that is not a literal), BEGIN / START TRANSACTION / SET TRANSACTION / SET SESSION CHARACTERISTICS
READ WRITE against readOnly, a CREATE FUNCTION ... SET clause for it, a DO block (anonymous code can call
set_config where no one can see), and a fast-path FunctionCall of set_config. Setting the rail's own value,
RESET and SET ... TO DEFAULT (back to the startup value, which is the rail's) are allowed, except for
transaction_read_only, whose RESET makes the transaction read-write.
"""

from __future__ import annotations

from proxy.guardrails import Lock, keeps_rail, locked_settings, rail_denied
from proxy.policy.classify import NOT_LITERAL, Classification, classify_exact
from proxy.snapshot import GuardRails

SET_CONFIG_OID = 2078  # pg_proc: set_config(text, text, boolean)
RULE_PREFIX = "guardRails."  # a Decision whose rule starts so is a rail's: its reason is the whole message
_MAX_REMEMBERED = 1024
# RESET / SET ... TO DEFAULT return a setting to its startup value (the rail's), except these, which go back
# to the server's built-in default: `BEGIN; RESET transaction_read_only; INSERT ...` writes in PostgreSQL 15.
_RESET_TO_BOOT = frozenset({"transaction_read_only"})


RailDecision = tuple[str, str]  # (rail, the whole refusal message); engine.py makes it a Decision


class RailGate:
    """The locked settings of one config; shared by its sessions (immutable but for a memo by exact text)."""

    def __init__(self, rails: GuardRails, config: str) -> None:
        self.config = config
        self._locks = locked_settings(rails)
        self._first_rail = next(iter(self._locks.values())).rail if self._locks else ""
        self._by_text: dict[str, RailDecision | None] = {}

    def check(self, sql: str, c: Classification) -> RailDecision | None:
        """The refusal for this statement text, or None when it leaves every locked setting alone."""
        if not c.settings and "DO" not in c.kinds:
            return None  # the common case: the cached classification shows no setting change at all
        if sql in self._by_text:
            return self._by_text[sql]
        # Values are read from this exact text: a cached Classification may stand for texts that differ
        # only in literals, and a literal is exactly what tells `SET statement_timeout = 0` from the rail's.
        decision = self._decide(classify_exact(sql))
        if len(self._by_text) >= _MAX_REMEMBERED:
            self._by_text.clear()
        self._by_text[sql] = decision
        return decision

    def check_function_call(self, oid: int) -> RailDecision | None:
        if oid != SET_CONFIG_OID or not self._first_rail:
            return None
        return self._deny("function call set_config", self._first_rail)

    def _decide(self, c: Classification) -> RailDecision | None:
        if "DO" in c.kinds and self._locks:
            return self._deny("DO", self._first_rail)
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


def _keeps(lock: Lock, value: str | tuple[str, ...]) -> bool:
    if value == NOT_LITERAL or (isinstance(value, tuple) and NOT_LITERAL in value):
        return False
    return keeps_rail(lock, value)
