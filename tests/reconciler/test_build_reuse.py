"""The next cycle reuses what an unchanged document built: the same Service and User objects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reconciler import build, load

WriteTree = Callable[[dict[str, str]], Path]  # the `write_tree` fixture in conftest.py

SERVICE = """\
kind: Service
metadata: {name: db}
spec:
  config: {upstream: {url: "postgres://db:5432"}, postgres: {user: app, database: app}}
"""


def test_unchanged_documents_are_not_built_again(write_tree: WriteTree) -> None:
    root = write_tree({
        "db.yaml": SERVICE,
        "users.yaml": "kind: User\nmetadata: {name: ann}\n---\nkind: User\nmetadata: {name: bob}\n",
    })
    parser, builder = load.Parser(), build.Builder()  # what the reconcile loop keeps between cycles
    first = build.build_snapshot(load.load_directory(root, parser=parser), revision="1", source="t", builder=builder)
    (root / "users.yaml").write_text("kind: User\nmetadata: {name: ann}\n---\nkind: User\nmetadata: {name: bob}\n"
                                     "spec: {groups: []}\n")
    second = build.build_snapshot(load.load_directory(root, parser=parser), revision="2", source="t", builder=builder)
    assert second.services["db"] is first.services["db"]  # db.yaml's bytes did not change
    assert second.users["ann"] is not first.users["ann"]  # users.yaml did: both are built again
    assert second.users["ann"] == first.users["ann"]
    assert second.revision == "2"
