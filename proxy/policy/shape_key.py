# cython: language_level=3, boundscheck=False, wraparound=False, annotation_typing=False
"""The literal-free key of a SQL text, so a query repeated with new literals finds its classification.

Plain quoted strings become '' and numbers 0. Only texts where that replacement cannot change the token structure
qualify: no dollar quotes or parameters, backslashes, comments, quoted identifiers or prefixed strings (E'', U&'',
B''), all of which would let a quote or digit mean something else; for any other text the key is None and
classify() asks libpg_query's normalize instead.

`shape_key` is the per-query path of every gated Query and Parse: Cython compiles this file (C types in
shape_key.pxd) into one pass over the bytes of an ASCII text. Non-ASCII text takes `shape_key_regex`, the
definition the compiled pass must equal (tests/proxy/policy/test_shape_key.py checks the two agree).
"""

from __future__ import annotations

import re

_STRING = re.compile(r"'(?:[^']|'')*'")
# A token that starts with a digit is a numeric literal (identifiers cannot, unless quoted, which is excluded).
_NUMBER = re.compile(r"(?<![\w.])\d[\d.]*(?:[eE][+-]?\d+)?")
_REFUSED = ("$", "\\", '"', "--", "/*")


def shape_key_regex(sql: str) -> str | None:
    """The definition: strings found left to right, numbers replaced in the text between them."""
    if any(s in sql for s in _REFUSED):
        return None
    if "'" not in sql:
        return _NUMBER.sub("0", sql)
    parts: list[str] = []
    last = 0
    for m in _STRING.finditer(sql):
        start = m.start()
        if start and (sql[start - 1].isalnum() or sql[start - 1] in "_&"):
            return None  # E'..', U&'..', B'..', X'..' or a quote glued to a word: not a plain string
        parts.append(sql[last:start])
        parts.append("''")
        last = m.end()
    parts.append(sql[last:])
    outside = "".join(parts)
    if outside.count("'") != len(parts) - 1:  # two per string found
        return None  # an unterminated quote
    return _NUMBER.sub("0", outside)


def _is_word(c: int) -> bool:
    """ASCII \\w: what may not come right before a number (nor a string's opening quote, with '&')."""
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95


def _is_digit(c: int) -> bool:
    return 48 <= c <= 57


def shape_key(sql: str) -> str | None:
    """`shape_key_regex(sql)`, in one pass when the text is ASCII."""
    if "$" in sql or "\\" in sql or '"' in sql or "--" in sql or "/*" in sql:
        return None  # anywhere, strings included: the same refusals as the definition
    if not sql.isascii():
        return shape_key_regex(sql)
    data = sql.encode("ascii")
    n = len(data)
    out = bytearray()
    run = 0  # where the text not yet copied to `out` begins
    i = 0
    prev = 0  # the last byte of the text between strings (a string counts as its closing quote): the lookbehind
    while i < n:
        c = data[i]
        if c == 39:  # ' opens a string: '' pairs inside, up to the closing quote
            if i > 0 and (_is_word(data[i - 1]) or data[i - 1] == 38):
                return None  # E'..', U&'..', B'..', X'..' or a quote glued to a word: not a plain string
            j = i + 1
            while True:
                if j >= n:
                    return None  # an unterminated quote
                if data[j] == 39:
                    if j + 1 < n and data[j + 1] == 39:
                        j += 2
                        continue
                    break
                j += 1
            out += data[run:i]
            out += b"''"
            prev = 39
            i = run = j + 1
        elif 48 <= c <= 57 and not (_is_word(prev) or prev == 46):
            j = i + 1
            while j < n and (_is_digit(data[j]) or data[j] == 46):
                j += 1
            if j < n and (data[j] == 69 or data[j] == 101):  # an exponent, if digits follow
                k = j + 1
                if k < n and (data[k] == 43 or data[k] == 45):
                    k += 1
                if k < n and _is_digit(data[k]):
                    while k < n and _is_digit(data[k]):
                        k += 1
                    j = k
            out += data[run:i]
            out += b"0"
            prev = data[j - 1]
            i = run = j
        else:
            prev = c
            i += 1
    if run == 0:
        return sql  # nothing to replace
    out += data[run:n]
    return out.decode("ascii")
