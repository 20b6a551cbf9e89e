"""The libyaml manifest loader against ruamel.yaml's YAML 1.2 loader, which it must match exactly.

`load._parse_file` reads with libyaml (`reconciler.yaml12`) and hands anything unusual to ruamel;
`load._parse_with_ruamel` is the loader as it was. Documents (types included) and error messages
must be the same for any input: the semantics cases below pin what both say, and the property
tests compare them on generated manifests, on their mutations, and on fragments of rare syntax.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml as pyyaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from reconciler import load, yaml12
from reconciler.errors import ManifestErrors
from reconciler.load import ManifestFile

HEAD = "kind: Group\nmetadata: {name: g}\n"


def parse_new(text: str) -> list[load.Document]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ruamel warns about reused anchors
        return load._parse_file(ManifestFile(path="m.yaml", data=text.encode()))


def parse_ruamel(text: str) -> list[load.Document]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ruamel warns about reused anchors
        return load._parse_with_ruamel("m.yaml", text.encode().decode("utf-8-sig"))  # as parse_file decodes


def typed(value: Any) -> Any:
    """A value with every type spelled out: True and 1, 1 and 1.0, naive and aware datetimes differ."""
    if isinstance(value, dict):
        return ("dict", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    if isinstance(value, datetime.datetime):
        return ("datetime", value.isoformat(), repr(value.tzinfo))
    return (type(value).__name__, value)


def outcome(parse: Any, text: str) -> tuple[str, Any]:
    try:
        docs = parse(text)
    except ManifestErrors as exc:
        return "errors", [str(e) for e in exc.errors]
    return "documents", [(d.file, d.index, d.line, d.kind, d.name, typed(d.body)) for d in docs]


def assert_same(text: str) -> None:
    assert outcome(parse_new, text) == outcome(parse_ruamel, text), text


def fast_path_body(text: str) -> dict[str, Any]:
    """The body libyaml gives (raises Unsupported where the file goes to ruamel)."""
    [(_, _, body)] = list(yaml12.documents(text, max_values=1000, max_depth=100))
    assert body is not None
    return body


# --- YAML 1.2 semantics, as ruamel gave them and libyaml now gives them ------------------------
SEMANTICS = [
    ("on", "on"), ("yes", "yes"), ("no", "no"), ("off", "off"), ("Y", "Y"), ("NO", "NO"),  # 1.1 booleans
    ("true", True), ("True", True), ("TRUE", True), ("false", False), ("FALSE", False), ("tRue", "tRue"),
    ("~", None), ("null", None), ("Null", None), ("NULL", None), ("", None), ("nULL", "nULL"),
    ("0777", 777), ("010", 10), ("-0", 0), ("+12", 12), ("1_000", 1000), ("0o17", 15), ("0x1F", 31), ("0b11", 3),
    ("1:20", "1:20"), ("190:20:30", "190:20:30"),  # 1.1 sexagesimal
    ("1.5", 1.5), ("1.", 1.0), (".5", 0.5), ("1e3", 1000.0), ("-1.5e+3", -1500.0),
    (".inf", math.inf), ("-.inf", -math.inf), ("+.inf", math.inf), (".Inf", math.inf),
    ("2024-05-01", datetime.date(2024, 5, 1)),
    ("2024-05-01 10:00:00", datetime.datetime(2024, 5, 1, 10, 0)),
    ("2024-05-01T10:00:00Z", datetime.datetime(2024, 5, 1, 10, 0, tzinfo=datetime.timezone(datetime.timedelta(0), "Z"))),  # noqa: E501
    ("_", "_"), ("0x", "0x"), ("1.2.3", "1.2.3"), ("a b", "a b"),
]


@pytest.mark.parametrize(("plain", "expected"), SEMANTICS)
def test_plain_scalars_are_typed_by_yaml_1_2(plain: str, expected: Any) -> None:
    text = f"{HEAD}v: {plain}\n"
    [doc] = parse_new(text)
    assert typed(doc.body["v"]) == typed(expected)
    assert_same(text)
    if plain not in ("_",):  # `_` matches ruamel's int pattern but is a string: only ruamel knows
        assert typed(fast_path_body(text)["v"]) == typed(expected)  # no detour through ruamel
    quoted = f"{HEAD}v: '{plain}'\n"
    assert parse_new(quoted)[0].body["v"] == plain  # quoted: always a string


def test_nan() -> None:
    [doc] = parse_new(f"{HEAD}v: .nan\nw: .NaN\n")
    assert math.isnan(doc.body["v"]) and math.isnan(doc.body["w"])


def test_duplicate_keys_are_refused_as_before() -> None:
    text = f"{HEAD}m:\n  a: 1\n  b: 2\n  a: 3\n"
    with pytest.raises(yaml12.Unsupported):
        fast_path_body(text)
    with pytest.raises(ManifestErrors) as info:
        parse_new(text)
    assert [str(e) for e in info.value.errors] == [
        "m.yaml, document 1: line 6, column 3: duplicate key 'a' (the mapping starts at line 4)"
    ]
    assert_same(text)
    assert_same(f"{HEAD}m: {{a: 1, 'a': 2}}\n")  # quoting does not make another key


def test_anchors_and_aliases_copy_the_value() -> None:
    text = f"{HEAD}base: &b {{x: 1, l: [1, 2]}}\ncopy: *b\nname: &n svc\nalso: *n\n*n : key from an alias\n"
    body = fast_path_body(text)
    assert body["copy"] == {"x": 1, "l": [1, 2]} and body["also"] == "svc" and body["svc"] == "key from an alias"
    assert body["copy"] is not body["base"] and body["copy"]["l"] is not body["base"]["l"]  # as ruamel -> plain did
    assert_same(text)


def test_merge_keys_keep_ruamels_meaning() -> None:
    text = f"{HEAD}base: &b {{x: 1, y: 2}}\nm:\n  z: 0\n  <<: *b\n  y: 3\nn:\n  <<: [*b, {{w: 4, x: 9}}]\n"
    with pytest.raises(yaml12.Unsupported):
        fast_path_body(text)  # merge keys are read by ruamel
    [doc] = parse_new(text)
    assert doc.body["m"] == {"z": 0, "y": 3, "x": 1}  # own keys first, then merged ones; own keys win
    assert doc.body["n"] == {"x": 1, "y": 2, "w": 4}  # the first mapping listed wins
    assert list(doc.body["m"]) == ["z", "y", "x"]
    assert_same(text)


@pytest.mark.parametrize(
    "text",
    [
        f"%YAML 1.1\n---\n{HEAD}v: on\n",  # ruamel honours the directive: `on` is true here
        f"{HEAD}v: !!str 1\nw: !!int '3'\nx: ! 12\n",
        f"{HEAD}v: !custom x\n",
        f"{HEAD}v: !!binary aGk=\n",
        f"{HEAD}m: &a {{x: 1}}\nn: &a {{y: 2}}\no: *a\n",  # a reused anchor: the latest wins
        f"{HEAD}m: *nowhere\n",
        f"{HEAD}? [complex, key]\n: 1\n",
        f"{HEAD}1: one\n",
        f"{HEAD}v: =\n",
        f"{HEAD}v: -\n",
        "- a list\n",
        "just a string\n",
        "~\n---\n" + HEAD,
        "---\n---\n" + HEAD + "...\n",
        f"{HEAD}v: 2024-13-45\n",
        f"{HEAD}v: {'1' * 5000}\nw: {'1' * 5000}.5\n",  # past Python's int-from-str digit limit
        f"{HEAD}v: \"unterminated\n",
        f"{HEAD}  bad: indent\n",
        "\ufeff" + HEAD,
        f"{HEAD}v: a\tb\nw:\ttab\n",
        f"{HEAD}v: \"\\/\\x41\\u00e9\\U0001F600\"\n",
        f"{HEAD}v: |+\n  kept\n\n\nw: >-\n  folded\n  text\n\n  para\n",
        '{"kind": "Group", "metadata": {"name": "g"}, "n": 1.0e+2, "s": "x\\/y"}\n',
    ],
)
def test_rare_constructs_read_as_ruamel_reads_them(text: str) -> None:
    assert_same(text)


def test_deep_nesting_is_refused_without_crashing_the_process() -> None:
    # PyYAML's C composer recurses per level and crashes the process near 100,000 levels; the
    # event loop in yaml12 stops at the depth limit and ruamel reports the file.
    text = f"{HEAD}v: " + "[" * 200_000 + "]" * 200_000 + "\n"
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(outcome(parse_new, text)))  # like the reconciler
    worker.start()
    worker.join()
    [(what, messages)] = result
    assert what == "errors" and len(messages) == 1 and messages[0].startswith("m.yaml, document 1")
    assert "nested too deeply" in messages[0] or "100 levels" in messages[0]


def test_alias_bombs_stop_at_the_value_limit() -> None:
    lines = [HEAD.rstrip("\n"), "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    with pytest.raises(yaml12.Unsupported):
        list(yaml12.documents("\n".join(lines), max_values=100_000, max_depth=100))


def test_plain_scalar_resolution_matches_ruamels_resolver_tables() -> None:
    """The regular expressions copied from ruamel are ruamel's (a ruamel upgrade that changes them fails here)."""
    from ruamel.yaml.resolver import implicit_resolvers

    def spelled(pattern: str) -> str:
        return re.sub(r"\s+", "", pattern)  # verbose patterns: layout is not meaning

    tables = {tag: spelled(regexp.pattern) for versions, tag, regexp, _ in implicit_resolvers if (1, 2) in versions}
    assert tables["tag:yaml.org,2002:float"] == spelled(yaml12._FLOAT_12.pattern)
    assert tables["tag:yaml.org,2002:int"] == spelled(yaml12._INT_12.pattern)
    assert tables["tag:yaml.org,2002:timestamp"] == spelled(yaml12._TIMESTAMP.pattern)


# --- differential properties --------------------------------------------------------------------
TRICKY = [text for text, _ in SEMANTICS] + [
    "<<", "=", "-1_0", "0b", "0o8", "1e", "1E+2", "+.5", ".e3", "1__0", "0x_1", "2024-1-2 3:04:05",
    "2001-12-14t21:59:43.10-05:00", "12:30", "1,5", "svc-1", "a#b", "x:y", "é", "ünï", "true-ish",
]
keys = st.one_of(st.sampled_from(["kind", "metadata", "name", "spec", "v", "on", "yes", "1", "true", "null"]),
                 st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6))
scalars = st.one_of(
    st.sampled_from(TRICKY),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
    st.integers(), st.floats(), st.booleans(), st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
documents = st.lists(st.dictionaries(keys, values, max_size=5), min_size=1, max_size=3)


def dump(docs: list[Any], style: int) -> str:
    """Render documents one of several ways: PyYAML block/flow, ruamel, JSON, or plain-scalar flow."""
    if style == 0:
        return pyyaml.safe_dump_all(docs, allow_unicode=True, sort_keys=False)
    if style == 1:
        return pyyaml.safe_dump_all(docs, default_flow_style=True, explicit_start=True, width=20)
    if style == 2:
        import io

        out = io.StringIO()
        YAML(typ="rt").dump_all(docs, out)
        return out.getvalue()
    if style == 3:
        return "\n---\n".join(json.dumps(d, default=str) for d in docs)
    return "\n---\n".join(_raw(d) for d in docs)  # plain scalars written raw: ambiguous on purpose


def _raw(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_raw(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_raw(v) for v in value) + "]"
    return str(value)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_an_anchored_boolean_stays_a_boolean_on_both_paths() -> None:
    # Found by the mutation test: ruamel keeps `&a false` as ScalarBoolean, an int subclass, so a file that went
    # to ruamel (a reused anchor, say) saw 0 where the fast path saw False, and the schema said "not a boolean".
    text = "kind: Group\nmetadata: {name: g}\na: &x false\nb: *x\nc: &y true\nd: [&z true, *z]\n"
    assert_same(text)
    [doc] = parse_ruamel(text)
    assert [type(doc.body[k]) for k in "abc"] == [bool, bool, bool] and doc.body["d"] == [True, True]


@SETTINGS
@given(documents, st.integers(0, 4))
def test_generated_manifests_read_the_same(docs: list[Any], style: int) -> None:
    assert_same(dump(docs, style))


MUTATIONS = st.lists(
    st.tuples(st.floats(0, 1), st.sampled_from([
        "", " ", "  ", "\t", "\n", ":", ": ", "- ", "-", "#", "'", '"', "[", "]", "{", "}", ",", "&a ", "*a",
        "!", "!!str ", "? ", "|", ">", "%", "---\n", "...\n", "~", "\\", "\r\n", "\u2028", "\x85", "\ufeff", "<<: ",
    ])),
    min_size=1, max_size=4,
)


@SETTINGS
@given(documents, st.integers(0, 4), MUTATIONS)
def test_mutated_manifests_read_or_fail_the_same(docs: list[Any], style: int, edits: list[tuple[float, str]]) -> None:
    text = dump(docs, style)
    for where, insert in edits:  # insert (or with "", delete one character) somewhere
        at = int(where * len(text))
        text = text[:at] + insert + text[at + (0 if insert else 1):]
    assert_same(text)


@SETTINGS
@given(st.lists(st.sampled_from([
    "kind: Group\n", "metadata: {name: g}\n", "a: &x 1\n", "b: *x\n", "c: &y {p: 1}\n", "d: *y\n", "<<: *y\n",
    "e: [*x, *y]\n", "---\n", "...\n", "# comment\n", "\n", "f:\n  - 1\n  - *x\n", "g: |\n  text\n",
    "h: >\n  folded\n", "i: 'it''s'\n", 'j: "\\t"\n', "k: !!str 2\n", "%YAML 1.2\n", "l: ~\n", "? m\n: n\n",
    "o: 0o7\n", "p: 2024-01-02\n", "- item\n", "q:\n", "  r: s\n", "t: u: v\n", "w: @x\n", "y: `z\n",
]), max_size=10))
def test_fragments_of_rare_syntax_read_the_same(lines: list[str]) -> None:
    assert_same("".join(lines))


def test_ruamel_warnings_do_not_echo_manifest_lines() -> None:
    """A reused anchor sends the file to ruamel, whose warning quotes the lines (a secret may be there)."""
    code = (
        "from reconciler.load import ManifestFile, parse_file\n"
        "text = b'kind: Secret\\nmetadata: &a {name: s}\\ndata: &a {value: hunter2-s3cret}\\nx: *a\\n'\n"
        "[doc] = parse_file(ManifestFile(path='s.yaml', data=text))\n"
        "assert doc.body['x'] == {'value': 'hunter2-s3cret'}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:].replace("hunter2-s3cret", "…")
    assert "hunter2" not in done.stdout + done.stderr


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """Strings around YAML's timestamp grammar: valid, out of range (month 13) and near misses."""
    digits = st.text("0123456789", min_size=1, max_size=2)
    text = f"{draw(st.text('0123456789', min_size=4, max_size=4))}-{draw(digits)}-{draw(digits)}"
    if draw(st.booleans()):
        text += draw(st.sampled_from(["T", "t", " ", "  ", "\t"])) + f"{draw(digits)}:{draw(digits)}:{draw(digits)}"
        text += draw(st.sampled_from(["", ".", ".5", ".123456", ".1234567", ".999999999"]))
        text += draw(st.sampled_from(["", "Z", " Z", "+1", "-05:00", "+14:30", "-9", "+05:3"]))
    return text


@SETTINGS
@given(timestamps())
def test_timestamps_read_the_same(value: str) -> None:
    assert_same(f"{HEAD}v: {value}\nw: [{value}]\n")


def test_real_manifests_take_the_libyaml_path() -> None:
    """The examples (sops-encrypted Secrets included) never need ruamel: the fast path is the common path."""
    root = Path(__file__).resolve().parents[2] / "examples-repo"
    files, problems = load.read_directory(root)
    assert files and not problems
    for file in files:
        text = file.data.decode("utf-8-sig")
        assert [body for _, _, body in yaml12.documents(text, max_values=100_000, max_depth=100) if body]
        assert_same(text)
