"""--log-queries: literal-free query text from PostgreSQL's own parser; unparsable text is withheld."""

from __future__ import annotations

from proxy.audit.normalize import UNPARSABLE, Normalizer, QueryText, query_renderer


def test_literals_become_parameters() -> None:
    normalize = Normalizer()
    assert normalize("SELECT * FROM t WHERE id = 42") == "SELECT * FROM t WHERE id = $1"
    assert normalize("UPDATE t SET name = 'alice@example.com' WHERE id IN (1, 2)") == \
        "UPDATE t SET name = $1 WHERE id IN ($2, $3)"
    assert normalize("SELECT $1::int + 7") == "SELECT $1::int + $2"  # a client's own parameters stay first


def test_unparsable_text_is_withheld_not_passed_through() -> None:
    # An unterminated quote: a scrubber could not tell where the literal ends, so nothing of it is kept.
    assert Normalizer()("SELEC password = 'hunter2") == UNPARSABLE


def test_cache_is_bounded() -> None:
    normalize = Normalizer(max_entries=3)
    for i in range(10):
        assert normalize(f"SELECT {i}") == "SELECT $1"
    assert len(normalize._cache) == 3


def test_modes() -> None:
    assert query_renderer(QueryText.FULL) is None
    none = query_renderer(QueryText.NONE)
    assert none is not None and none("SELECT 1") is None
    normalized = query_renderer(QueryText.NORMALIZED)
    assert normalized is not None and normalized("SELECT 'x'") == "SELECT $1"
