"""The literal-free shape key: the one-pass scanner (compiled by pip install) equals the regex definition."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.policy import shape_key as compiled
from proxy.policy.classify import classify


def _interpreted() -> ModuleType:
    """shape_key.py loaded from its source, never the compiled module: the same file, run by the interpreter."""
    path = Path(compiled.__file__).with_name("shape_key.py")
    spec = importlib.util.spec_from_file_location("shape_key_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = _interpreted()
# Characters that matter to the key (quotes, digits, dots, exponents, prefixes, refusals) and some that do not.
sql_text = st.text(alphabet=st.sampled_from(list("''''0123456789..eE+-_&aEUBX xy$\\\"/*;()=,é٣")), max_size=40)


@settings(max_examples=3000, deadline=None)
@given(sql_text)
@example("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;")
@example("SELECT 'it''s', 1.5e+3, x1, .5, 2e, 'a'")
@example("SELECT 'a'' 'b'")  # unterminated after an escaped pair: the regex backtracks, both refuse
@example("SELECT E'x', 1")
@example("SELECT '--', 1")
@example("SELECT '١٢', ٣")  # Arabic-Indic digits: \\d matches them (the non-ASCII path keeps the regex)
def test_compiled_interpreted_and_definition_agree(sql: str) -> None:
    expected = SOURCE.shape_key_regex(sql)
    assert SOURCE.shape_key(sql) == expected
    assert compiled.shape_key(sql) == expected


@pytest.mark.parametrize(("sql", "key"), [
    ("SELECT abalance FROM t WHERE aid = 12345;", "SELECT abalance FROM t WHERE aid = 0;"),
    ("SELECT * FROM t WHERE a = 'x''y' AND b IN (1, 2.5, 3e-2)", "SELECT * FROM t WHERE a = '' AND b IN (0, 0, 0)"),
    ("SELECT col1, t2.c FROM t2", "SELECT col1, t2.c FROM t2"),  # digits inside names stay
    ("SELECT E'\\x41'", None), ("SELECT $1", None), ('SELECT "a1"', None), ("SELECT 1 -- c", None),
    ("SELECT 'open", None), ("SELECT x'1F'", None),
])
def test_keys(sql: str, key: str | None) -> None:
    assert compiled.shape_key(sql) == key


def test_texts_that_differ_in_literals_share_one_classification() -> None:
    first = classify("SELECT abalance FROM pgbench_accounts WHERE aid = 777001;")
    assert classify("SELECT abalance FROM pgbench_accounts WHERE aid = 777002;") is first
    assert classify("SELECT abalance FROM pgbench_accounts WHERE aid = 777002 FOR UPDATE;") is not first


def test_every_module_setup_py_compiles_is_built_and_not_older_than_its_source() -> None:
    """`pip install -e .` builds them (README's test command runs it); an extension module shadows its .py, so one
    built before the last edit would run old code, and one missing would leave the per-query path interpreted."""
    root = Path(__file__).resolve().parents[3]
    listed = re.findall(r'^\s+"(proxy/[\w/]+\.py)"', (root / "setup.py").read_text(), re.MULTILINE)
    assert "proxy/policy/shape_key.py" in listed and "proxy/pgwire/walker.py" in listed
    for name in listed:
        source = root / name
        built = sorted(source.parent.glob(f"{source.stem}.*.so"))
        assert built, f"{name} is not compiled: run `pip install -e .`"
        for edited in (source, source.with_suffix(".pxd")):
            assert built[0].stat().st_mtime >= edited.stat().st_mtime, f"{built[0]} is older than {edited.name}"
    assert compiled.__file__.endswith(".so")
