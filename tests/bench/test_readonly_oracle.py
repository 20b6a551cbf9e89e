"""The readOnly oracle on a subset: no statement classify() calls read-only is refused by PostgreSQL with 25006.

The full corpus runs with `python -m bench.readonly_oracle`; here the seed of misjudged classes and a few
regression files that exercise read-only edges (data-modifying CTEs, SELECT INTO, advisory locks, prepared
statements), on a throwaway PostgreSQL 15 of the test's own (regression SQL creates roles and settings).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import readonly_oracle
from proxy.policy import classify as classify_module
from proxy.policy.classify import Classification
from tests.support.pgcluster import TempCluster

SUBSET = ("test_setup.sql", "advisory_lock.sql", "select_into.sql", "prepare.sql", "with.sql")


@pytest.fixture(scope="module")
def oracle_dsn() -> Iterator[str]:
    with TempCluster() as cluster:
        yield cluster.dsn("postgres", "postgres")


def _fresh_database(dsn: str, name: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.replace("/postgres?", f"/{name}?")


def test_no_statement_called_read_only_is_refused_by_postgresql(oracle_dsn: str) -> None:
    directory = readonly_oracle.corpus_dir()
    files = [directory / name for name in SUBSET]
    matrix = readonly_oracle.run(_fresh_database(oracle_dsn, "oracle_subset"), files)
    assert matrix.false_read_only == [], matrix.render()
    assert matrix.counts[(True, "accepted")] > 100  # it did run statements read-only
    # and PostgreSQL did refuse writes: the not-read-only side of the seed and the files
    assert matrix.counts[(False, readonly_oracle.READ_ONLY_SQL_TRANSACTION)] > 50


def test_the_oracle_catches_a_classifier_that_calls_writes_read_only(
        oracle_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = classify_module.classify

    def everything_read_only(sql: str) -> Classification:
        found = real(sql)
        return Classification(kinds=found.kinds, tables=found.tables, functions=found.functions, is_read_only=True,
                              fingerprint=found.fingerprint)

    monkeypatch.setattr(readonly_oracle, "classify", everything_read_only)
    matrix = readonly_oracle.run(_fresh_database(oracle_dsn, "oracle_broken"), [])
    refused = {" ".join(s.sql.split()) for s, _ in matrix.false_read_only}
    assert "SELECT * FROM oracle_t FOR UPDATE" in refused
    assert "SELECT nextval('oracle_s')" in refused
    assert "SELECT oracle_writes()" in refused
    assert "FETCH oracle_c" in refused  # the cursor's query writes
    assert "EXPLAIN (ANALYZE 0, ANALYZE 1) DELETE FROM oracle_t WHERE id = 0" in refused  # the last one counts
    assert "SET CONSTRAINTS ALL IMMEDIATE" in refused  # a deferred foreign-key check locks rows
