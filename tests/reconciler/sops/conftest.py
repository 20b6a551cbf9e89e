"""Fixtures for the sops tests: keyrings built from the corpus keys, and `sops_leak_guard` for messages.

Named apart from the suite-wide `leak_guard` (tests/conftest.py), which needs a PostgreSQL cluster.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test modules import their corpus helpers as `sops_corpus`, whatever the package layout of tests/.
sys.path.insert(0, str(Path(__file__).parent))

from sops_corpus import KEYS, SopsLeakGuard, known_plaintexts, require_corpus

from reconciler.sops import KeyRing


@pytest.fixture(scope="session")
def corpus() -> Path:
    return require_corpus()


@pytest.fixture(scope="session")
def all_keys(corpus: Path) -> Iterator[KeyRing]:
    """Every usable key in the corpus (the PQ identity is recorded as unusable)."""
    ring = KeyRing.from_files(
        [KEYS / "flux-age.txt", KEYS / "flux-age-global.txt", KEYS / "flux-age-pq.txt"],
        [KEYS / "getsops-pgp-functional-tests.asc", KEYS / "flux-pgp.asc"],
    )
    yield ring
    ring.close()


@pytest.fixture(scope="session")
def flux_age_keys(corpus: Path) -> Iterator[KeyRing]:
    ring = KeyRing.from_files([KEYS / "flux-age.txt"])
    yield ring
    ring.close()


@pytest.fixture(scope="session")
def no_keys() -> KeyRing:
    return KeyRing()


@pytest.fixture
def sops_leak_guard(caplog: pytest.LogCaptureFixture) -> Iterator[SopsLeakGuard]:
    guard = SopsLeakGuard(known_plaintexts())
    yield guard
    guard.add(*(record.getMessage() for record in caplog.records))
    leaks = guard.leaks()
    assert not leaks, f"plaintext leaked into messages: {leaks[:3]}"
