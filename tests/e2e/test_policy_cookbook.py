"""The policy cookbook (docs/policies/) does what docs/policies/README.md and README.md say it does.

The test loads the cookbook's own files, not copies, through the reconciler's stages into a running proxy in
front of the real test PostgreSQL. Two things are the test site's own, as they would be in any repository
using the recipes: the Users (a junior, an engineer, an AI agent) and the upstream, so the test points the
cookbook Service's upstream URL at the test cluster and supplies the password Secret that the cookbook ships
encrypted with a placeholder value. Every rule, attachment and attribute is used exactly as written.
"""

from __future__ import annotations

import copy
import datetime
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ruamel.yaml import YAML

from identity.store.base import AssuranceLevel, AuthMethod
from proxy.policy import timefns
from proxy.snapshot import Snapshot
from reconciler import build, load, validate
from reconciler.load import Document
from tests.support.proxy_harness import ProxyHarness, start_harness

REPO = Path(__file__).resolve().parents[2]
COOKBOOK = REPO / "docs" / "policies"
SHOP_PASSWORD = secrets.token_hex(16)

SITE = """\
kind: User
metadata: {name: jo}
spec: {type: HUMAN, email: jo@example.com, groups: [juniors]}
---
kind: User
metadata: {name: ada}
spec: {type: HUMAN, email: ada@example.com, groups: []}
---
kind: User
metadata: {name: copilot}
spec: {type: WORKLOAD, groups: [ai-agents]}
---
kind: Secret
metadata: {name: production-db-password}
data: {value: "@PASSWORD@"}
"""

UTC = datetime.UTC
# The cookbook's change window: Tuesdays and Thursdays, 09:00-11:00 Europe/Berlin (CET, UTC+1 in December).
TUESDAY_10_30_BERLIN = datetime.datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TUESDAY_12_00_BERLIN = datetime.datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
WEDNESDAY_10_00_BERLIN = datetime.datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

JUNIORS = 'denied by policy "read-only-juniors", rule "no-writes"'
NO_DROP = 'denied by policy "no-drop-outside-change-window", rule "drop-outside-window"'
PASSKEY = 'denied by policy "ddl-needs-passkey", rule "ddl-without-aal2"'
AGENTS = 'denied by policy "ai-agents-read-only-public", rule "agents-read-public-only"'


def at_test_cluster(document: Document, pg: Any) -> Document:
    """The cookbook Service with its upstream URL pointed at the test cluster; everything else as written."""
    if document.kind != "Service":
        return document
    body = copy.deepcopy(document.body)
    body["spec"]["config"]["upstream"]["url"] = f"postgres://{pg.host}:{pg.port}"
    return load.with_body(document, body)


def cookbook_snapshot(pg: Any, site: Path) -> Snapshot:
    """The reconciler's load, validate and build stages over docs/policies/ plus the test site's documents."""
    recipes = [at_test_cluster(d, pg) for d in load.load_directory(COOKBOOK) if d.kind != "Secret"]
    assert {d.kind for d in recipes} == {"Service", "Policy", "Group"}
    documents = recipes + load.load_directory(site)
    validate.validate_all(documents)
    return build.build_snapshot(documents, revision="cookbook", source=str(COOKBOOK))


def create_shop(pg: Any) -> None:
    """The database the cookbook's Service names: `shop`, owned by `shop_owner`."""
    if pg.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'shop_owner'").strip() == "0":
        pg.psql(f"CREATE ROLE shop_owner LOGIN PASSWORD '{SHOP_PASSWORD}'")
    else:
        pg.psql(f"ALTER ROLE shop_owner PASSWORD '{SHOP_PASSWORD}'")
    if pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'shop'").strip() == "0":
        pg.psql("CREATE DATABASE shop OWNER shop_owner")
    pg.psql("""SET ROLE shop_owner;
DROP SCHEMA IF EXISTS billing CASCADE; DROP TABLE IF EXISTS orders, events_a, events_b, audit_ddl;
CREATE TABLE orders (id serial PRIMARY KEY, item text);
INSERT INTO orders (item) VALUES ('book'), ('lamp');
CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int, amount int); INSERT INTO billing.invoices VALUES (1, 9);
CREATE TABLE events_a (x int); CREATE TABLE events_b (x int);""", database="shop")


@pytest.fixture(scope="module")
def cookbook(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    create_shop(pg)
    base = tmp_path_factory.mktemp("cookbook")
    site = base / "site"
    site.mkdir()
    (site / "site.yaml").write_text(SITE.replace("@PASSWORD@", SHOP_PASSWORD))
    harness, stop = start_harness(pg, base, name="cookbook")
    harness.apply(cookbook_snapshot(pg, site))
    yield harness
    stop()


def dsn(proxy: ProxyHarness, user: str, *, aal2: bool = False) -> str:
    """A connection string for `user` with a token of a new identity Session of AAL1, or AAL2 (a passkey)."""
    if aal2:
        coro = proxy.running.server.identity.issue_token(user, ttl_s=600, method=AuthMethod.PASSKEY,
                                                         aal=AssuranceLevel.AAL2)
        token = proxy.run(coro)[1]
    else:
        token = proxy.token(user)
    return proxy.dsn(user, "production", token=token)


def shop(pg: Any, sql: str) -> str:
    return pg.psql(sql, database="shop").strip()


def table_exists(pg: Any, name: str) -> bool:
    return shop(pg, f"SELECT to_regclass('{name}') IS NOT NULL") == "t"


def denied_rules(proxy: ProxyHarness, user: str) -> list[tuple[str, str]]:
    found = []
    for entry in proxy.log_entries():
        if entry["entry"]["common"].get("user") != user:
            continue
        decision = entry["entry"]["info"].get("postgres", {}).get("decision", {})
        if decision.get("status") == "DENIED":
            found.append((decision["policy"], decision["rule"]))
    return found


def test_pgwarden_validate_accepts_the_cookbook() -> None:
    out = subprocess.run([sys.executable, "-m", "pgwarden", "validate", str(COOKBOOK)], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "documents valid" in out.stdout, out.stdout


def test_readme_policy_snippets_are_valid_rules(tmp_path: Path) -> None:
    """The short versions in README.md's Policies section validate as a Policy (schema and CEL)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Policies\n", 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### Guard rails", 1)[0]  # a config snippet, checked by test_readme_guard_rails_snippet
    blocks = [b.split("```", 1)[0] for b in section.split("```yaml\n")[1:]]
    rules = [rule for block in blocks for rule in YAML(typ="safe").load(block)]
    assert [r["name"] for r in rules] == ["no-writes", "drop-outside-window", "ddl-without-aal2",
                                          "agents-read-public-only"]
    with (tmp_path / "readme.yaml").open("w") as out:
        YAML(typ="safe").dump({"kind": "Policy", "metadata": {"name": "readme"}, "spec": {"rules": rules}}, out)
    validate.validate_all(load.load_directory(tmp_path))


def test_readme_guard_rails_snippet_validates(tmp_path: Path) -> None:
    """README.md's guard rails config validates as a Service config (schema, durations, mode ALL)."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n### Guard rails", 1)[1].split("\n## ", 1)[0]
    [config] = YAML(typ="safe").load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    service = {"kind": "Service", "metadata": {"name": "readme"},
               "spec": {"dynamicConfig": {"configs": [config]}}}
    secret = {"kind": "Secret", "metadata": {"name": "read-only-password"}, "data": {"value": "x"}}
    with (tmp_path / "readme.yaml").open("w") as out:
        YAML(typ="safe").dump_all([service, secret], out)
    validate.validate_all(load.load_directory(tmp_path))
    assert config["postgres"]["guardRails"]["readOnly"] is True


def test_juniors_read_but_every_write_is_denied_naming_the_rule(cookbook: ProxyHarness, pg: Any) -> None:
    writes = [
        "INSERT INTO orders (item) VALUES ('junior')",
        "UPDATE orders SET item = 'junior' WHERE id = 1",
        "DELETE FROM orders WHERE item = 'lamp'",
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "CREATE TABLE junior_table (x int)",
        "ALTER TABLE orders ADD COLUMN junior int",
        "DROP TABLE events_a",
        "TRUNCATE orders",
        "GRANT SELECT ON orders TO PUBLIC",
    ]
    with psycopg.connect(dsn(cookbook, "jo"), autocommit=True) as conn:
        before = conn.execute("SELECT string_agg(item, ',' ORDER BY id) FROM orders").fetchone()
        assert before is not None and "lamp" in before[0]
        for sql in writes:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=JUNIORS):
                conn.execute(sql)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=JUNIORS):  # extended protocol too
            conn.execute("INSERT INTO orders (item) VALUES (%s)", ["junior"], prepare=True)
        assert conn.execute("SELECT string_agg(item, ',' ORDER BY id) FROM orders").fetchone() == before  # goes on
    assert shop(pg, "SELECT string_agg(item, ',' ORDER BY id) FROM orders") == before[0]
    assert table_exists(pg, "events_a") and not table_exists(pg, "junior_table")
    cookbook.wait_for(lambda: len(denied_rules(cookbook, "jo")) >= len(writes) + 1)
    assert set(denied_rules(cookbook, "jo")) == {("read-only-juniors", "no-writes")}


def test_drop_is_denied_outside_the_change_window_and_allowed_inside(cookbook: ProxyHarness, pg: Any) -> None:
    with psycopg.connect(dsn(cookbook, "ada", aal2=True), autocommit=True) as conn:
        for outside in (TUESDAY_12_00_BERLIN, WEDNESDAY_10_00_BERLIN):
            with timefns.fixed_clock(outside):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match=NO_DROP):
                    conn.execute("DROP TABLE events_b")
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match=NO_DROP):
                    conn.execute("TRUNCATE events_b")
                assert conn.execute("SELECT count(*) FROM events_b").fetchone() == (0,)  # reads go on
        assert table_exists(pg, "events_b")
        with timefns.fixed_clock(TUESDAY_10_30_BERLIN):
            conn.execute("DROP TABLE events_b")
    assert not table_exists(pg, "events_b")


def test_inside_the_window_a_drop_still_needs_an_aal2_session(cookbook: ProxyHarness, pg: Any) -> None:
    with psycopg.connect(dsn(cookbook, "ada"), autocommit=True) as conn, timefns.fixed_clock(TUESDAY_10_30_BERLIN):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=PASSKEY):
            conn.execute("DROP TABLE events_a")
    assert table_exists(pg, "events_a")


def test_ddl_needs_an_aal2_session_while_rows_do_not(cookbook: ProxyHarness, pg: Any) -> None:
    with psycopg.connect(dsn(cookbook, "ada"), autocommit=True) as aal1:
        aal1.execute("INSERT INTO orders (item) VALUES ('from-aal1')")  # everything else stays allowed
        for ddl in ("CREATE TABLE audit_ddl (x int)", "ALTER TABLE orders ADD COLUMN note text",
                    "CREATE INDEX ON orders (item)", "GRANT SELECT ON orders TO PUBLIC", "DO $$ BEGIN END $$"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=PASSKEY):
                aal1.execute(ddl)
    assert not table_exists(pg, "audit_ddl")
    with psycopg.connect(dsn(cookbook, "ada", aal2=True), autocommit=True) as aal2:
        aal2.execute("CREATE TABLE audit_ddl (x int)")
        aal2.execute("ALTER TABLE audit_ddl ADD COLUMN note text")
    assert table_exists(pg, "audit_ddl")
    assert shop(pg, "SELECT count(*) FROM orders WHERE item = 'from-aal1'") == "1"
    cookbook.wait_for(lambda: ("ddl-needs-passkey", "ddl-without-aal2") in denied_rules(cookbook, "ada"))


def test_ai_agents_read_public_only(cookbook: ProxyHarness, pg: Any) -> None:
    token = cookbook.token("copilot")
    with psycopg.connect(cookbook.dsn("copilot", "production", token=token), autocommit=True,
                         prepare_threshold=0) as conn:  # server-side prepared: every statement is a Parse
        assert conn.execute("SELECT count(*) > 0 FROM orders").fetchone() == (True,)
        assert conn.execute("SELECT item FROM public.orders WHERE id = %s", [1]).fetchone() == ("book",)
        for sql in ("SELECT amount FROM billing.invoices", "SELECT o.item FROM orders o JOIN billing.invoices i "
                    "ON i.id = o.id", "INSERT INTO orders (item) VALUES ('agent')", "UPDATE orders SET item = 'x'",
                    "SET search_path = billing, public", "DROP TABLE orders"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=AGENTS):
                conn.execute(sql)
        assert conn.execute("SELECT 'still serving'").fetchone() == ("still serving",)
    assert shop(pg, "SELECT count(*) FROM orders WHERE item IN ('agent', 'x')") == "0"
    cookbook.wait_for(lambda: len(denied_rules(cookbook, "copilot")) >= 6)
    assert set(denied_rules(cookbook, "copilot")) == {("ai-agents-read-only-public", "agents-read-public-only")}
    logged = cookbook.log_path.read_text()
    assert token not in logged and SHOP_PASSWORD not in logged
