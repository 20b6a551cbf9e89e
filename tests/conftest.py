"""Shared fixtures: one real PostgreSQL cluster per session (`pg`) and a secret-leak guard (`leak_guard`).

Helpers live in `tests/support/` (`from tests.support.pgcluster import ...`).
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator

import git
import pytest

from tests.support.pgcluster import TempCluster, free_port

__all__ = ["LeakGuard", "free_port"]


@pytest.fixture(scope="session")
def pg() -> Iterator[TempCluster]:
    """A started, seeded TempCluster shared by the session; stopped and deleted at the end, pass or fail."""
    # SIGTERM (`timeout`, a CI runner) would end Python without running finalizers and leave the server
    # running; as KeyboardInterrupt, pytest stops the session and tears the fixture down.
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
    cluster = TempCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session", autouse=True)
def close_git_repositories() -> Iterator[None]:
    """GitPython keeps two `git cat-file` processes per Repo until it is closed. A test's Repo caught in a
    reference cycle lives until pytest's last garbage collection, whose Popen finalizers then warn that the
    processes still run (an error under filterwarnings=error). Close whatever Repos are left, first."""
    yield
    for obj in gc.get_objects():
        if isinstance(obj, git.Repo):
            obj.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class LeakGuard:
    """Fails the test when a known secret plaintext shows up in logs, status, diffs or CLI output.

    Mutable on purpose: tests add the secrets they create (`guard.secrets.add(...)`).
    """

    def __init__(self, secrets: set[str]) -> None:
        self.secrets = secrets

    def check(self, text: str, where: str) -> None:
        """Fail if any secret occurs in `text`; the failure names `where`, never the secret."""
        leaked = sum(1 for secret in self.secrets if secret and secret in text)
        if leaked:
            pytest.fail(f"{leaked} known secret(s) leaked into {where}", pytrace=False)


@pytest.fixture
def leak_guard(pg: TempCluster) -> LeakGuard:
    """A LeakGuard pre-filled with every password of the session cluster."""
    return LeakGuard(set(pg.passwords.values()))
