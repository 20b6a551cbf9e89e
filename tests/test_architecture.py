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
    bad = {m for m in imports_of(path) if m.split(".")[0] in ("reconciler", "pgwarden", "runtime")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("reconciler"), ids=lambda p: str(p.relative_to(ROOT)))
def test_reconciler_never_imports_the_command(path: Path) -> None:
    bad = {m for m in imports_of(path) if m.split(".")[0] in ("pgwarden", "runtime")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("proxy/pgwire"), ids=lambda p: str(p.relative_to(ROOT)))
def test_pgwire_is_sans_io(path: Path) -> None:
    bad = {
        m for m in imports_of(path)
        if m.split(".")[0] in ("asyncio", "socket", "ssl", "uvloop")
        or (m.startswith("proxy.") and not m.startswith("proxy.pgwire"))
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("identity"), ids=lambda p: str(p.relative_to(ROOT)))
def test_identity_never_imports_the_proxy_server(path: Path) -> None:
    """Identity is handed the live snapshot and a session authority (identity/host.py), never the server."""
    bad = {m for m in imports_of(path)
           if m in ("proxy.server", "proxy.session", "proxy.registry", "proxy.relay", "proxy.admin")
           or m.split(".")[0] in ("reconciler", "pgwarden", "runtime")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("runtime"), ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_never_imports_the_command(path: Path) -> None:
    """pgwarden → runtime → reconciler / identity / proxy: the command calls the assembly, never the reverse."""
    bad = {m for m in imports_of(path) if m.split(".")[0] == "pgwarden"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("runtime") + modules("pgwarden"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_server_is_composed_not_subclassed(path: Path) -> None:
    """A topology (workers, replicas) composes ProxyServer and SessionRegistry; it never subclasses them."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ClassDef):
            bases = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
            assert not bases & {"ProxyServer", "SessionRegistry"}, f"{path.relative_to(ROOT)}: class {node.name}"


FIRST_PARTY = ("proxy", "identity", "reconciler", "runtime", "pgwarden")


@pytest.mark.parametrize("path", [p for package in FIRST_PARTY for p in modules(package)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_names_are_imported_across_modules(path: Path) -> None:
    bad = [f"{node.module}.{alias.name}"
           for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
           if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
           and node.module.split(".")[0] in FIRST_PARTY
           for alias in node.names if alias.name.startswith("_")]
    assert not bad, f"{path.relative_to(ROOT)} imports private names {bad}"


@pytest.mark.parametrize("path", modules("proxy"), ids=lambda p: str(p.relative_to(ROOT)))
def test_proxy_never_imports_identity_web_parts(path: Path) -> None:
    """The data plane may verify tokens and certificates; the login pages and providers are not its business."""
    bad = {m for m in imports_of(path) if m.startswith(("identity.web", "identity.providers"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports, anywhere in the file (inside functions and
    `if TYPE_CHECKING:` too): `from a import b` counts as importing `a` and, if it is a module, `a.b`."""
    paths = {module_name(p): p for package in packages for p in modules(package)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_cycle_through_a_function_level_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_proxy_and_identity() -> None:
    """server → session → registry → metrics point one way; no module of proxy/ or identity/ imports itself back."""
    assert cycles(import_graph(("proxy", "identity"))) == []


def test_no_import_cycles_in_the_command_and_the_runtime() -> None:
    """`pgwarden up` and its workers share parts through runtime/, never by importing each other."""
    assert cycles(import_graph(("pgwarden", "runtime"))) == []
