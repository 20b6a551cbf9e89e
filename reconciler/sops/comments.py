"""Decrypt the `#ENC[...]` comment lines that ruamel.yaml keeps in a round-trip tree's `.ca`.

sops encrypts a YAML comment with the path of the mapping that holds it as AAD. ruamel attaches a
comment to the nearest preceding node instead, so each comment line is tried with the paths of the
enclosing mappings, innermost first (comments are outside the MAC; a miss just leaves it as is).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml.tokens import CommentToken

from reconciler.sops.tree import decrypt_comment

_ENCRYPTED_LINE = re.compile(r"^([ \t]*)#[ \t]*(ENC\[AES256_GCM,[^\]]*\])[ \t]*$", re.MULTILINE)


def decrypt_yaml_comments(document: Any, data_key: bytes) -> None:
    """Rewrite, in place, every encrypted comment line in a ruamel round-trip document."""
    _visit(document, [()], data_key)


def _visit(node: Any, candidates: list[tuple[str, ...]], data_key: bytes) -> None:
    comments = getattr(node, "ca", None)
    if comments is not None:
        for token in _tokens([comments.comment, list(comments.items.values()), comments.end]):
            token.value = _ENCRYPTED_LINE.sub(
                lambda m: m.group(1) + "#" + decrypt_comment(m.group(2), data_key, candidates).text,
                token.value,
            )
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, Mapping | list):
                _visit(value, [(*candidates[0], str(key)), *candidates], data_key)
    elif isinstance(node, list):
        for value in node:
            if isinstance(value, Mapping | list):
                _visit(value, candidates, data_key)


def _tokens(holder: Any) -> list[CommentToken]:
    if isinstance(holder, CommentToken):
        return [holder]
    if isinstance(holder, list | tuple):
        return [token for item in holder for token in _tokens(item)]
    return []
