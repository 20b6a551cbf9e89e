"""dotenv and INI stores: parse to an ordered tree (comments kept under CommentKey), render back.

The `sops:` block is flattened in these formats (`pgp__list_0__map_enc`, getsops/sops
`stores/flatten.go`); parsing unflattens it into a `sops` mapping, like the YAML and JSON stores.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from reconciler.sops.cipher import Comment, format_go_float, format_rfc3339_nano
from reconciler.sops.errors import SopsFormatError
from reconciler.sops.tree import CommentKey

_TOKEN = re.compile(r"__(map|list)_")


def unflatten_metadata(flat: Mapping[str, str]) -> dict[str, Any]:
    """`{"pgp__list_0__map_fp": "…"}` → `{"pgp": [{"fp": "…"}]}`, newlines decoded."""
    root: dict[str, Any] = {}
    for flat_key, raw_value in flat.items():
        value = raw_value.replace("\\n", "\n")  # stores.DecodeNewLines
        parts = _TOKEN.split(flat_key)
        tokens: list[str | int] = [parts[0]]
        for kind, name in zip(parts[1::2], parts[2::2], strict=True):
            tokens.append(int(name) if kind == "list" and name.isdigit() else name)
        node: Any = root
        for token, next_token in zip(tokens, [*tokens[1:], None], strict=True):
            if next_token is None:
                _assign(node, token, value)
            else:
                node = _child(node, token, [] if isinstance(next_token, int) else {})
    return root


def _child(node: Any, token: str | int, empty: Any) -> Any:
    if isinstance(node, dict) and isinstance(token, str):
        return node.setdefault(token, empty)
    if isinstance(node, list) and isinstance(token, int):
        node.extend([None] * (token + 1 - len(node)))
        if node[token] is None:
            node[token] = empty
        return node[token]
    raise SopsFormatError("flattened sops metadata mixes list and map entries", key_path="sops")


def _assign(node: Any, token: str | int, value: str) -> None:
    _child(node, token, None)
    node[token] = value


def parse_dotenv(text: str, *, file: str | None) -> dict[Any, Any]:
    """sops `stores/dotenv`: `KEY=VALUE` lines (key = all before the first `=`), `#` comments."""
    tree: dict[Any, Any] = {}
    metadata: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        if line.startswith("#"):
            tree[CommentKey(number)] = Comment(line[1:])
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SopsFormatError(f"line {number} is not KEY=VALUE", file=file)
        target = metadata if key.startswith("sops_") else tree
        name = key.removeprefix("sops_") if target is metadata else key
        if name in target:
            raise SopsFormatError(f"line {number} repeats the key {key!r}", file=file)
        target[name] = value.replace("\\n", "\n")
    if metadata:
        tree["sops"] = unflatten_metadata(metadata)
    return tree


def parse_ini(text: str, *, file: str | None) -> dict[Any, Any]:
    """The subset of go-ini that sops writes: sections, `key = value`, `;`/`#` comments, `\"\"\"` blocks."""
    sections: dict[Any, Any] = {}
    section: dict[Any, Any] = sections.setdefault("DEFAULT", {})
    comments: list[str] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        if not line:
            continue
        if line[0] in "#;":
            comments.append(line[1:].lstrip("#; "))  # ini store stripCommentChar
            continue
        if line.startswith("["):
            name = line[1 : line.rfind("]")].strip() if "]" in line else ""
            if not name or (name in sections and name != "DEFAULT"):
                raise SopsFormatError(f"line {number} is not a new [section] header", file=file)
            section = sections.setdefault(name, {})
            _attach(section, comments, number)
            continue
        key, rest = _split_key(line, number, file)
        value, number = _read_value(rest, lines, number, file)
        if key in section:
            raise SopsFormatError(f"line {number} repeats the key {key!r}", file=file)
        _attach(section, comments, number)
        section[key] = value
    if not sections["DEFAULT"]:
        del sections["DEFAULT"]
    if "sops" in sections:
        flat = {k: v for k, v in sections.pop("sops").items() if isinstance(k, str)}
        sections["sops"] = unflatten_metadata(flat)
    return sections


def _attach(section: dict[Any, Any], comments: list[str], number: int) -> None:
    for offset, comment in enumerate(comments):
        section[CommentKey(number * 1000 + offset)] = Comment(comment)
    comments.clear()


def _split_key(line: str, number: int, file: str | None) -> tuple[str, str]:
    if line[0] in '"`' and line.find(line[0], 1) > 0:
        end = line.find(line[0], 1)
        key, rest = line[1:end], line[end + 1 :].lstrip()
        if rest[:1] in ("=", ":"):
            return key, rest[1:]
    else:
        match = re.search(r"[=:]", line)
        if match:
            return line[: match.start()].strip(), line[match.end() :]
    raise SopsFormatError(f"line {number} has no '=' between key and value", file=file)


def _read_value(rest: str, lines: list[str], number: int, file: str | None) -> tuple[str, int]:
    """go-ini `readValue` with default options; returns the value and the next line number."""
    value = rest.lstrip()
    for quote in ('"""', "`"):
        if value.startswith(quote):
            body = value[len(quote) :]
            while quote not in body:
                if number >= len(lines):
                    raise SopsFormatError(f"line {number}: unterminated {quote} value", file=file)
                body += "\n" + lines[number]
                number += 1
            return body[: body.rfind(quote)], number
    value = value.strip()
    inline_comment = re.search(r"[#;]", value)
    if inline_comment:
        value = value[: inline_comment.start()].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value, number


def render_dotenv(tree: Mapping[Any, Any]) -> str:
    """One `KEY=VALUE` line per key (newlines escaped), `#` comments where they were."""
    lines = []
    for key, value in tree.items():
        if isinstance(key, CommentKey):
            lines.append(f"#{_comment_text(value)}")
        elif isinstance(value, Mapping | list):
            raise SopsFormatError(f"cannot write the nested value at {key!r} as dotenv")
        else:
            lines.append(f"{key}={scalar_text(value)}".replace("\n", "\\n"))
    return "".join(line + "\n" for line in lines)


def render_ini(tree: Mapping[Any, Any]) -> str:
    """Sections from top-level mappings; values quoted the way go-ini quotes them."""
    out: list[str] = []
    for name, section in tree.items():
        if isinstance(name, CommentKey):
            out.append(f"; {_comment_text(section)}")
            continue
        if not isinstance(section, Mapping):
            raise SopsFormatError(f"cannot write {name!r} as INI: top-level values must be sections")
        items = list(section.items())
        while items and isinstance(items[0][0], CommentKey):  # a section comment goes above [name]
            out.append(f"; {_comment_text(items.pop(0)[1])}")
        out.append(f"[{name}]")
        for key, value in items:
            if isinstance(key, CommentKey):
                out.append(f"; {_comment_text(value)}")
            elif isinstance(value, Mapping | list):
                raise SopsFormatError(f"cannot write the nested value at {name}.{key} as INI")
            else:
                out.append(f"{key} = {_ini_quote(scalar_text(value))}")
        out.append("")
    return "\n".join(out) + ("\n" if out and out[-1] != "" else "")


def _ini_quote(value: str) -> str:
    if "\n" in value or "`" in value:
        return f'"""{value}"""'
    if re.search(r"[#;]", value):
        return f"`{value}`"
    if value != value.strip():
        return f'"{value}"'
    return value


def _comment_text(value: Any) -> str:
    return value.text if isinstance(value, Comment) else str(value)


def scalar_text(value: Any) -> str:
    """A leaf as text the way sops' flat stores print it (bools lowercase, Go float and time formats)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_go_float(value)
    if hasattr(value, "isoformat"):
        return format_rfc3339_nano(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
