"""Decrypt sops documents and files in memory: open the data key, decrypt every leaf, verify the MAC.

The MAC is always verified (there is no `--ignore-mac`), and nothing is returned unless it matches.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.sops.comments import decrypt_yaml_comments
from reconciler.sops.datakey import open_data_key
from reconciler.sops.errors import NotASopsFile, SopsError, SopsFormatError
from reconciler.sops.formats import INPUT_TYPES, detect_format, parse_documents
from reconciler.sops.keys import KeyRing
from reconciler.sops.mac import MacHasher, verify_mac
from reconciler.sops.metadata import parse_metadata
from reconciler.sops.tree import Place, decrypt_tree, strip_comments

MAX_FILE_BYTES = 5 * 1024 * 1024  # as Flux's kustomize-controller decryptor
_NOT_SOPS_HINT = "encrypt it first: pgwarden secret create, or sops encrypt"


def is_sops_document(tree: object) -> bool:
    """True when `tree` is a mapping with a top-level `sops` metadata mapping."""
    return isinstance(tree, Mapping) and isinstance(tree.get("sops"), Mapping)


def decrypt_document(tree: Mapping[str, Any], keys: KeyRing, *, file: str, format: str = "yaml") -> dict[str, Any]:
    """Decrypt one parsed document (plain dicts or ruamel trees); returns it without `sops`.

    Load YAML with ruamel.yaml (YAML 1.2, `rt` or `safe`): a YAML 1.1 loader such as PyYAML reads
    `yes`/`on` as bools, so clear values would hash differently and the MAC would not match.
    A multi-document YAML file has one MAC over all its documents: use `decrypt_documents`.
    """
    return decrypt_documents([tree], keys, file=file, format=format)[0]


@contextmanager
def _only_sops_errors(file: str) -> Iterator[None]:
    """Any input raises SopsError or nothing (h11's parser invariant; Flux recovers from panics too).

    A library's own message may quote the input, so only the exception's type is reported.
    """
    try:
        yield
    except SopsError:
        raise
    except RecursionError:
        raise SopsFormatError("the document nests too deeply", file=file) from None
    except Exception as exc:
        raise SopsFormatError(f"the file could not be read as sops ({type(exc).__name__})", file=file) from None


def decrypt_documents(
    documents: Sequence[Mapping[str, Any]],
    keys: KeyRing,
    *,
    file: str,
    format: str = "yaml",
    keep_comments: bool = False,
) -> list[Any]:
    """Decrypt all documents of one file together (one data key, one MAC over all of them).

    With `keep_comments`, the documents are decrypted in place (ruamel trees keep their comments,
    now decrypted; dotenv/INI trees keep CommentKey entries); otherwise new plain trees are built.
    """
    with _only_sops_errors(file):
        return _decrypt_documents(documents, keys, file=file, format=format, keep_comments=keep_comments)


def _decrypt_documents(
    documents: Sequence[Mapping[str, Any]], keys: KeyRing, *, file: str, format: str, keep_comments: bool
) -> list[Any]:
    if format not in INPUT_TYPES:
        raise SopsFormatError(f"unknown format {format!r} (one of {', '.join(INPUT_TYPES)})", file=file)
    if not documents or not is_sops_document(documents[0]):
        raise NotASopsFile("no sops metadata: the file is not encrypted with sops", file=file, hint=_NOT_SOPS_HINT)
    metadata = parse_metadata(documents[0]["sops"], file=file)
    data_key = open_data_key(metadata, keys, file=file)
    hasher = MacHasher(mac_only_encrypted=metadata.mac_only_encrypted)
    results = []
    for index, document in enumerate(documents):
        if not isinstance(document, Mapping):
            raise SopsFormatError("the document is not a mapping", file=file, document=index)
        place = Place(file=file, document=index if len(documents) > 1 else None)
        if keep_comments and isinstance(document, dict):
            document.pop("sops", None)
            body: Mapping[str, Any] = document
        else:
            body = {k: v for k, v in document.items() if k != "sops"}
        results.append(
            decrypt_tree(
                body,
                data_key=data_key,
                rule=metadata.rule,
                hasher=hasher,
                mac_only_encrypted=metadata.mac_only_encrypted,
                place=place,
                in_place=keep_comments,
            )
        )
    verify_mac(metadata.mac, hasher.hexdigest(), data_key, metadata.lastmodified, file=file)
    if not keep_comments:
        return [strip_comments(result) for result in results]
    for result in results:
        decrypt_yaml_comments(result, data_key)
    return results


def decrypt_bytes(data: bytes | str, keys: KeyRing, *, file: str, input_type: str, keep_comments: bool = False) -> Any:
    """Decrypt a whole file's content: a mapping, or a list of them for multi-document YAML."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise SopsFormatError("the file is not UTF-8 text", file=file) from None
    with _only_sops_errors(file):
        documents = parse_documents(text, input_type, file=file)
    if not documents or not is_sops_document(documents[0]):
        raise NotASopsFile("no sops metadata: the file is not encrypted with sops", file=file, hint=_NOT_SOPS_HINT)
    results = decrypt_documents(documents, keys, file=file, format=input_type, keep_comments=keep_comments)
    return results if len(results) > 1 else results[0]


def decrypt_file(path: Path, keys: KeyRing, *, input_type: str | None = None, keep_comments: bool = False) -> Any:
    """Decrypt a file of any sops format (by extension unless `input_type` says otherwise)."""
    path = Path(path)
    return decrypt_bytes(
        read_limited(path),
        keys,
        file=str(path),
        input_type=input_type or detect_format(path.name),
        keep_comments=keep_comments,
    )


def read_limited(path: Path) -> bytes:
    """Read a regular file of at most MAX_FILE_BYTES."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise SopsError("not a regular file", file=str(path))
        if info.st_size > MAX_FILE_BYTES:
            raise SopsError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB", file=str(path))
        return path.read_bytes()
    except OSError as exc:
        raise SopsError(f"cannot read the file ({exc.strerror})", file=str(path)) from None
