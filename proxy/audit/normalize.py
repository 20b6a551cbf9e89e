"""What the access log keeps of a query's text: all of it, its literal-free form, or nothing.

The normalised form comes from PostgreSQL's own parser (libpg_query's pg_query_normalize through pglast):
`SELECT * FROM t WHERE id = 42` becomes `SELECT * FROM t WHERE id = $1`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from pglast import parser

CACHE_ENTRIES = 4096
# A string PostgreSQL cannot parse may hold a literal we cannot find (an unterminated quote): withhold it all.
UNPARSABLE = "-- text withheld: not parseable as SQL"


class QueryText(StrEnum):
    """The --log-queries choices."""

    FULL = "full"
    NORMALIZED = "normalized"
    NONE = "none"


class Normalizer:
    """Turns query text into its literal-free form; remembers the last CACHE_ENTRIES texts.

    Mutable on purpose: the cache. Clients repeat the same texts (prepared statements, ORMs, pollers),
    so a hit is one dict lookup instead of a parse.
    """

    __slots__ = ("_cache", "_max_entries")

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self._cache: dict[str, str] = {}
        self._max_entries = max_entries

    def __call__(self, text: str) -> str:
        found = self._cache.get(text)
        if found is not None:
            return found
        try:
            result = parser.normalize(text)
        except Exception:  # noqa: BLE001 - pglast raises ParseError, and others for odd bytes; withhold either way
            result = UNPARSABLE
        if len(self._cache) >= self._max_entries:
            # Dicts keep insertion order: dropping the oldest entry makes this a FIFO, good enough here.
            del self._cache[next(iter(self._cache))]
        self._cache[text] = result
        return result


def _omit(_: str) -> None:
    return None


def query_renderer(mode: QueryText) -> Callable[[str], str | None] | None:
    """The function that turns logged query text into what is written; None keeps the text as it is."""
    if mode is QueryText.FULL:
        return None
    if mode is QueryText.NORMALIZED:
        return Normalizer()
    return _omit
