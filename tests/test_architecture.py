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


def modules(package: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / package).rglob("*.py"))


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
    """No sockets, no event loop, and nothing of the proxy but the root error module."""
    bad = {
        m for m in imports_of(path)
        if m.split(".")[0] in ("asyncio", "socket", "ssl", "uvloop")
        or (m.startswith("proxy.") and not m.startswith("proxy.pgwire") and m != "proxy.errors")
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





@pytest.mark.parametrize("path", modules("proxy"), ids=lambda p: str(p.relative_to(ROOT)))
def test_proxy_never_imports_identity_web_parts(path: Path) -> None:
    """The data plane may verify tokens and certificates; the login pages and providers are not its business."""
    bad = {m for m in imports_of(path) if m.startswith(("identity.web", "identity.providers"))}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(packages: tuple[str, ...], root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports, anywhere in the file (inside functions and
    `if TYPE_CHECKING:` too): `from a import b` counts as importing `a` and, if it is a module, `a.b`."""
    paths = {module_name(p, root): p for package in packages for p in modules(package, root)}
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


# Every room whose modules the cycle and private-name checks cover.
ROOMS = ("proxy", "identity", "reconciler", "runtime", "pgwarden")

def test_no_import_cycles() -> None:
    """server → session → registry → metrics, loop → stages, command → runtime → rooms: no module of proxy/,
    identity/, reconciler/, runtime/ or pgwarden/ imports itself back, not even from inside a function."""
    assert cycles(import_graph(ROOMS)) == []


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(packages: tuple[str, ...], root: Path = ROOT) -> set[tuple[str, str, str]]:
    """(importer, module, name) for each private name of one of our modules used by another: imported
    (`from m import _x`) or reached through the module (`m._x`, `a.m._x`), anywhere in the file."""
    paths = {module_name(p, root): p for package in packages for p in modules(package, root)}
    found: set[tuple[str, str, str]] = set()
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        bound: dict[str, str] = {}  # local name -> the module of ours it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in paths:
                        bound[alias.asname] = alias.name
                    elif alias.name.split(".")[0] in packages:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] not in packages:
                    continue
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in paths:
                        bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    elif is_private(alias.name):
                        found.add((name, node.module, alias.name))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
                continue
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                module = ".".join([bound[value.id], *reversed(chain)])
                if module in paths and module != name:
                    found.add((name, module, node.attr))
    return found


def write_room(root: Path, files: dict[str, str]) -> None:
    (root / "room").mkdir()
    (root / "room" / "__init__.py").write_text("")
    for name, text in files.items():
        (root / "room" / name).write_text(text)


def test_import_graph_sees_imports_inside_functions(tmp_path: Path) -> None:
    write_room(tmp_path, {"a.py": "from room import b\n", "b.py": "def f():\n    import room.a\n"})
    assert cycles(import_graph(("room",), tmp_path)) == [["room.a", "room.b"]]


def test_private_imports_finds_imported_and_reached_names(tmp_path: Path) -> None:
    write_room(tmp_path, {
        "a.py": "_x = 1\n",
        "b.py": "from room.a import _x\n",
        "c.py": "def f():\n    from room import a\n    return a._x\n",
        "d.py": "import room.a\nimport room.a as alias\nprint(room.a._x, alias._x, room.a.__name__)\n",
        "e.py": "from room.a import __doc__\n_y = 2\nprint(_y)\n",
    })
    assert private_imports(("room",), tmp_path) == {
        ("room.b", "room.a", "_x"), ("room.c", "room.a", "_x"), ("room.d", "room.a", "_x")}


def test_no_private_names_imported_across_modules() -> None:
    """A leading underscore means "this module's own": another module that needs it should get a public name."""
    assert private_imports(ROOMS) == set()

