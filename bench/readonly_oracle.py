"""A differential oracle for `statement.readOnly`: classify() against PostgreSQL's own read-only check.

    python -m bench.readonly_oracle [--corpus DIR] [--dsn DSN] [--files N] [--match SUBSTRING] [--show N]

Corpus: PostgreSQL's regression SQL as libpg_query vendors it (test/sql/postgres_regress/*.sql), taken from
the sdist of the installed pglast version, fetched from the package index (PEP 503 simple API, sha256
checked) and cached under ~/.cache/pgwarden/; `--corpus DIR` uses a directory of .sql files instead. psql
meta-commands are dropped; `COPY ... FROM stdin` runs with its inline data; files are split into
statements with libpg_query's scanner (pglast.parser.split).

Every file runs, statement by statement and in order, in one throwaway PostgreSQL 15 database (started
here unless --dsn names one), each file on a fresh connection. Each statement is first tried read-only:
`BEGIN READ ONLY; <stmt>; COMMIT` when no transaction is open (ROLLBACK if it failed), or inside the file's
own open transaction `SAVEPOINT; SET LOCAL transaction_read_only = on; <stmt>; ROLLBACK TO SAVEPOINT`.
A statement the read-only try did not keep then runs normally, so that setup statements create what later
ones use. Transaction control (BEGIN, COMMIT, SAVEPOINT, ...) just runs, counted as untested, and so does
every statement of a file whose transaction has already failed.

Prints the confusion matrix: classified read-only / not read-only x PostgreSQL accepted it read-only /
refused it with 25006 (read_only_sql_transaction) / another error. A statement classified read-only that
PostgreSQL refused with 25006 is a false "read-only"; the exit status is 1 when there is any.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psycopg
from pglast import parser

from proxy.policy.classify import Classification, classify

READ_ONLY_SQL_TRANSACTION = "25006"
TRANSACTION_CONTROL = frozenset({
    "BEGIN", "START TRANSACTION", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "ROLLBACK TO",
    "PREPARE TRANSACTION", "COMMIT PREPARED", "ROLLBACK PREPARED",
})
CORPUS_MEMBER = re.compile(r"^[^/]+/libpg_query/test/sql/postgres_regress/[^/]+\.sql$")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pgwarden"
# Statement and lock timeouts: a regression file may sleep or wait on itself; it must not stall the run.
SESSION_OPTIONS = "-c statement_timeout=5000 -c lock_timeout=2000 -c client_min_messages=error"


# --- corpus ------------------------------------------------------------------------------------------------


def corpus_dir() -> Path:
    """The regression SQL of the installed pglast's sdist, fetched once and cached."""
    version = metadata.version("pglast")
    target = CACHE / f"postgres_regress-pglast-{version}"
    if target.is_dir() and any(target.glob("*.sql")):
        return target
    sdist = _download_sdist("pglast", version)
    tmp = target.with_name(target.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and CORPUS_MEMBER.match(member.name):
                extracted = tar.extractfile(member)
                assert extracted is not None
                (tmp / Path(member.name).name).write_bytes(extracted.read())
    if not any(tmp.glob("*.sql")):
        raise RuntimeError(f"pglast {version}'s sdist holds no libpg_query/test/sql/postgres_regress/*.sql")
    tmp.rename(target)
    return target


def _package_index() -> str:
    """The index pip itself uses: $PIP_INDEX_URL, pip's configured index-url, else pip's default."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                capture_output=True, text=True)
    if configured.returncode == 0 and configured.stdout.strip():
        return configured.stdout.strip().rstrip("/")
    from pip._internal.models.index import PyPI  # pip's own default, so no index is named here

    return str(PyPI.simple_url).rstrip("/")


def _download_sdist(name: str, version: str) -> bytes:
    index = _package_index()
    page = urllib.request.urlopen(f"{index}/{name}/", timeout=60).read().decode()
    wanted = re.compile(rf'href="([^"]*/{re.escape(name)}-{re.escape(version)}\.tar\.gz)#sha256=([0-9a-f]{{64}})"')
    found = wanted.search(page)
    if found is None:
        raise RuntimeError(f"{index}/{name}/ lists no sdist {name}-{version}.tar.gz with a sha256")
    url, digest = found.groups()
    if url.startswith("/") or "://" not in url:
        url = urllib.parse.urljoin(f"{index}/{name}/", url)
    data = urllib.request.urlopen(url, timeout=120).read()
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"{url}: sha256 does not match the index")
    return data


@dataclass(frozen=True, slots=True)
class Statement:
    file: str
    sql: str
    copy_data: str | None = None  # rows for COPY ... FROM stdin


_META = re.compile(r"^\s*\\")  # a psql meta-command line (\set, \d, \c, \gset, ...)
_COPY_FROM_STDIN = re.compile(r"(?is)(?:^|;)\s*(copy\b[^;]*\bfrom\s+stdin\b[^;]*;)\s*$")


def statements(path: Path) -> Iterator[Statement]:
    """The statements of one regression file."""
    return statements_of(path.name, path.read_text(encoding="utf-8", errors="replace"))


def statements_of(name: str, text: str) -> Iterator[Statement]:
    """The statements of a psql script, meta-commands dropped, COPY data attached."""
    pending: list[str] = []
    data: list[str] | None = None
    copy_sql = ""
    for line in text.splitlines():
        if data is not None:
            if line.strip() == "\\.":
                yield Statement(name, copy_sql, "".join(f"{row}\n" for row in data))
                data = None
            else:
                data.append(line)
            continue
        if _META.match(line):
            continue
        pending.append(line)
        if line.rstrip().endswith(";"):
            text = "\n".join(pending)
            copy = _COPY_FROM_STDIN.search(text)
            if copy is not None:
                yield from _split(name, text[:copy.start(1)])
                copy_sql, data, pending = copy.group(1).rstrip(";"), [], []
    yield from _split(name, "\n".join(pending))


def _split(name: str, text: str) -> Iterator[Statement]:
    if not text.strip():
        return
    try:
        parts = parser.split(text, with_parser=False)
    except Exception:  # noqa: BLE001 - the scanner refused the chunk (an unterminated quote): skip it whole
        return
    for sql in parts:
        yield Statement(name, sql)


# Statements written for the classes the classifier once got wrong (issue 10, class 4), run first: the
# writes that hide in a SELECT (FOR UPDATE in a CTE or subquery, side-effecting built-ins, user functions),
# COPY to a server file or program, EXPLAIN option literals, and the read-only statements next to them.
SEED_SQL = """
CREATE TABLE oracle_t (id int PRIMARY KEY, v text);
INSERT INTO oracle_t VALUES (1, 'a'), (2, 'b');
CREATE SEQUENCE oracle_s;
CREATE FUNCTION oracle_writes() RETURNS int LANGUAGE sql AS 'INSERT INTO oracle_t VALUES (3, ''c'') RETURNING 1';
CREATE FUNCTION oracle_reads() RETURNS int LANGUAGE sql STABLE AS 'SELECT count(*)::int FROM oracle_t';
SELECT * FROM oracle_t WHERE id = 1;
SELECT * FROM oracle_t FOR UPDATE;
WITH locked AS (SELECT * FROM oracle_t FOR UPDATE) SELECT * FROM locked;
SELECT * FROM (SELECT * FROM oracle_t FOR SHARE) s;
SELECT * FROM oracle_t WHERE id IN (SELECT id FROM oracle_t FOR NO KEY UPDATE);
WITH gone AS (DELETE FROM oracle_t WHERE id = 2 RETURNING *) SELECT * FROM gone;
EXPLAIN (ANALYZE 0) DELETE FROM oracle_t;
EXPLAIN (ANALYZE 1) DELETE FROM oracle_t WHERE id = 0;
EXPLAIN (ANALYZE 0, ANALYZE 1) DELETE FROM oracle_t WHERE id = 0;
EXPLAIN (ANALYZE 'off') UPDATE oracle_t SET v = 'x';
EXPLAIN (ANALYZE 'on') UPDATE oracle_t SET v = 'x' WHERE id = 0;
SELECT nextval('oracle_s');
SELECT setval('oracle_s', 5);
SELECT currval('oracle_s');
SELECT oracle_writes();
SELECT oracle_reads();
SELECT public.oracle_reads();
SELECT set_config('search_path', 'public', false);
SELECT pg_notify('oracle', 'x');
SELECT pg_advisory_lock(1);
SELECT pg_advisory_unlock(1);
SELECT pg_try_advisory_xact_lock(2);
SELECT txid_current();
SELECT pg_current_xact_id();
SELECT lo_create(0);
SELECT lower(v), count(*), now(), random() FROM oracle_t GROUP BY 1;
SELECT pg_catalog.upper('x'), current_setting('search_path');
COPY oracle_t TO STDOUT;
COPY (SELECT * FROM oracle_t) TO STDOUT;
COPY (SELECT 1) TO PROGRAM 'cat > /dev/null';
COPY oracle_t TO '/dev/null';
SET default_transaction_read_only = off;
SHOW default_transaction_read_only;
PREPARE oracle_p AS SELECT * FROM oracle_t;
EXECUTE oracle_p;
DEALLOCATE oracle_p;
VALUES (1), (2);
SELECT * INTO oracle_copy FROM oracle_t;
CREATE TABLE oracle_parent (id int PRIMARY KEY);
CREATE TABLE oracle_child (p int REFERENCES oracle_parent DEFERRABLE INITIALLY DEFERRED);
BEGIN;
INSERT INTO oracle_parent VALUES (1);
INSERT INTO oracle_child VALUES (1);
SET CONSTRAINTS ALL IMMEDIATE;
COMMIT;
BEGIN;
DECLARE oracle_c CURSOR FOR SELECT oracle_writes();
FETCH oracle_c;
MOVE oracle_c;
CLOSE oracle_c;
COMMIT;
"""


def ordered_files(directory: Path) -> list[Path]:
    """test_setup first (it creates the tables most files read), then the rest by name."""
    files = sorted(directory.glob("*.sql"))
    return sorted(files, key=lambda p: p.name != "test_setup.sql")


# --- running -----------------------------------------------------------------------------------------------


@dataclass
class Matrix:
    """Counts by (classified read-only?, outcome of the read-only try)."""

    counts: Counter[tuple[bool, str]] = field(default_factory=Counter)
    false_read_only: list[tuple[Statement, str]] = field(default_factory=list)
    other_errors: Counter[str] = field(default_factory=Counter)
    # Why statements PostgreSQL ran read-only were classified not read-only (the safe side, but a cost).
    conservative: Counter[str] = field(default_factory=Counter)

    def add(self, read_only: bool, outcome: str) -> None:
        self.counts[(read_only, outcome)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def render(self) -> str:
        columns = ("accepted", "25006", "other error", "untested")
        lines = [f"{'':26}" + "".join(f"{c:>13}" for c in columns) + f"{'total':>9}"]
        for read_only, label in ((True, "classified read-only"), (False, "classified not read-only")):
            row = [self.counts[(read_only, c)] for c in columns]
            lines.append(f"{label:26}" + "".join(f"{n:>13}" for n in row) + f"{sum(row):>9}")
        return "\n".join(lines)


class Runner:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.matrix = Matrix()

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        # A statement that crashes its backend puts the server through crash recovery: wait it out.
        deadline = time.monotonic() + 60
        while True:
            try:
                return psycopg.connect(self.dsn, autocommit=True, options=SESSION_OPTIONS)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def run_file(self, items: Iterable[Statement]) -> None:
        conn = self.connect()
        try:
            for statement in items:
                if not _usable(conn):  # the file ended its own backend (pg_terminate_backend)
                    conn.close()
                    conn = self.connect()
                self.run_one(conn, statement)
        finally:
            conn.close()

    def run_one(self, conn: psycopg.Connection[tuple[object, ...]], statement: Statement) -> None:
        c = classify(statement.sql)
        status = conn.info.transaction_status
        if set(c.kinds) <= TRANSACTION_CONTROL or status == psycopg.pq.TransactionStatus.INERROR:
            self.matrix.add(c.is_read_only, "untested")
            _execute(conn, statement)
            return
        in_transaction = status == psycopg.pq.TransactionStatus.INTRANS
        kept = False
        try:
            if in_transaction:
                conn.execute("SAVEPOINT readonly_oracle")
                conn.execute("SET LOCAL transaction_read_only = on")
            else:
                conn.execute("BEGIN READ ONLY")
            _execute(conn, statement, raise_errors=True)
            outcome = "accepted"
        except psycopg.Error as exc:
            outcome = _outcome(exc)
            if outcome == READ_ONLY_SQL_TRANSACTION and c.is_read_only:
                self.matrix.false_read_only.append((statement, str(exc).splitlines()[0]))
            elif outcome == "other error" and c.is_read_only:
                self.matrix.other_errors[exc.sqlstate or "(none)"] += 1
        self.matrix.add(c.is_read_only, outcome)
        if outcome == "accepted" and not c.is_read_only:
            self.matrix.conservative[_reason(c)] += 1
        if not _usable(conn):
            return
        try:
            if in_transaction:
                conn.execute("ROLLBACK TO SAVEPOINT readonly_oracle")
                conn.execute("RELEASE SAVEPOINT readonly_oracle")
            elif conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS and outcome == "accepted":
                conn.execute("COMMIT")  # keep what the statement set up (SET, PREPARE, ...): no rerun needed
                kept = True
            elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            if _usable(conn) and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                _quietly(conn, "ROLLBACK")
        if not kept and _usable(conn):
            _execute(conn, statement)  # for real, so that later statements find what it creates


def _reason(c: Classification) -> str:
    """The first thing that made `c` not read-only: a kind, else the functions it calls."""
    from proxy.policy.statement_walk import READ_ONLY_BUILTINS, READ_ONLY_KINDS

    for kind in c.kinds:
        if kind not in READ_ONLY_KINDS and kind != "COPY":  # "COPY" goes with "COPY TO" / "COPY FROM"
            return kind
    unknown = [f for f in c.functions if f not in READ_ONLY_BUILTINS]
    return "function " + (unknown[0] if unknown else "(qualified or quoted)") if c.functions else "row lock or operator"


def _outcome(exc: psycopg.Error) -> str:
    return READ_ONLY_SQL_TRANSACTION if exc.sqlstate == READ_ONLY_SQL_TRANSACTION else "other error"


def _usable(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    status = conn.info.transaction_status
    return not (conn.closed or conn.broken) and status not in (psycopg.pq.TransactionStatus.ACTIVE,
                                                              psycopg.pq.TransactionStatus.UNKNOWN)


def _execute(conn: psycopg.Connection[tuple[object, ...]], statement: Statement, *, raise_errors: bool = False) -> None:
    kinds = classify(statement.sql).kinds
    is_copy_stdio = "COPY" in kinds and not any(k.endswith(("PROGRAM", "FILE")) for k in kinds)
    try:
        with conn.cursor() as cur:
            if is_copy_stdio:  # COPY ... FROM STDIN / TO STDOUT: the copy sub-protocol
                with cur.copy(statement.sql) as copy:
                    if statement.copy_data is not None:
                        copy.write(statement.copy_data)
                    elif "COPY TO" in kinds:
                        for _ in copy:
                            pass
            else:
                cur.execute(statement.sql.encode(), prepare=False)
    except psycopg.Error:
        if raise_errors:
            raise


def _quietly(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> None:
    try:
        conn.execute(sql)
    except psycopg.Error:
        pass


def run(dsn: str, files: list[Path], *, seed: bool = True, progress: bool = False) -> Matrix:
    runner = Runner(dsn)
    if seed:
        runner.run_file(statements_of("(seed)", SEED_SQL))
    for path in files:
        if progress:
            print(f"{path.name} ({runner.matrix.total} statements so far)", file=sys.stderr, flush=True)
        runner.run_file(statements(path))
    return runner.matrix


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser_ = argparse.ArgumentParser(prog="python -m bench.readonly_oracle", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_.add_argument("--corpus", type=Path, help="a directory of .sql files (default: pglast's sdist)")
    parser_.add_argument("--dsn", help="a superuser DSN of a throwaway PostgreSQL 15 (default: start one)")
    parser_.add_argument("--files", type=int, default=0, help="run only the first N files")
    parser_.add_argument("--match", default="", help="run only files whose name contains this")
    parser_.add_argument("--show", type=int, default=20, help="false read-only statements to print")
    parser_.add_argument("--progress", action="store_true", help="name each file on stderr as it starts")
    args = parser_.parse_args(argv)
    directory = args.corpus or corpus_dir()
    files = [p for p in ordered_files(directory) if args.match in p.name]
    if args.files:
        files = files[:args.files]
    started = time.monotonic()
    # As KeyboardInterrupt, SIGTERM (`timeout`) still stops and removes the throwaway cluster.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.dsn:
        matrix = run(args.dsn, files, progress=args.progress)
    else:
        from tests.support.pgcluster import TempCluster

        with TempCluster() as pg:
            pg.psql("CREATE DATABASE readonly_oracle", database="postgres")
            matrix = run(pg.dsn("postgres", "readonly_oracle"), files, progress=args.progress)
    print(f"{matrix.total} statements from {len(files)} files of {directory} "
          f"in {time.monotonic() - started:.0f} s\n")
    print(matrix.render())
    print(f"\nfalse read-only (classified read-only, refused with 25006): {len(matrix.false_read_only)}")
    for statement, message in matrix.false_read_only[:args.show]:
        print(f"  {statement.file}: {' '.join(statement.sql.split())[:160]}\n      -> {message}")
    if matrix.conservative:
        top = ", ".join(f"{why} x{n}" for why, n in matrix.conservative.most_common(12))
        print(f"classified not read-only but accepted read-only, by first reason: {top}")
    if matrix.other_errors:
        top = ", ".join(f"{state} x{n}" for state, n in matrix.other_errors.most_common(8))
        print(f"other errors of statements classified read-only, by SQLSTATE: {top}")
    return 1 if matrix.false_read_only else 0


if __name__ == "__main__":
    sys.exit(main())
