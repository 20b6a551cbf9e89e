"""The decision line's hand-written encodings give exactly the JSON the generic encoder gives."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.audit.accesslog import _compact_json, _request_json, _response_json

texts = st.text(max_size=30)  # any code point: quotes, backslashes, control characters, non-ASCII


@given(st.one_of(
    st.fixed_dictionaries({"query": texts}),
    st.fixed_dictionaries({"query": texts, "name": texts}),
    st.builds(lambda name, query: {"name": name, "query": query}, texts, texts),  # the other key order
    st.fixed_dictionaries({"query": texts, "name": st.integers()}),
    st.fixed_dictionaries({"oid": st.integers(0, 2**32)}),
    st.fixed_dictionaries({"query": st.none()}),
))
def test_request_json_is_the_compact_json(request: dict[str, object]) -> None:
    assert _request_json(request) == _compact_json(request)
    assert json.loads(_request_json(request)) == request


@given(texts, st.integers(0, 2**63), st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
       st.one_of(st.none(), st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=5, max_size=5)))
def test_response_json_is_the_compact_json(tag: str, rows: int, duration: float, sqlstate: str | None) -> None:
    response: dict[str, object] = {"commandTag": tag, "rows": rows, "durationMs": duration}
    if sqlstate is not None:
        response["sqlstate"] = sqlstate
    assert _response_json(response) == _compact_json(response)
    assert json.loads(_response_json(response)) == response
