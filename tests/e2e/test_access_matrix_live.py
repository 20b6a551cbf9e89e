"""`pgwarden access` never disagrees with the running proxy: every cell, checked live.

For examples-repo and the policy cookbook (docs/policies/), the offline matrix is computed from the same
documents a real proxy then runs. For every User × Service, under an AAL1 token, an AAL2 passkey and an
AAL2 TOTP session and, where a rule reads the clock, at one instant of each distinct clock outcome, the
test connects with a token, compares the landed role and database, and runs every statement of every
class (and a FunctionCall over raw protocol) inside a transaction it rolls back, comparing ALLOW/DENY and
the deciding rule.

As in test_policy_cookbook.py, the site supplies what no repository can: upstream URLs pointing at the test
cluster, the passwords, and, for examples-repo's my-postgres (whose `postgres` role has no password here),
the superuser role. Every rule, attachment and attribute is used as written.
"""

from __future__ import annotations

import copy
import datetime
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from identity.store.base import AssuranceLevel, AuthMethod
from proxy.pgwire import messages as m
from proxy.policy import timefns
from reconciler import build, load, validate
from reconciler.access import (
    FUNCTION_CALL_OID,
    SESSIONS,
    STATEMENT_CLASSES,
    AccessMatrix,
    access_matrix,
    keyless_snapshot,
)
from reconciler.access_report import render_markdown, render_text, to_json
from reconciler.load import Document
from reconciler.verdicts import ALLOW, DENY, REFUSED, Outcome, Verdict
from tests.e2e.test_policy_cookbook import COOKBOOK, SHOP_PASSWORD, SITE, create_shop
from tests.e2e.test_query_policy import RawClient
from tests.support.proxy_harness import ProxyHarness, start_harness

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples-repo"
WEEK_OF = datetime.date(2026, 12, 7)  # a fixed week: the samples (and so the test) do not move with the date
PROBE_SQL = """DROP SCHEMA IF EXISTS other_schema CASCADE; DROP TABLE IF EXISTS access_probe, access_probe_new;
CREATE TABLE access_probe (x int); CREATE SCHEMA other_schema; CREATE TABLE other_schema.access_probe (x int);
GRANT SELECT ON access_probe TO PUBLIC;"""
DENIAL = re.compile(r'denied by policy "([^"]+)", rule "([^"]+)"|denied: (no policy rule allows it)')


def site_documents(pg: Any, root: Path, secrets_text: str, *, superuser_for: str = "") -> list[Document]:
    """The repository's non-Secret documents, upstreams at the test cluster, plus the site's documents."""
    out = []
    for doc in load.load_directory(root):
        if doc.kind == "Secret":
            continue
        if doc.kind == "Service":
            body = copy.deepcopy(doc.body)
            spec = body["spec"]
            for config in spec.get("dynamicConfig", {}).get("configs", []) + ([spec["config"]] if "config" in spec
                                                                              else []):
                if "upstream" in config:
                    config["upstream"]["url"] = f"postgres://{pg.host}:{pg.port}"
                if doc.name == superuser_for:
                    config["postgres"]["user"] = "pgwarden_admin"
                    config["postgres"]["database"] = "my_db"
            doc = load.with_body(doc, body)
        out.append(doc)
    return out + load.parse_files([load.ManifestFile(path="site.yaml", data=secrets_text.encode())])


def examples_documents(pg: Any) -> list[Document]:
    secret = "kind: Secret\nmetadata: {{name: {}}}\ndata: {{value: \"{}\"}}\n"
    text = "---\n".join([secret.format("read-only-password", pg.passwords["read_only"]),
                         secret.format("full-access-password", pg.passwords["full_access"]),
                         secret.format("my-pg-password", pg.passwords["pgwarden_admin"]),
                         secret.format("ci-bot-client-secret", secrets.token_hex(24))])
    return site_documents(pg, EXAMPLES, text, superuser_for="my-postgres")


def cookbook_documents(pg: Any) -> list[Document]:
    return site_documents(pg, COOKBOOK, SITE.replace("@PASSWORD@", SHOP_PASSWORD))


# --- asking the live proxy -----------------------------------------------------------------------------


def token(proxy: ProxyHarness, user: str, label: str) -> str:
    if label.startswith("AAL2"):
        method = AuthMethod.PASSKEY if label == "AAL2" else AuthMethod.TOTP
        coro = proxy.running.server.identity.issue_token(user, ttl_s=600, method=method, aal=AssuranceLevel.AAL2)
        return str(proxy.run(coro)[1])
    return proxy.token(user)


def live_statement(conn: psycopg.Connection[Any], name: str, sql: str) -> tuple[str, str]:
    """(ALLOW|DENY, deciding rule) for one statement, run in a transaction that is rolled back."""
    try:
        with conn.cursor() as cur:
            if name == "copy-from":
                with cur.copy(sql):
                    pass
            elif name == "copy-to":
                with cur.copy(sql) as rows:
                    for _ in rows:
                        pass
            else:
                cur.execute(sql)
    except psycopg.errors.InsufficientPrivilege as exc:
        found = DENIAL.search(str(exc))
        if found is None:  # PostgreSQL's own refusal ("permission denied for table"): the proxy let it through
            return ALLOW, ""
        return DENY, f"{found[1]}/{found[2]}" if found[1] else "no rule matched: denied by default"
    except psycopg.Error:
        return ALLOW, ""  # PostgreSQL ran (and refused) it: the proxy let it through
    finally:
        conn.rollback()
    return ALLOW, ""


def live_function_call(proxy: ProxyHarness, user: str, service: str, password: str) -> str:
    client = RawClient(proxy.port, user=user, database=service, password=password, tls=True)
    try:
        body = FUNCTION_CALL_OID.to_bytes(4, "big") + b"\x00\x00" + b"\x00\x00" + b"\x00\x00"  # no arguments
        seen = client.exchange(m.encode_message(m.FUNCTION_CALL, body), 1)
    finally:
        client.close()
    return DENY if ("E", "42501") in seen else ALLOW


def hours_to_check(verdicts: list[Verdict]) -> list[int]:
    """One hour per distinct combination of outcomes over the week (all hours alike: hour 0)."""
    first: dict[tuple[Any, ...], int] = {}
    hours = {h for v in verdicts for (_, h, _) in v.outcomes}
    for h in sorted(hours):
        key = tuple(sorted((i, label, t, repr(o)) for i, v in enumerate(verdicts)
                           for (label, hh, t), o in v.outcomes.items() if hh == h))
        first.setdefault(key, h)
    return sorted(first.values())


def check_every_cell(proxy: ProxyHarness, matrix: AccessMatrix) -> int:
    """Compare every cell with the live proxy; returns how many decisions were compared."""
    compared = 0
    for cell in matrix.cells:
        verdicts = [cell.connect, *cell.statements.values()]
        for label, _, _ in SESSIONS:
            for hour in hours_to_check(verdicts):
                expected: Outcome = cell.connect.outcomes[(label, hour, 0)]
                where = f"{cell.user} · {cell.service} · {label} · {matrix.samples[hour].isoformat()}"
                with timefns.fixed_clock(matrix.samples[hour]):
                    password = token(proxy, cell.user, label)
                    try:
                        conn = psycopg.connect(proxy.dsn(cell.user, cell.service, token=password))
                    except psycopg.OperationalError as exc:
                        assert expected.verdict == REFUSED, f"{where}: offline {expected}, live refused: {exc}"
                        compared += 1
                        continue
                    with conn:
                        assert expected.verdict != REFUSED, f"{where}: offline refused, live connected"
                        landed = conn.execute("SELECT current_user, current_database()").fetchone()
                        conn.rollback()
                        assert landed == (expected.role, expected.database), where
                        compared += 1
                        for name, texts in STATEMENT_CLASSES:
                            for v, sql in enumerate(texts):
                                offline = cell.statements[name].outcomes[(label, hour, v)]
                                if name == "function-call":
                                    live = (live_function_call(proxy, cell.user, cell.service, password), "")
                                else:
                                    live = live_statement(conn, name, sql)
                                assert live[0] == offline.verdict, f"{where} · {name} `{sql}`: offline {offline}"
                                if live[0] == DENY and live[1]:
                                    assert live[1] == offline.by, f"{where} · {name} `{sql}`"
                                compared += 1
    return compared


def offline(documents: list[Document]) -> AccessMatrix:
    validate.validate_all(documents)
    return access_matrix(keyless_snapshot(documents), reference=WEEK_OF)


@pytest.fixture(scope="module")
def examples_proxy(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyHarness, Any]]:
    pg.psql(f"SET ROLE pgwarden_admin; {PROBE_SQL}")
    documents = examples_documents(pg)
    base = tmp_path_factory.mktemp("access-examples")
    harness, stop = start_harness(pg, base, name="access-examples")
    harness.apply(build.build_snapshot(documents, revision="examples", source=str(EXAMPLES)))
    harness.admin_socket = base / "access-examples-admin.sock"  # type: ignore[attr-defined]  (start_harness's name)
    yield harness, documents
    stop()


@pytest.fixture(scope="module")
def cookbook_proxy(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyHarness, Any]]:
    create_shop(pg)
    pg.psql(f"SET ROLE shop_owner; {PROBE_SQL}", database="shop")
    documents = cookbook_documents(pg)
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("access-cookbook"), name="access-cookbook")
    harness.apply(build.build_snapshot(documents, revision="cookbook", source=str(COOKBOOK)))
    yield harness, documents
    stop()


def test_examples_repo_matrix_agrees_with_the_live_proxy_cell_by_cell(examples_proxy: Any) -> None:
    proxy, documents = examples_proxy
    matrix = offline(documents)
    assert {(c.user, c.service) for c in matrix.cells} == {(u, s) for u in ("alice", "bob", "ci-bot", "erin")
                                                           for s in ("my-db", "my-postgres")}
    assert {c.connect.outcome.role for c in matrix.cells if c.service == "my-db"} == {"read_only", "full_access"}
    assert check_every_cell(proxy, matrix) == 8 * 3 * (1 + sum(len(t) for _, t in STATEMENT_CLASSES))


def test_cookbook_matrix_agrees_with_the_live_proxy_cell_by_cell(cookbook_proxy: Any) -> None:
    proxy, documents = cookbook_proxy
    matrix = offline(documents)
    decisions = {v.decision for c in matrix.cells for v in c.statements.values()}
    assert decisions == {ALLOW, DENY, "CONDITIONAL"}  # the check covers all three kinds of answer
    drop = matrix.cell("ada", "production").statements["drop"]  # type: ignore[union-attr]
    assert "Tue/Thu 09:00–11:00 Europe/Berlin" in drop.condition
    checked = {cell.user: hours_to_check([cell.connect, *cell.statements.values()]) for cell in matrix.cells}
    assert len(checked["ada"]) == 2 and checked["jo"] == [0]  # inside and outside the change window
    assert check_every_cell(proxy, matrix) == 3 * (2 + 1 + 1) * (1 + sum(len(t) for _, t in STATEMENT_CLASSES))


def test_the_matrix_holds_no_secret_value(examples_proxy: Any, pg: Any) -> None:
    _, documents = examples_proxy
    matrix = offline(documents)
    shown = render_text(matrix) + render_markdown(matrix) + repr(to_json(matrix))
    for value in pg.passwords.values():
        assert value not in shown


def test_explain_live_reads_the_running_proxys_snapshot(examples_proxy: Any, pg: Any) -> None:
    proxy, _ = examples_proxy
    out = subprocess.run([sys.executable, "-m", "pgwarden", "explain", "--live", "--admin-socket",
                          str(proxy.admin_socket), "--user", "erin", "--service", "my-db", "--query", "SELECT 1"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert ("config full-access (rule engineering-or-admins (configName full-access)): upstream role "
            "full_access") in out.stdout
    for value in pg.passwords.values():
        assert value not in out.stdout
