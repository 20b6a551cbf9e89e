"""Access tests kept in the manifests repository (`.pgwarden/tests/*.yaml`): load, validate, run, report.

The manifest loader skips dot-directories, so test files never reach the reconciler. Each case is decided
by the same calls as `pgwarden access` (LiveSnapshot.route, ConnectionPolicy), at its `at` instant and AAL.
"""

from __future__ import annotations

import datetime
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from proxy.errors import PgwardenError
from proxy.policy import timefns
from proxy.routing import LiveSnapshot
from reconciler import load
from reconciler.access import decide_route, decide_statement, decided_by, identity_session
from reconciler.errors import ConfigError, ManifestErrors, SchemaViolation, SourceRef, format_path

TESTS_DIR = Path(".pgwarden") / "tests"
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "repository" / "access-tests.schema.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    file: str  # relative to the tests directory's repository root
    index: int  # position in the file's `tests` list
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        s = self.spec
        return str(s.get("name") or " · ".join(filter(None, (s["user"], s["service"], s.get("query")))))


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    case: Case
    failures: tuple[str, ...]  # empty when it passed
    got: str  # what was decided, in words


def load_cases(root: Path, tests_dir: Path | None = None) -> list[Case]:
    """Every case under `root/.pgwarden/tests/` (or `tests_dir`), schema-checked; raises ManifestErrors."""
    where = tests_dir if tests_dir is not None else root / TESTS_DIR
    files = sorted(p for p in where.glob("*.y*ml") if p.is_file()) if where.is_dir() else []
    validator = Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    cases: list[Case] = []
    problems: list[ConfigError] = []
    for path in files:
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
        try:
            documents = load.parse_files([load.ManifestFile(path=shown, data=path.read_bytes())])
        except ManifestErrors as exc:
            problems.extend(exc.errors)
            continue
        for doc in documents:
            body = _plain(doc.body)
            errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
            for error in errors:
                problems.append(SchemaViolation(error.message, source=SourceRef(
                    file=shown, document=doc.index, path=format_path(list(error.absolute_path)))))
            for i, spec in enumerate(body["tests"] if not errors else []):
                try:
                    datetime.datetime.fromisoformat(spec.get("at", "2026-01-01T00:00:00Z"))
                except ValueError:
                    problems.append(SchemaViolation("not an RFC 3339 time (e.g. 2026-12-08T10:00:00+01:00)",
                                                    source=SourceRef(file=shown, document=doc.index,
                                                                     path=f"tests[{i}].at")))
                    continue
                cases.append(Case(file=shown, index=i, spec=spec))
    if problems:
        raise ManifestErrors(problems)
    return cases


def _plain(value: Any) -> Any:
    """YAML timestamps back to RFC 3339 text, so the schema sees what was written."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime.date):
        return value.isoformat().replace("+00:00", "Z")
    return value


def run_case(live: LiveSnapshot, case: Case) -> Result:
    """Decide one case as the proxy would, and compare with what it expects."""
    s, expect = case.spec, case.spec["expect"]
    at = datetime.datetime.fromisoformat(s["at"]) if "at" in s else datetime.datetime.now(datetime.UTC)
    session = identity_session(s["user"], s.get("aal", "AAL1"), at)
    failures: list[str] = []
    with timefns.fixed_clock(at):
        route = decide_route(live, s["user"], s["service"], session)
        if isinstance(route, PgwardenError):
            got, decision, rule = f"connection refused: {route.message}", "DENY", ""
            connected = False
        else:
            connected = True
            got = f"connects as {route.upstream_user} (config {route.config.name})"
            decision, rule = "ALLOW", decided_by(route.decision) if route.decision.policy else ""
            if "query" in s or s.get("functionCall"):
                user, service = live.user(s["user"]), live.service(s["service"])
                policy = live.connection_policy(user, service, session, config=route.config)
                outcome = decide_statement(policy, s.get("query", ""), bool(s.get("functionCall")))
                decision, rule = outcome.verdict, outcome.by
                got += f"; {decision} ({rule})"
            if "config" in expect and expect["config"] != route.config.name:
                failures.append(f"config: expected {expect['config']}, got {route.config.name}")
            if "role" in expect and expect["role"] != route.upstream_user:
                failures.append(f"role: expected {expect['role']}, got {route.upstream_user}")
    if "connect" in expect and expect["connect"] != connected:
        failures.append(f"connect: expected {str(expect['connect']).lower()}, got {str(connected).lower()}")
    if expect["decision"] != decision:
        failures.append(f"decision: expected {expect['decision']}, got {decision}" + (f" ({rule})" if rule else ""))
    if "rule" in expect and expect["rule"] != rule:
        failures.append(f"rule: expected {expect['rule']}, got {rule or '(none)'}")
    return Result(case=case, failures=tuple(failures), got=got)


def junit_xml(results: list[Result]) -> bytes:
    """JUnit XML as CI systems read it: one testsuite per test file, a <failure> per failed case."""
    suites = ET.Element("testsuites", name="pgwarden test", tests=str(len(results)),
                        failures=str(sum(1 for r in results if r.failures)))
    for file in dict.fromkeys(r.case.file for r in results):
        mine = [r for r in results if r.case.file == file]
        suite = ET.SubElement(suites, "testsuite", name=file, tests=str(len(mine)),
                              failures=str(sum(1 for r in mine if r.failures)))
        for r in mine:
            testcase = ET.SubElement(suite, "testcase", classname=file, name=r.case.name)
            if r.failures:
                failure = ET.SubElement(testcase, "failure", message="; ".join(r.failures))
                failure.text = f"tests[{r.case.index}]: {r.got}"
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
