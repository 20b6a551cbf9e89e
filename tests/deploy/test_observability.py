"""deploy/prometheus/rules.yaml and deploy/grafana/pgwarden.json name only what a running pgwarden exports.

The rules load in the real `promtool` (check and unit tests); every expression, in the rules and in every
dashboard panel, is parsed by a real PromQL parser and each metric and label it selects is looked up in the
/metrics of a running `pgwarden up`: renaming a metric or a label value breaks this test, not the pager.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from reconciler.status import ConditionType, Result
from tests.deploy.rendered import ROOT
from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.webhook_receiver import WebhookReceiver

RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pgwarden.json"
OPERATIONS = ROOT / "docs" / "operations.md"
TARGET_LABELS = {"job", "instance", "pod", "namespace"}  # added by Prometheus (and its Kubernetes discovery)
# Label values that are a closed set: a matcher naming another value can never match.
CLOSED_VALUES = {("pgwarden_condition", "type"): {t.value for t in ConditionType},
                 ("pgwarden_reconcile_total", "result"): {r.value for r in Result}}


@dataclass
class Exported:
    """Sample names of a live /metrics with the label names and values seen on each."""

    labels: dict[str, set[str]] = field(default_factory=dict)
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.labels.setdefault(sample.name, set()).update(sample.labels)
                for label, value in sample.labels.items():
                    self.values.setdefault((sample.name, label), set()).add(value)


@pytest.fixture(scope="module")
def exported(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    """The /metrics of a real `pgwarden up` with Services (so the upstream probe reports) and notifications on."""
    base = tmp_path_factory.mktemp("observability")
    repo = ManifestRepo(base, pg)
    repo.write_defaults()
    repo.commit("initial")
    receiver = WebhookReceiver().start()
    url_file = base / "notify-url"
    url_file.write_text(receiver.url)
    up = UpProcess(repo.url, base / "data", "--age-key-file", str(repo.key_file), "--notify-url-file", str(url_file))
    try:
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{up.http_port}/metrics", timeout=10) as response:
                text = response.read().decode()
            if "pgwarden_upstream_up{" in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        found = Exported()
        found.add(text)
        assert "pgwarden_upstream_up" in found.labels, "the health probe never reported"
        yield found
    finally:
        up.stop()
        receiver.stop()


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def problems(expr: str, exported: Exported) -> list[str]:
    """What in `expr` names a metric, label or label value pgwarden does not export."""
    found: list[str] = []
    for selector in selectors(expr):
        name = selector.name
        if name is None:
            found.append("a selector without a literal metric name")
            continue
        if name not in exported.labels:
            found.append(f"{name} is not exported")
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name in TARGET_LABELS:
                continue
            if matcher.name not in exported.labels[name]:
                found.append(f"{name} has no label {matcher.name}")
                continue
            closed = CLOSED_VALUES.get((name, matcher.name))
            if closed is not None and matcher.op == promql_parser.MatchOp.Equal:
                if matcher.value not in closed:
                    found.append(f'{name}{{{matcher.name}="{matcher.value}"}} never exists ({sorted(closed)})')
            elif matcher.op == promql_parser.MatchOp.Re and re.fullmatch(r"[\w|]+", matcher.value):
                seen = exported.values.get((name, matcher.name), set())
                found += [f'{name}{{{matcher.name}=~"{v}"}} is never exported ({sorted(seen)})'
                          for v in matcher.value.split("|") if v not in seen]
    return found


def rules() -> list[dict[str, Any]]:
    document = YAML(typ="safe").load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: `bash tests/install-deps.sh system` installs Debian's prometheus")
    return found


def test_promtool_loads_the_rules() -> None:
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_the_alerts_fire_on_pgwarden_series() -> None:
    out = subprocess.run([promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                         timeout=60, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_rules_cover_what_operators_are_paged_for() -> None:
    names = {rule["alert"] for rule in rules()}
    assert {"PgwardenRevisionStalled", "PgwardenReconcileFailing", "PgwardenUpstreamUnhealthy",
            "PgwardenAccessLogDropping", "PgwardenPreauthNearLimit", "PgwardenSessionsNearCapacity"} <= names
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_rule_names_only_exported_metrics(exported: Exported) -> None:
    found = {rule["alert"]: problems(rule["expr"], exported) for rule in rules()}
    assert {alert: p for alert, p in found.items() if p} == {}


def test_the_checker_catches_a_renamed_metric_or_label_value(exported: Exported) -> None:
    # The check above can fail: these are the mistakes it exists for.
    assert problems("pgwarden_sesions_open > 1", exported) == ["pgwarden_sesions_open is not exported"]
    assert problems('pgwarden_condition{type="Stuck"} == 1', exported) == [
        f'pgwarden_condition{{type="Stuck"}} never exists ({sorted(t.value for t in ConditionType)})']
    assert problems('pgwarden_upstream_up{database="x"}', exported) == ["pgwarden_upstream_up has no label database"]
    assert problems('pgwarden_notifications_total{result=~"lost|failed"}', exported)[0].startswith(
        'pgwarden_notifications_total{result=~"lost"} is never exported')


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        assert panel["targets"], f"panel {panel['title']!r} shows nothing"
        for target in panel["targets"]:
            # Grafana's variables, as Grafana substitutes them before the query reaches Prometheus.
            expr = target["expr"].replace("$__rate_interval", "5m").replace("${datasource}", "prom")
            found.append((panel["title"], expr))
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+)(\{.*\})?, *\w+\)", variable.get("query", "")) \
            if variable["type"] == "query" else None
        if variable["type"] == "query":
            assert match, f"variable {variable['name']}: not a label_values(metric, label) query"
            found.append((f"variable {variable['name']}", match.group(1) + (match.group(2) or "")))
    return found


def test_every_dashboard_panel_names_only_exported_metrics(exported: Exported) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    found = {f"{title}: {expr}": problems(expr, exported) for title, expr in expressions}
    assert {where: p for where, p in found.items() if p} == {}


def test_every_alert_and_every_exported_metric_is_explained_in_the_operations_guide(exported: Exported) -> None:
    text = OPERATIONS.read_text()
    families = {re.sub(r"_(bucket|sum|count|created)$", "", name) for name in exported.labels
                if name.startswith("pgwarden_")}
    assert len(families) >= 18
    assert sorted(f for f in families if f"`{f}`" not in text and f"`{f.removesuffix('_total')}" not in text) == []
    assert sorted(rule["alert"] for rule in rules() if rule["alert"] not in text) == []
