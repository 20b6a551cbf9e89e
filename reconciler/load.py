"""Read a manifest directory into Documents: YAML 1.2 (JSON too), multi-document, placed by file and line.

Refuses duplicate keys, custom tags, files over the size limit and symlinks that leave the root.
Error messages never quote the source text: a broken line may hold a secret.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedBase
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from reconciler import yaml12, yaml_ruamel
from reconciler.errors import (
    ConfigError,
    ManifestErrors,
    ManifestSyntaxError,
    SourceRef,
    UnreadableManifests,
)
from reconciler.yaml_ruamel import MAX_DEPTH, MAX_VALUES_PER_DOCUMENT

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """One YAML document. `body` is plain dicts/lists/scalars in source order (YAML dates stay dates)."""

    file: str  # relative to the manifest root, with '/' separators
    index: int  # 1-based position in the file's document stream
    line: int  # 1-based line where the document's content starts
    kind: str  # "" when missing or not a string; validation reports it
    name: str  # metadata.name, "" when missing or not a string
    body: dict[str, Any]

    def source(self, path: str = "") -> SourceRef:
        """A SourceRef for a field of this document."""
        return SourceRef(file=self.file, document=self.index, path=path)


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestFile:
    """The bytes of one manifest file, as read (the revision digest hashes exactly these)."""

    path: str  # relative to the root, with '/' separators
    data: bytes


def directory_revision(files: Iterable[ManifestFile]) -> str:
    """`dir:` + 12 hex digits of a SHA-256 over each file's path and bytes, in path order."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.path):
        # Length-prefix both parts so moving bytes between a name and a body changes the digest.
        name = file.path.encode()
        digest.update(len(name).to_bytes(8, "big") + name + len(file.data).to_bytes(8, "big") + file.data)
    return "dir:" + digest.hexdigest()[:12]


def with_body(document: Document, body: dict[str, Any]) -> Document:
    """The same document with a new body (e.g. decrypted); kind and name are read again."""
    return replace(document, body=body, kind=_kind_of(body), name=_name_of(body))


def load_directory(root: Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                   parser: Parser | None = None) -> list[Document]:
    """Every document under `root`. Raises UnreadableManifests listing every file problem at once.

    Pass the same `parser` each time to reuse what unchanged files parsed to (the reconcile loop does).
    """
    files, problems = read_directory(root, max_file_bytes=max_file_bytes)
    return (parser or Parser()).parse_files(files, problems)


def load_file(path: Path, root: Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> list[Document]:
    """The documents of one file inside `root`. Raises UnreadableManifests."""
    real_root = root.resolve()
    path = path.parent.resolve() / path.name  # resolve the directories, keep a final symlink to check
    file, problem = _read_file(path, _relative(path, real_root), real_root, max_file_bytes)
    return parse_files([file] if file else [], [problem] if problem else [])


def read_directory(
    root: Path, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> tuple[list[ManifestFile], list[ConfigError]]:
    """Read every manifest file under `root`, sorted by path; also return the files that were refused.

    Names starting with '.' are skipped (`.git/`, `.sops.yaml` is sops configuration, not a manifest).
    Symlinked directories are not followed; symlinked files are read only if they stay inside `root`.
    """
    real_root = root.resolve()
    if not real_root.is_dir():
        raise UnreadableManifests([ManifestSyntaxError("not a directory", source=SourceRef(file=str(root)))])
    files: list[ManifestFile] = []
    problems: list[ConfigError] = []
    for dirpath, dirnames, filenames in os.walk(real_root):
        here = Path(dirpath)
        prefix = "" if here == real_root else _relative(here, real_root) + "/"
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if (here / d).is_symlink() and not _inside(here / d, real_root):
                problems.append(_refused(_relative(here / d, real_root), "symlink points outside the manifest root"))
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(MANIFEST_SUFFIXES):
                continue
            read = _read_regular(os.path.join(dirpath, name), prefix + name, max_file_bytes)
            file, problem = read or _read_file(here / name, prefix + name, real_root, max_file_bytes, walked=True)
            files.extend([file] if file else [])
            problems.extend([problem] if problem else [])
    files.sort(key=lambda f: f.path)
    return files, problems


def parse_files(files: Iterable[ManifestFile], problems: Iterable[ConfigError] = ()) -> list[Document]:
    """Parse every file; raise UnreadableManifests with `problems` plus every parse problem, if any."""
    return Parser().parse_files(files, problems)


def parse_file(file: ManifestFile) -> list[Document]:
    """The documents in one file (empty documents are skipped but still counted). Raises ManifestErrors."""
    return _parse_file(file)


class Parser:
    """The load stage with a memory: a file whose path and bytes it parsed before is not parsed again.

    Mutable on purpose (the cache); one lives as long as the reconcile loop that owns it. A commit
    usually changes a few files, and only those are parsed again. Cached bodies are shared between
    revisions: stages build new values and never mutate bodies (the decrypt, validate and build caches
    rely on seeing the very same body objects for unchanged files).
    """

    def __init__(self, *, max_files: int = 50_000) -> None:
        self._parsed: dict[tuple[str, bytes], tuple[Document, ...]] = {}
        self._max_files = max_files

    def parse_files(self, files: Iterable[ManifestFile], problems: Iterable[ConfigError] = ()) -> list[Document]:
        """Parse every file; raise UnreadableManifests with `problems` plus every parse problem, if any."""
        errors = list(problems)
        documents: list[Document] = []
        for file in files:
            try:
                documents.extend(self.parse_file(file))
            except ManifestErrors as exc:
                errors.extend(exc.errors)
        if errors:
            raise UnreadableManifests(errors)
        return documents

    def parse_file(self, file: ManifestFile) -> list[Document]:
        """The documents in one file, reused when its path and content digest were parsed before."""
        key = (file.path, hashlib.sha256(file.data).digest())
        cached = self._parsed.get(key)
        if cached is not None:
            return list(cached)
        documents = _parse_file(file)
        if len(self._parsed) >= self._max_files:
            self._parsed.pop(next(iter(self._parsed)))  # dicts keep insertion order: the oldest goes
        self._parsed[key] = tuple(documents)
        return documents


def _parse_file(file: ManifestFile) -> list[Document]:
    """The documents in one file (empty documents are skipped but still counted).

    libyaml reads the common shape (`yaml12`); whatever it does not type exactly as ruamel's YAML 1.2
    loader would, and every file with an error, is parsed by ruamel, whose messages users know.
    """
    try:
        text = file.data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableManifests([_refused(file.path, f"not UTF-8 (byte {exc.start})")]) from None
    try:
        return _parse_with_libyaml(file.path, text)
    except Exception:  # noqa: BLE001 - Unsupported, or anything odd (a 5,000-digit int): ruamel decides
        return _parse_with_ruamel(file.path, text)


def _parse_with_libyaml(path: str, text: str) -> list[Document]:
    return [
        Document(file=path, index=index, line=line, kind=_kind_of(body), name=_name_of(body), body=body)
        for index, line, body in yaml12.documents(text, max_values=MAX_VALUES_PER_DOCUMENT, max_depth=MAX_DEPTH)
        if body is not None
    ]


def _parse_with_ruamel(path: str, text: str) -> list[Document]:
    yaml = yaml_ruamel.new_loader()
    documents: list[Document] = []
    errors: list[ConfigError] = []
    index = 0
    try:
        for index, raw in enumerate(yaml.load_all(text), start=1):
            if raw is None:
                continue
            try:
                documents.append(_document(path, index, raw))
            except ManifestSyntaxError as exc:
                errors.append(exc)
    except YAMLError as exc:
        errors.append(_syntax_error(path, index + 1, exc))
    except RecursionError:
        errors.append(ManifestSyntaxError("nested too deeply", source=SourceRef(file=path, document=index + 1)))
    except (ValueError, TypeError, OverflowError) as exc:
        # ruamel's constructors raise these for `2024-13-45` or `!!int abc`; their text quotes the value.
        message = f"a value cannot be read ({type(exc).__name__}): check dates and explicit !!tags"
        errors.append(ManifestSyntaxError(message, source=SourceRef(file=path, document=index + 1)))
    if errors:
        raise UnreadableManifests(errors)
    return documents


def _document(path: str, index: int, raw: Any) -> Document:
    source = SourceRef(file=path, document=index)
    if not isinstance(raw, Mapping):
        raise ManifestSyntaxError("a document must be a mapping (kind, metadata, spec)", source=source)
    line = raw.lc.line + 1 if isinstance(raw, CommentedBase) else 1
    body = yaml_ruamel.to_plain(raw, [], source, [0])
    return Document(file=path, index=index, line=line, kind=_kind_of(body), name=_name_of(body), body=body)


def _kind_of(body: Mapping[str, Any]) -> str:
    kind = body.get("kind")
    return kind if isinstance(kind, str) else ""


def _name_of(body: Mapping[str, Any]) -> str:
    metadata = body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


_DUPLICATE_KEY = re.compile(r'found duplicate key "(?P<key>.*?)" with value')


def _syntax_error(path: str, index: int, exc: YAMLError) -> ManifestSyntaxError:
    # ruamel's own text quotes the offending line (and, for duplicates, both values): a secret
    # could be on that line, so only the problem, its position and the key are kept.
    source = SourceRef(file=path, document=index)
    if not isinstance(exc, MarkedYAMLError):
        return ManifestSyntaxError("not valid YAML", source=source)
    mark = exc.problem_mark or exc.context_mark
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if isinstance(exc, DuplicateKeyError):
        found = _DUPLICATE_KEY.search(exc.problem or "")
        first = exc.context_mark
        key = f" {found.group('key')!r}" if found else ""
        origin = f" (the mapping starts at line {first.line + 1})" if first is not None else ""
        return ManifestSyntaxError(f"{at}duplicate key{key}{origin}", source=source)
    problem = (exc.problem or "syntax error").strip()
    context = f" {exc.context.strip()}" if exc.context else ""
    return ManifestSyntaxError(f"{at}{problem}{context}", source=source)


def _read_regular(path: str, rel: str, max_file_bytes: int) -> tuple[ManifestFile | None, ConfigError | None] | None:
    """A walked regular file in three system calls; None for anything else (a symlink, a FIFO, an
    error), which `_read_file` then examines and words. O_NOFOLLOW and O_NONBLOCK: a file swapped
    for a symlink or a FIFO meanwhile is neither followed nor waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = fh.read(max_file_bytes + 1)
    if len(data) > max_file_bytes:
        return None, _refused(rel, f"larger than the {max_file_bytes}-byte limit")
    return ManifestFile(path=rel, data=data), None


def _read_file(
    path: Path, rel: str, real_root: Path, max_file_bytes: int, *, walked: bool = False
) -> tuple[ManifestFile | None, ConfigError | None]:
    """`walked`: found by walking `real_root` without following directory symlinks, so only a
    symlink can lead outside (resolving costs a stat per path component, for every file)."""
    if path.is_symlink():
        if not path.exists():
            return None, _refused(rel, "broken symlink")
        if not _inside(path, real_root):
            return None, _refused(rel, "symlink points outside the manifest root")
    elif not walked and not _inside(path, real_root):
        return None, _refused(rel, "file is outside the manifest root")
    if not path.is_file():  # a FIFO or device would block or never end
        return None, _refused(rel, "not a regular file")
    try:
        with path.open("rb") as fh:
            data = fh.read(max_file_bytes + 1)
    except OSError as exc:
        return None, _refused(rel, f"cannot read: {exc.strerror or type(exc).__name__}")
    if len(data) > max_file_bytes:
        return None, _refused(rel, f"larger than the {max_file_bytes}-byte limit")
    return ManifestFile(path=rel, data=data), None


def _inside(path: Path, real_root: Path) -> bool:
    return path.resolve().is_relative_to(real_root)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _refused(rel: str, message: str) -> ManifestSyntaxError:
    return ManifestSyntaxError(message, source=SourceRef(file=rel))
