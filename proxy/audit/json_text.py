# cython: language_level=3, boundscheck=False, wraparound=False, annotation_typing=False
"""A JSON string for the access log, as `json.encoder.encode_basestring_ascii` writes it, cheaper for plain text.

Every logged query's text is encoded at least once (twice with per-query checks: the request and, for a denial,
its reason). Most texts are printable ASCII without quotes or backslashes, and those need no escape: Cython
compiles this file (C types in json_text.pxd) into one scan over the characters and a copy, instead of the json
module's two passes; any other text goes to the json module's C escaper, so the output is always the same.
"""

from __future__ import annotations

import json

_escape = json.encoder.encode_basestring_ascii


def json_string(text: str) -> str:
    """`json.encoder.encode_basestring_ascii(text)`: "text" in double quotes, escaped to ASCII."""
    for ch in text:
        c = ord(ch)
        if c < 32 or c > 126 or c == 34 or c == 92:  # control, non-ASCII, '"', '\\': the json module escapes
            return _escape(text)
    return '"' + text + '"'
