"""The error trees drawn in the errors modules' docstrings are the real class hierarchy: none missing, none invented.

proxy/errors.py draws every exception class pgwarden defines; each other errors module draws the subtrees of the
classes it defines. Drawings are read line by line: `Name  note` starts a tree, `├── Name` / `└── Name` (under
`│   ` or four spaces per level) is a child of the name one level up.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator

import pytest

from proxy.errors import PgwardenError

PACKAGES = ("proxy", "identity", "reconciler", "runtime", "pgwarden")
ROOT_MODULE = "proxy.errors"
ERRORS_MODULES = (ROOT_MODULE, "proxy.pgwire.errors", "identity.errors", "reconciler.errors", "reconciler.sops.errors")

_ROOT_LINE = re.compile(r"(?P<name>_?[A-Z]\w*)(?:\s{2,}.*)?$")  # a name alone, or a note after two spaces
_CHILD_LINE = re.compile(r"(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>_?[A-Z]\w*)(?:\s{2,}.*)?$")


def ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] in PACKAGES


def walk_subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        if ours(sub):  # a test may subclass an error; only the packages' own classes are drawn
            yield sub
            yield from walk_subclasses(sub)


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class the packages define, by name: each module imported, plus PgwardenError's subclasses."""
    found: set[type[BaseException]] = set()
    for package in PACKAGES:
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            if info.name.endswith(".__main__"):
                continue
            module = importlib.import_module(info.name)
            found.update(obj for obj in vars(module).values()
                         if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == info.name)
    found.add(PgwardenError)
    found.update(walk_subclasses(PgwardenError))
    by_name: dict[str, type[BaseException]] = {}
    for cls in found:
        other = by_name.setdefault(cls.__name__, cls)
        assert other is cls, f"two exceptions named {cls.__name__}: {other.__module__} and {cls.__module__}"
    return by_name


def drawn(docstring: str) -> list[tuple[str, str | None]]:
    """(name, parent) for every class drawn, in order; a tree's first line has parent None."""
    edges: list[tuple[str, str | None]] = []
    path: list[str] = []  # the names from the tree's first line down to the last line read
    for line in docstring.splitlines():
        if child := _CHILD_LINE.match(line):
            depth = len(child["indent"]) // 4 + 1
            assert path and depth <= len(path), f"{child['name']} is drawn under nothing: {line!r}"
            del path[depth:]
            edges.append((child["name"], path[-1]))
            path.append(child["name"])
        elif root := _ROOT_LINE.match(line):
            edges.append((root["name"], None))
            path = [root["name"]]
        else:
            path = []
    return edges


def problems(module: str, docstring: str, classes: dict[str, type[BaseException]], *, is_root: bool) -> list[str]:
    """What is wrong with one module's drawing: invented names, wrong parents, classes left out."""
    edges = drawn(docstring)
    names = [name for name, _ in edges]
    found = [f"{name} is drawn twice" for name in sorted({n for n in names if names.count(n) > 1})]
    for name, parent in edges:
        cls = classes.get(name)
        if cls is None:
            found.append(f"{name} is drawn but no such exception exists")
        elif parent is not None and parent not in {base.__name__ for base in cls.__bases__}:
            found.append(f"{name} is drawn under {parent} but its bases are {[b.__name__ for b in cls.__bases__]}")
        elif parent is None and is_root and any(ours(b) and issubclass(b, BaseException) for b in cls.__bases__):
            found.append(f"{name} is drawn as a root but derives from {[b.__name__ for b in cls.__bases__]}")
    if is_root:
        owed = set(classes)
    else:  # the classes this module defines, with every subclass wherever it is defined
        owed = set()
        for cls in classes.values():
            if cls.__module__ == module:
                owed |= {cls.__name__, *(sub.__name__ for sub in walk_subclasses(cls))}
    found += [f"{name} ({classes[name].__module__}) is not drawn" for name in sorted(owed - set(names))]
    return found


@pytest.fixture(scope="module")
def classes() -> dict[str, type[BaseException]]:
    return defined_exceptions()


@pytest.mark.parametrize("module", ERRORS_MODULES)
def test_errors_module_draws_its_real_tree(module: str, classes: dict[str, type[BaseException]]) -> None:
    docstring = importlib.import_module(module).__doc__ or ""
    assert problems(module, docstring, classes, is_root=module == ROOT_MODULE) == []


def test_the_root_drawing_names_every_exception_pgwarden_defines(classes: dict[str, type[BaseException]]) -> None:
    names = {name for name, _ in drawn(importlib.import_module(ROOT_MODULE).__doc__ or "")}
    assert {"PgwardenError", "ProtocolViolation", "IdentityError", "ConfigError", "SopsError"} <= names
    assert names == set(classes)


class Drawn(Exception):
    __module__ = "proxy.example"


class Child(Drawn):
    __module__ = "proxy.example"


def test_the_check_finds_a_missing_an_invented_and_a_misplaced_class() -> None:
    classes: dict[str, type[BaseException]] = {"Drawn": Drawn, "Child": Child}
    assert problems("proxy.example", "Drawn  a note\n└── Child  its child\n", classes, is_root=True) == []
    assert problems("proxy.example", "Drawn\n", classes, is_root=True) == ["Child (proxy.example) is not drawn"]
    assert problems("proxy.example", "Drawn\n", classes, is_root=False) == ["Child (proxy.example) is not drawn"]
    assert problems("proxy.example", "Drawn\n├── Child\n└── Ghost\n", classes, is_root=True) == [
        "Ghost is drawn but no such exception exists"]
    assert problems("proxy.example", "Child\n└── Drawn\n", classes, is_root=True) == [
        "Child is drawn as a root but derives from ['Drawn']",
        "Drawn is drawn under Child but its bases are ['Exception']",
    ]
    # Free text between trees is not read as a class: a capitalised word is one only when alone on its line.
    assert drawn("The tree:\n\nDrawn  note\n└── Child\nA Terminal error is about...\n") == [
        ("Drawn", None), ("Child", "Drawn")]
