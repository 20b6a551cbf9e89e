"""Read a manifest directory as it is at a git ref, from the object database: no checkout, no temp files.

`pgwarden diff --against REF` compares this ("before") with the working tree ("after").
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import git
from git.objects import Blob, Commit, Tree

from proxy.errors import PgwardenError
from reconciler import load
from reconciler.errors import ConfigError, ManifestSyntaxError, SourceRef
from reconciler.load import DEFAULT_MAX_FILE_BYTES, MANIFEST_SUFFIXES, Document, ManifestFile

DEFAULT_BASE = "origin/main"
_SYMLINK_MODE = 0o120000
_MAX_SYMLINK_HOPS = 8


class GitTreeError(PgwardenError):
    """A tree at a git ref could not be read: PATH is not in a repository, or REF does not resolve."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GitTree:
    """The manifest files under one path at one commit."""

    ref: str  # as the user named it, e.g. origin/main
    commit: str  # full hex sha
    is_present: bool  # False: the path does not exist at this commit (everything is new)
    files: list[ManifestFile]
    problems: list[ConfigError]

    @property
    def short(self) -> str:
        return self.commit[:12]


def find_repository(path: Path) -> git.Repo:
    """The git repository whose working tree contains `path`."""
    try:
        return git.Repo(path if path.is_dir() else path.parent, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise GitTreeError(
            f"{path} is not inside a git repository",
            hint="run pgwarden diff in a clone (in CI: actions/checkout with fetch-depth: 0)",
        ) from exc


def default_base(repo: git.Repo) -> str:
    """`origin/main` when that ref exists, else `HEAD`."""
    try:
        repo.rev_parse(f"{DEFAULT_BASE}^{{commit}}")
    except (git.BadName, git.BadObject, ValueError, git.GitCommandError):
        return "HEAD"
    return DEFAULT_BASE


def resolve(repo: git.Repo, ref: str) -> Commit:
    """The commit `ref` names (a branch, remote branch, tag or sha); tags are peeled."""
    try:
        return repo.commit(ref)
    except (git.BadName, git.BadObject, ValueError, git.GitCommandError, IndexError) as exc:
        raise GitTreeError(
            f"git revision {ref!r} not found in {repo.working_tree_dir}",
            hint="fetch it first (git fetch origin main), or name a branch, tag or commit that exists",
        ) from exc


def read_tree(path: Path, ref: str | None = None, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> GitTree:
    """The manifest files under `path` at `ref` (default: see `default_base`), read from git objects."""
    with find_repository(path) as repo:
        ref = ref or default_base(repo)
        commit = resolve(repo, ref)
        rel = _relative_to_worktree(path, repo)
        try:
            node = commit.tree / rel if rel else commit.tree
        except KeyError:
            return GitTree(ref=ref, commit=commit.hexsha, is_present=False, files=[], problems=[])
        if isinstance(node, Tree):
            found = _manifest_blobs(node, rel)
            root = rel
        else:  # PATH names one file; its folder is the root, as load.load_file does
            found = [(node, node.name)] if isinstance(node, Blob) else []
            root = posixpath.dirname(rel)
        files: list[ManifestFile] = []
        problems: list[ConfigError] = []
        for blob, name in found:
            file, problem = _read_blob(commit.tree, blob, name, root, max_file_bytes)
            files.extend([file] if file else [])
            problems.extend([problem] if problem else [])
    files.sort(key=lambda f: f.path)
    return GitTree(ref=ref, commit=commit.hexsha, is_present=True, files=files, problems=problems)


def parse_tree(tree: GitTree) -> list[Document]:
    """Parse a tree's files with the same loader as a directory; raises ManifestErrors."""
    return load.parse_files(tree.files, tree.problems)


def _relative_to_worktree(path: Path, repo: git.Repo) -> str:
    root = Path(repo.working_tree_dir or ".").resolve()
    try:
        rel = path.resolve().relative_to(root)
    except ValueError as exc:
        raise GitTreeError(f"{path} is not inside the working tree of {root}") from exc
    return "" if str(rel) == "." else rel.as_posix()


def _manifest_blobs(tree: Tree, root: str) -> list[tuple[Blob, str]]:
    """(blob, path relative to `root`) for each manifest file; names starting with '.' skipped, as load does."""
    found: list[tuple[Blob, str]] = []
    for item in tree.traverse(prune=lambda i, _: isinstance(i, Tree | Blob) and i.name.startswith(".")):
        if not isinstance(item, Blob) or not item.name.lower().endswith(MANIFEST_SUFFIXES):
            continue  # submodules (commits) and other files
        path = PurePosixPath(str(item.path))
        found.append((item, (path.relative_to(root) if root else path).as_posix()))
    return found


def _read_blob(
    top: Tree, blob: Blob, name: str, root: str, max_file_bytes: int
) -> tuple[ManifestFile | None, ConfigError | None]:
    # A symlink's blob holds its target; follow it inside the manifest root only, as load does on disk.
    hops = 0
    while blob.mode == _SYMLINK_MODE:
        hops += 1
        link = blob.data_stream.read().decode("utf-8", "replace")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(blob.path), link))
        if hops > _MAX_SYMLINK_HOPS or not _inside(target, root):
            return None, _refused(name, "symlink points outside the manifest root")
        try:
            found = top / target
        except KeyError:
            return None, _refused(name, "broken symlink")
        if not isinstance(found, Blob):
            return None, _refused(name, "not a regular file")
        blob = found
    if blob.size > max_file_bytes:
        return None, _refused(name, f"larger than the {max_file_bytes}-byte limit")
    return ManifestFile(path=name, data=blob.data_stream.read()), None


def _inside(target: str, root: str) -> bool:
    if target.startswith("../") or target == ".." or posixpath.isabs(target):
        return False
    return not root or target == root or target.startswith(root + "/")


def _refused(name: str, message: str) -> ManifestSyntaxError:
    return ManifestSyntaxError(message, source=SourceRef(file=name))
