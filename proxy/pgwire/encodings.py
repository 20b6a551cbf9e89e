"""PostgreSQL encoding names mapped to Python codecs, for decoding query text in logs and policy.

Query text is bytes in the session's client_encoding; decoding must never end a session, so
callers use `decode_text`, which replaces what it cannot read.
"""

from __future__ import annotations

import codecs

_PG_TO_PYTHON = {
    "UTF8": "utf-8", "UNICODE": "utf-8", "SQL_ASCII": "latin-1",
    "LATIN1": "latin-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3", "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13", "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15", "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6", "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866", "WIN874": "cp874", "WIN1250": "cp1250", "WIN1251": "cp1251", "WIN1252": "cp1252",
    "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255", "WIN1256": "cp1256", "WIN1257": "cp1257",
    "WIN1258": "cp1258", "KOI8R": "koi8-r", "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp", "EUC_JIS_2004": "euc_jis_2004", "EUC_KR": "euc_kr", "EUC_CN": "gb2312",
    "SJIS": "shift_jis", "SHIFT_JIS_2004": "shift_jis_2004", "BIG5": "big5", "GBK": "gbk",
    "GB18030": "gb18030", "UHC": "cp949", "JOHAB": "johab",
}


def python_codec(pg_name: str) -> str:
    """The Python codec for a PostgreSQL encoding name (any spelling); UTF-8 when unknown."""
    key = pg_name.upper().replace("-", "_").strip()
    if key in _PG_TO_PYTHON:
        return _PG_TO_PYTHON[key]
    compact = key.replace("_", "")
    for name, codec in _PG_TO_PYTHON.items():
        if name.replace("_", "") == compact:
            return codec
    try:
        return codecs.lookup(pg_name).name
    except LookupError:
        return "utf-8"


def decode_text(raw: bytes, codec: str) -> str:
    """Decode a NUL-terminated or plain byte string; never raises."""
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    return raw.decode(codec, "replace")
