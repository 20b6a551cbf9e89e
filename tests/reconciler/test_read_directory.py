"""Reading a manifest directory: walked regular files are read directly, anything else is examined."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from reconciler.load import read_directory

WriteTree = Callable[[dict[str, str]], Path]  # the `write_tree` fixture in conftest.py


def test_fifos_are_refused_without_blocking(write_tree: WriteTree) -> None:
    root = write_tree({"a.yaml": "kind: Group\nmetadata: {name: g}\n"})
    os.mkfifo(root / "pipe.yaml")  # opening it for reading would wait for a writer forever
    files, problems = read_directory(root)
    assert [f.path for f in files] == ["a.yaml"]
    assert [str(p) for p in problems] == ["pipe.yaml: not a regular file"]


def test_nested_paths_and_the_size_limit(write_tree: WriteTree) -> None:
    root = write_tree({"a/b/c.yaml": "x" * 10, "a/d.yml": "y" * 11})
    files, problems = read_directory(root, max_file_bytes=10)
    assert [(f.path, f.data) for f in files] == [("a/b/c.yaml", b"x" * 10)]
    assert [str(p) for p in problems] == ["a/d.yml: larger than the 10-byte limit"]

