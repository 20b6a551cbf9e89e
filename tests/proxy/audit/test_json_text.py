"""The access log's JSON string (compiled by pip install) is exactly the json module's, compiled or not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from hypothesis import example, given
from hypothesis import strategies as st

from proxy.audit import json_text as compiled


def _interpreted() -> ModuleType:
    """json_text.py loaded from its source, never the compiled module: the same file, run by the interpreter."""
    path = Path(compiled.__file__).with_name("json_text.py")
    spec = importlib.util.spec_from_file_location("json_text_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = _interpreted()


@given(st.one_of(st.text(), st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=160))))
@example("SELECT abalance FROM pgbench_accounts WHERE aid = 1;")
@example('say "hi" \\ bye\x7f\x1f\n')
@example("naïve 😀 \u2028")
@example("")
def test_json_string_is_the_json_modules(text: str) -> None:
    expected = json.encoder.encode_basestring_ascii(text)
    assert compiled.json_string(text) == expected
    assert SOURCE.json_string(text) == expected
    assert json.loads(expected) == text
