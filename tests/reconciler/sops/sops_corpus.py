"""The shared sops conformance corpus: where it is, its expected records, and the plaintexts it holds."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from reconciler.sops.cipher import format_go_float, format_rfc3339_nano

REPO_ROOT = Path(__file__).resolve().parents[3]
# CI clones the repo elsewhere with a copy of shared/ beside it: always <repo root>/../shared.
CORPUS = REPO_ROOT.parent / "shared" / "sops-corpus"
KEYS = CORPUS / "keys"
FLUX_AGE = "age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29"
FLUX_AGE_GLOBAL = "age1henwn645drkd3fa34t27t2w2x0nsgw3w4h62gmg5x5xflyjpy38s5cncph"
PGP_KEY_1 = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"


def require_corpus() -> Path:
    """The corpus directory; a missing corpus fails collection loudly instead of skipping tests."""
    if not (CORPUS / "expected").is_dir():
        pytest.fail(f"sops corpus not found at {CORPUS} (expected <repo root>/../shared/sops-corpus)", pytrace=False)
    return CORPUS


@functools.cache
def _expected_records() -> tuple[dict[str, Any], ...]:
    """Every expected/*.json record, sorted by file name."""
    corpus = require_corpus()
    paths = sorted((corpus / "expected").rglob("*.json"))
    return tuple(json.loads(p.read_text(encoding="utf-8")) for p in paths)


def expected_records() -> list[dict[str, Any]]:
    """Every expected/*.json record, sorted by file name (fresh copies: tests may not share state)."""
    return copy.deepcopy(list(_expected_records()))


def positive_records() -> list[dict[str, Any]]:
    """Files that must decrypt: a recorded plaintext and a stored MAC that matches."""
    return [r for r in expected_records() if "plaintext" in r and r.get("stored_mac_matches") is True]


def tagged(value: Any) -> Any:
    """Encode a decrypted tree the way expected/ does: `{"$float": …}`, `{"$time": …}`."""
    if isinstance(value, Mapping):
        return {k: tagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [tagged(v) for v in value]
    if isinstance(value, float):
        return {"$float": format_go_float(value)}
    if isinstance(value, date):
        return {"$time": format_rfc3339_nano(value)}
    return value


def string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from string_leaves(item)
    elif isinstance(value, str):
        yield value


def key_names(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from key_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from key_names(item)


@functools.cache
def known_plaintexts() -> frozenset[str]:
    """Plaintexts that must never show up in an error, minus words a message may rightly contain.

    Excluded: short strings, single alphabetic words ("value", "secret": messages may use the
    word), and strings that are also key names or part of the file path (messages name both).
    """
    secrets: set[str] = set()
    for record in expected_records():
        tree = record.get("plaintext") or record.get("inner_plaintext") or {}
        names = set(key_names(tree))
        for text in string_leaves(tree):
            for line in text.splitlines() or [text]:
                line = line.strip()
                if len(line) >= 5 and not line.isalpha() and line not in names and line not in record["file"]:
                    secrets.add(line)
    return frozenset(secrets)


class SopsLeakGuard:
    """Collects every message a test produced; at teardown none may contain a known plaintext."""

    def __init__(self, secrets: frozenset[str]) -> None:
        self.secrets = secrets
        self.messages: list[str] = []

    def add(self, *texts: object) -> None:
        self.messages.extend(str(t) for t in texts)

    def leaks(self) -> list[tuple[str, str]]:
        return [(s, m) for m in self.messages for s in self.secrets if s in m]
