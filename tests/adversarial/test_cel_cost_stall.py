"""A query whose inputs are larger than a rule was checked for must be denied quickly, not stall the proxy.

The rule below passes the compile-time cost check (it assumes short lists), but a query naming thousands of
relations makes it iterate thousands x attrs times: seconds of a frozen event loop before the run-time
budget, during which every other session waits, and then the write was allowed. Now the evaluation stops
at its budget and the rule fails closed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.proxy_harness import MANIFESTS, ProxyHarness, start_harness

RULE = "ctx.request.postgres.statement.tables.exists(t, attrs.protected.exists(p, t.startsWith(p)))"
PROTECTED = ", ".join(f'"secret_{i}"' for i in range(12))
GUARDED = MANIFESTS + f"""\
---
kind: Service
metadata: {{{{name: guarded}}}}
spec:
  mode: POSTGRES
  authorization: {{{{policies: [protected-tables]}}}}
  config:
    upstream: {{{{url: "postgres://{{host}}:{{port}}"}}}}
    postgres: {{{{user: full_access, database: my_db, auth: {{{{password: {{{{fromSecret: full-access-password}}}}}}}},
               authorization: {{{{mode: ALL}}}}}}}}
---
kind: Policy
metadata: {{{{name: protected-tables}}}}
spec:
  attrs: {{{{protected: [{PROTECTED}]}}}}
  rules:
    - name: no-protected
      effect: DENY
      condition: {{{{match: '{RULE}'}}}}
    - name: the-rest
      effect: ALLOW
      priority: 4
      condition: {{{{matchAny: true}}}}
"""
MARK = "cel-budget"


@pytest.fixture(scope="module")
def guarded(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("cel-cost"), manifests_text=GUARDED, name="celcost")
    yield harness
    stop()


def many_relations_insert(count: int) -> str:
    """An INSERT that names `count` distinct relations (CTEs, so PostgreSQL runs it without any table)."""
    names = [f"r{i}" for i in range(count)]
    ctes = ", ".join(f"{n} AS (SELECT 1 AS x)" for n in names)
    reads = ", ".join(f"(SELECT x FROM {n})" for n in names)  # a flat list: the parse tree stays shallow
    return f"WITH {ctes} INSERT INTO items(name) SELECT '{MARK}' WHERE 1 = ALL (ARRAY[{reads}])"


def test_a_query_naming_thousands_of_relations_is_denied_and_others_are_served(guarded: ProxyHarness,
                                                                               pg: Any) -> None:
    pg.psql(f"DELETE FROM items WHERE name = '{MARK}'")
    outcome: dict[str, Any] = {}

    def attack() -> None:
        with psycopg.connect(guarded.dsn("bob", "guarded"), autocommit=True) as conn:
            try:
                conn.execute(many_relations_insert(3000))
                outcome["result"] = "executed"
            except psycopg.Error as exc:
                outcome["result"] = exc

    attacker = threading.Thread(target=attack)
    with psycopg.connect(guarded.dsn("bob", "guarded"), autocommit=True) as other:
        attacker.start()
        served = [other.execute("SELECT 1").fetchone() for _ in range(20)]
        attacker.join(60)
    assert served == [(1,)] * 20
    error = outcome["result"]
    assert isinstance(error, psycopg.errors.InsufficientPrivilege), error
    assert 'policy "protected-tables" rule "no-protected" failed to evaluate' in str(error)
    assert "exceeded its budget" in str(error)
    assert int(pg.psql(f"SELECT count(*) FROM items WHERE name = '{MARK}'").strip()) == 0  # nothing written
    # An ordinary write (few relations) is still decided by the rules as written.
    with psycopg.connect(guarded.dsn("bob", "guarded"), autocommit=True) as conn:
        conn.execute(f"INSERT INTO items(name) VALUES ('{MARK}')")
    assert int(pg.psql(f"SELECT count(*) FROM items WHERE name = '{MARK}'").strip()) == 1
    pg.psql(f"DELETE FROM items WHERE name = '{MARK}'")
