"""Run asyncpg's own test suite (from its sdist) against a running server, and compare two runs.

asyncpg's `_testbase` treats the server as an unmanaged `RunningCluster` when PGHOST is set and connects with
the libpq variables, so the same suite runs against PostgreSQL directly and through the proxy.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

ASYNCPG_VERSION = importlib.metadata.version("asyncpg")
# Git-ignored (/.asyncpg-tests/ in .gitignore); one subfolder per asyncpg version.
CACHE_ROOT = Path(__file__).resolve().parents[2] / ".asyncpg-tests"

# pytest node-id prefixes left out of every run, with the reason. Tests that need a *managed* cluster (their
# own pg_hba.conf, SSL files or a second server) skip themselves when PGHOST is set; these are the ones that
# do not skip themselves and cannot apply to an existing server.
EXCLUDED: dict[str, str] = {
    "tests/test_connect.py::TestConnectionAttributes": (
        "a HotStandbyTestCase: initdb's and starts a primary and a standby cluster of its own (target_session_attrs "
        "tests); it does not skip for PGHOST, and initdb refuses to run as root"
    ),
    "tests/test__sourcecode.py": (
        "runs flake8 and mypy over asyncpg's source tree, which is not extracted (skips itself unless flake8 is "
        "installed, then fails)"
    ),
}

_PYTEST_INI = """\
# Written by tests/support/asyncpg_suite.py; mirrors asyncpg's own [tool.pytest.ini_options].
[pytest]
addopts = --assert=plain --strict-markers --tb=native --import-mode=importlib -p no:cacheprovider
testpaths = tests
filterwarnings = default
"""

_CONFTEST = """\
# Written by tests/support/asyncpg_suite.py. Bound every async test, so that one hang (say, through a proxy)
# fails that test instead of eating the whole run's timeout. asyncpg's TestCaseMeta reads this per call.
import os
import platform
import sys
import types

from asyncpg import _testbase

_testbase.TestCaseMeta.TEST_TIMEOUT = float(os.environ.get("ASYNCPG_SUITE_TEST_TIMEOUT_S", "60"))

# test_connect imports `distro` (asyncpg's test extra) only to skip GSSAPI tests on Alpine; the standard
# library answers the same question, so we need not install it.
try:
    import distro  # noqa: F401
except ImportError:
    _distro = types.ModuleType("distro")
    _distro.id = lambda: platform.freedesktop_os_release().get("ID", "")
    sys.modules["distro"] = _distro
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class SuiteResult:
    """Outcome of one run; test ids are `tests.test_module.TestClass.test_name`."""

    passed: frozenset[str]
    failed: frozenset[str]
    errors: frozenset[str]
    skipped: frozenset[str]
    duration_s: float = 0.0

    @property
    def not_passing(self) -> frozenset[str]:
        """Tests that failed or errored (a test may be in both: failed in the call, errored in teardown)."""
        return self.failed | self.errors

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with sorted lists, for baselines on disk."""
        return {k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """The inverse of `to_json`."""
        sets = {k: frozenset(data[k]) for k in ("passed", "failed", "errors", "skipped")}
        return cls(**sets, duration_s=float(data.get("duration_s", 0.0)))


class SuiteError(RuntimeError):
    """asyncpg's suite could not be fetched or did not produce a result (timeout, crash before JUnit XML)."""


def fetch_suite(cache_root: Path = CACHE_ROOT, version: str = ASYNCPG_VERSION) -> Path:
    """Return a folder holding asyncpg's `tests/` for `version`, downloading its sdist once into the cache."""
    target = cache_root / version
    if (target / "tests" / "__init__.py").exists():
        _write_runner_files(target)
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root, prefix=".fetch-") as scratch:
        # `--no-binary asyncpg`, not `:all:`: the latter also builds pip's isolated build env (Cython) from
        # source, which takes minutes; we only need asyncpg's own sdist.
        cmd = [sys.executable, "-m", "pip", "download", f"asyncpg=={version}", "--no-binary", "asyncpg",
               "--no-deps", "--disable-pip-version-check", "-q", "-d", scratch]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(scratch).glob("asyncpg-*.tar.gz"))
        if done.returncode != 0 or len(sdists) != 1:
            raise SuiteError(f"pip download asyncpg=={version} failed: {done.stderr.strip()}")
        staged = Path(scratch) / "staged"
        with tarfile.open(sdists[0]) as sdist:
            prefix = f"{sdists[0].name.removesuffix('.tar.gz')}/"
            members = [m for m in sdist.getmembers() if m.name.startswith(prefix + "tests/")]
            for member in members:
                member.name = member.name.removeprefix(prefix)
            sdist.extractall(staged, members=members, filter="data")
        _write_runner_files(staged)
        try:
            # Atomic: a parallel run either sees no folder or a complete one.
            staged.rename(target)
        except OSError:
            if not (target / "tests" / "__init__.py").exists():
                raise
    return target


def _write_runner_files(suite_dir: Path) -> None:
    for name, text in (("pytest.ini", _PYTEST_INI), ("conftest.py", _CONFTEST)):
        path = suite_dir / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_name(f".{name}.{os.getpid()}")
            tmp.write_text(text)
            tmp.replace(path)


def run_suite(env: Mapping[str, str], junit_path: Path, timeout_s: int, *, only: Iterable[str] = ()) -> SuiteResult:
    """Run asyncpg's suite in a subprocess against the server named by `env` (PGHOST, PGPORT, PGUSER, ...).

    PGUSER must be a superuser (the suite creates roles, databases and extensions) and PGDATABASE should be
    `postgres` (pool tests hard-code `database='postgres'` while `self.con` uses PGDATABASE). `only` limits the
    run to those test ids (to re-check failures). pytest's output goes to `junit_path` with suffix `.log`.
    Raises SuiteError on timeout or when pytest wrote no JUnit XML.
    """
    suite_dir = fetch_suite()
    junit_path.parent.mkdir(parents=True, exist_ok=True)
    junit_path.unlink(missing_ok=True)
    log_path = junit_path.with_suffix(".log")
    # Our own PG* variables must not leak in: the caller's env says which server to test.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    full_env |= {"PYTHONDONTWRITEBYTECODE": "1", **env}
    cmd = [sys.executable, "-m", "pytest", "-c", str(suite_dir / "pytest.ini"), "--rootdir", str(suite_dir),
           "-q", "-p", "no:asyncio", "-p", "no:hypothesispytest", "-p", "no:benchmark",
           f"--junitxml={junit_path}", *(f"--deselect={nodeid}" for nodeid in EXCLUDED),
           *([_to_nodeid(test_id) for test_id in only] or ["tests"])]
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=suite_dir, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SuiteError(f"asyncpg suite exceeded {timeout_s} s; see {log_path}") from None
    if not junit_path.exists():
        raise SuiteError(f"asyncpg suite exited {proc.returncode} without JUnit XML; see {log_path}")
    return parse_junit(junit_path, duration_s=time.monotonic() - started)


def _to_nodeid(test_id: str) -> str:
    # asyncpg's tests are flat modules in tests/: tests.test_mod.Class.test -> tests/test_mod.py::Class::test
    package, module, *rest = test_id.split(".")
    return "::".join([f"{package}/{module}.py", *rest])


def parse_junit(junit_path: Path, *, duration_s: float = 0.0) -> SuiteResult:
    """Sort the test cases of a pytest JUnit XML file into passed, failed, errors and skipped."""
    outcomes: dict[str, set[str]] = {"passed": set(), "failed": set(), "errors": set(), "skipped": set()}
    for case in ET.parse(junit_path).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}.{case.get('name')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            outcomes["failed"].add(test_id)
        if "error" in kinds:
            outcomes["errors"].add(test_id)
        if "skipped" in kinds:
            outcomes["skipped"].add(test_id)
        if not kinds & {"failure", "error", "skipped"}:
            outcomes["passed"].add(test_id)
    # A test that passed its call but errored in teardown shows up twice; it did not pass.
    outcomes["passed"] -= outcomes["failed"] | outcomes["errors"]
    return SuiteResult(**{k: frozenset(v) for k, v in outcomes.items()}, duration_s=duration_s)


def compare(direct: SuiteResult, proxied: SuiteResult, allowed: Iterable[str] = ()) -> list[str]:
    """Tests that passed directly but not through the proxy (failed, errored, skipped or missing), sorted.

    An `allowed` entry excuses the test of that id, or every test under it when it names a module or class
    (`tests.test_connect.TestAuthentication` excuses all of that class's tests).
    """
    prefixes = tuple(allowed)
    newly_failing = direct.passed - proxied.passed
    return sorted(t for t in newly_failing if not any(t == p or t.startswith(p + ".") for p in prefixes))


def rerun_not_passing(
    env: Mapping[str, str], test_ids: Iterable[str], junit_path: Path, timeout_s: int
) -> frozenset[str]:
    """Run `test_ids` once more on their own and return those that still do not pass.

    Some asyncpg tests are timing-based (pool churn, flow control) and can fail on a loaded machine; a failure
    that a lone re-run clears is load, not a regression.
    """
    test_ids = frozenset(test_ids)
    if not test_ids:
        return test_ids
    return test_ids - run_suite(env, junit_path, timeout_s, only=sorted(test_ids)).passed


def save_result(result: SuiteResult, path: Path) -> None:
    """Write `result` as JSON (a baseline for a later comparison)."""
    path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
