"""Names of prepared statements and cursors that SQL creates, runs and drops (classify().names)."""

from __future__ import annotations

from proxy.policy.classify import classify
from proxy.policy.sqlnames import SqlNames


def test_statements_that_touch_no_names_have_none() -> None:
    assert classify("SELECT 'ExecuteStmt', 1 FROM items").names is None
    assert classify("UPDATE items SET name = 'x' WHERE id = 1").names is None


def test_names_as_the_server_sees_them() -> None:
    assert classify('PREPARE P AS DELETE FROM items; EXECUTE "Q"(1)').names == SqlNames(prepares=("p",),
                                                                                         executes=("Q",))
    assert classify("EXPLAIN ANALYZE EXECUTE p").names == SqlNames(executes=("p",))
    assert classify("CREATE TABLE t AS EXECUTE p").names == SqlNames(executes=("p",))
    assert classify("DECLARE c CURSOR WITH HOLD FOR SELECT 1; FETCH 2 FROM c; MOVE d; CLOSE e").names == SqlNames(
        declares=("c",), fetches=("c", "d"), closes=("e",))
    assert classify("DEALLOCATE p").names == SqlNames(deallocates=("p",))
    assert classify("DEALLOCATE ALL").names == SqlNames(drops_all_statements=True)
    assert classify("CLOSE ALL").names == SqlNames(drops_all_portals=True)
    assert classify("DISCARD ALL").names == SqlNames(drops_all_statements=True, drops_all_portals=True)
    assert classify("DISCARD PLANS").names is None
