"""The rooms' import rules (shared/STYLE.md), checked with `ast` like asyncpg's test__sourcecode.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("proxy"), ids=lambda p: str(p.relative_to(ROOT)))
def test_proxy_never_imports_reconciler_or_the_command(path: Path) -> None:
    bad = {m for m in imports_of(path) if m.split(".")[0] in ("reconciler", "pgwarden")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("reconciler"), ids=lambda p: str(p.relative_to(ROOT)))
def test_reconciler_never_imports_the_command(path: Path) -> None:
    bad = {m for m in imports_of(path) if m.split(".")[0] == "pgwarden"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("proxy/pgwire"), ids=lambda p: str(p.relative_to(ROOT)))
def test_pgwire_is_sans_io(path: Path) -> None:
    bad = {
        m for m in imports_of(path)
        if m.split(".")[0] in ("asyncio", "socket", "ssl", "uvloop")
        or (m.startswith("proxy.") and not m.startswith("proxy.pgwire"))
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
