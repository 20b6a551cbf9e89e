"""Loading a manifest directory: multi-document YAML 1.2, placement, and the refusals."""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import ManifestErrors, ManifestSyntaxError
from reconciler.load import Document, load_directory, load_file, with_body

WriteTree = Callable[[dict[str, str]], Path]  # the `write_tree` fixture in conftest.py


def errors_of(root: Path, **kwargs: int) -> list[str]:
    with pytest.raises(ManifestErrors) as info:
        load_directory(root, **kwargs)
    assert all(isinstance(e, ManifestSyntaxError) for e in info.value.errors)
    return [str(e) for e in info.value.errors]


def test_multi_document_files_are_placed_by_file_index_and_line(write_tree: WriteTree) -> None:
    root = write_tree(
        {
            "a.yaml": """\
                kind: Group
                metadata: {name: one}
                ---
                # a comment before the content

                kind: Group
                metadata: {name: two}
                ---
                ---
                kind: User
                metadata: {name: three}
            """
        }
    )
    docs = load_directory(root)
    assert [(d.file, d.index, d.line, d.kind, d.name) for d in docs] == [
        ("a.yaml", 1, 1, "Group", "one"),
        ("a.yaml", 2, 6, "Group", "two"),
        ("a.yaml", 4, 10, "User", "three"),  # the empty third document still counts
    ]


def test_walks_recursively_in_sorted_order_and_skips_other_files(write_tree: WriteTree) -> None:
    doc = "kind: Group\nmetadata: {name: g}\n"
    root = write_tree(
        {
            "b/z.yml": doc,
            "b/a.json": '{"kind": "Group", "metadata": {"name": "j"}}',
            "a.YAML": doc,
            "c.yaml": doc,
            "notes.txt": "not: a manifest",
            ".sops.yaml": "creation_rules: []",  # sops configuration, not a manifest
            ".git/config.yaml": doc,
        }
    )
    assert [d.file for d in load_directory(root)] == ["a.YAML", "b/a.json", "b/z.yml", "c.yaml"]


def test_body_is_plain_python_in_document_order(write_tree: WriteTree) -> None:
    root = write_tree(
        {
            "a.yaml": """\
                kind: User
                metadata: {name: u}
                spec:
                  attrs: {b: 1, a: [1.5, "x", null, true], since: 2024-05-01, at: 2024-05-01T10:00:00Z}
                  groups: [x]
            """
        }
    )
    [doc] = load_directory(root)
    attrs = doc.body["spec"]["attrs"]
    assert type(doc.body) is dict and type(attrs) is dict and type(attrs["a"]) is list
    assert list(doc.body) == ["kind", "metadata", "spec"] and list(attrs) == ["b", "a", "since", "at"]
    assert attrs["a"] == [1.5, "x", None, True] and type(attrs["b"]) is int
    assert type(attrs["since"]) is datetime.date
    assert type(attrs["at"]) is datetime.datetime and attrs["at"].utcoffset() == datetime.timedelta(0)


def test_yaml_1_2_keeps_norway_strings(write_tree: WriteTree) -> None:
    attrs = "{a: on, b: yes, c: no, d: off, e: NO, f: 010}"
    root = write_tree({"a.yaml": f"kind: Group\nmetadata: {{name: g}}\nspec:\n  attrs: {attrs}\n"})
    [doc] = load_directory(root)
    assert doc.body["spec"]["attrs"] == {"a": "on", "b": "yes", "c": "no", "d": "off", "e": "NO", "f": 10}


def test_duplicate_keys_are_refused_with_file_and_line(write_tree: WriteTree) -> None:
    root = write_tree(
        {
            "s.yaml": """\
                kind: Group
                metadata: {name: ok}
                ---
                kind: Secret
                metadata: {name: s}
                data:
                  value: "first-v4lue"
                  value: "second-v4lue"
            """
        }
    )
    [message] = errors_of(root)
    assert message.startswith("s.yaml, document 2: line 8, column 3: duplicate key 'value'")
    assert "v4lue" not in message


def test_syntax_errors_never_quote_the_source(write_tree: WriteTree) -> None:
    root = write_tree({"bad.yaml": 'kind: Secret\nmetadata: {name: s}\ndata: {value: "hunter2-unterminated\n'})
    [message] = errors_of(root)
    assert message.startswith("bad.yaml, document 1: line 4, column 1:")
    assert "hunter2" not in message


def test_every_file_problem_is_reported_at_once(write_tree: WriteTree) -> None:
    root = write_tree(
        {
            "a.yaml": "kind: Group\n  bad: indent: here\n",
            "b.yaml": "- just\n- a list\n",
            "c.yaml": "kind: Group\nmetadata: {name: fine}\n",
            "d.yaml": "kind: Group\nmetadata: !custom {name: x}\n",
            "e.yaml": "kind: Group\nmetadata: {name: x}\nspec: {attrs: {1: one}}\n",
        }
    )
    messages = errors_of(root)
    assert [m.split(",")[0] for m in messages] == ["a.yaml", "b.yaml", "d.yaml", "e.yaml"]
    assert "a document must be a mapping" in messages[1]
    assert messages[2].endswith("metadata: YAML tag '!custom' is not supported")
    assert messages[3].endswith("spec.attrs: mapping keys must be strings")


def test_size_limit(write_tree: WriteTree) -> None:
    doc = "kind: Group\nmetadata: {name: g}\n"
    big = doc + "#" * 100 + "\n"
    root = write_tree({"big.yaml": big, "small.yaml": doc})
    limit = len(big) - 1
    assert errors_of(root, max_file_bytes=limit) == [f"big.yaml: larger than the {limit}-byte limit"]
    assert len(load_directory(root, max_file_bytes=len(big))) == 2  # exactly at the limit is fine


def test_alias_expansion_is_bounded(write_tree: WriteTree) -> None:
    lines = ["kind: Group", "metadata: {name: g}", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    root = write_tree({"bomb.yaml": "\n".join(lines) + "\n"})
    [message] = errors_of(root)
    assert "expands to more than" in message


def test_symlinks_that_escape_the_root_are_refused(write_tree: WriteTree, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "stolen.yaml").write_text("kind: Group\nmetadata: {name: stolen}\n")
    root = write_tree({"real.yaml": "kind: Group\nmetadata: {name: real}\n"})
    os.symlink(outside / "stolen.yaml", root / "link.yaml")
    os.symlink(outside, root / "linkdir")
    os.symlink(root / "real.yaml", root / "inside.yaml")  # stays inside: allowed
    os.symlink(root / "missing.yaml", root / "broken.yaml")
    messages = errors_of(root)
    assert messages == [
        "broken.yaml: broken symlink",
        "link.yaml: symlink points outside the manifest root",
        "linkdir: symlink points outside the manifest root",
    ]
    with pytest.raises(ManifestErrors, match="link.yaml: symlink points outside"):
        load_file(root / "link.yaml", root)
    assert [d.name for d in load_file(root / "inside.yaml", root)] == ["real"]


def test_not_utf8(write_tree: WriteTree) -> None:
    root = write_tree({})
    (root / "latin1.yaml").write_bytes(b"kind: Group\nmetadata: {name: caf\xe9}\n")
    assert errors_of(root) == ["latin1.yaml: not UTF-8 (byte 32)"]


def test_missing_kind_and_name_are_left_for_validation(write_tree: WriteTree) -> None:
    root = write_tree({"a.yaml": "metadata: {}\nspec: {}\n---\nkind: [Group]\nmetadata: {name: 3}\n"})
    assert [(d.kind, d.name) for d in load_directory(root)] == [("", ""), ("", "")]


def test_with_body_reads_kind_and_name_again() -> None:
    doc = Document(file="s.yaml", index=1, line=1, kind="ENC[x]", name="", body={"kind": "ENC[x]"})
    decrypted = with_body(doc, {"kind": "Secret", "metadata": {"name": "pw"}, "data": {"value": "v"}})
    assert (decrypted.kind, decrypted.name, decrypted.file, decrypted.index) == ("Secret", "pw", "s.yaml", 1)


def test_tags_and_unreadable_values(write_tree: WriteTree) -> None:
    root = write_tree(
        {
            "a.yaml": "kind: Group\nmetadata: {name: !!str 1}\n",
            "b.yaml": "kind: Group\nmetadata: !!python/object:os.system {name: x}\n",
            "c.yaml": "kind: Group\nmetadata: {name: g}\nspec: {attrs: {when: 2024-13-45}}\n",
            "d.yaml": "kind: Group\nmetadata: {name: g}\nspec: {attrs: {n: !!int s3cret}}\n",
        }
    )
    messages = errors_of(root)
    assert messages == [
        "b.yaml, document 1, metadata: YAML tag 'tag:yaml.org,2002:python/object:os.system' is not supported",
        "c.yaml, document 1: a value cannot be read (ValueError): check dates and explicit !!tags",
        "d.yaml, document 1: a value cannot be read (ValueError): check dates and explicit !!tags",
    ]
    (root / "b.yaml").unlink()
    (root / "c.yaml").unlink()
    (root / "d.yaml").unlink()
    assert load_directory(root)[0].name == "1"
