"""Watching a local source: is a path a git repository, which paths to watch under it, which changes count."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import git
import watchfiles


def watch_plan(local: Path) -> tuple[list[Path], Callable[[watchfiles.Change, str], bool]]:
    """What to watch under a local source, and which changes count.

    A git work tree is served from its commits, so only ref updates count (a commit rewrites refs/heads/…;
    objects, the index and editors' files do not). A plain directory counts every non-hidden file, as load reads.
    """
    if not is_git_repo(local):
        return [local], lambda _change, path: not any(p.startswith(".") for p in _parts_under([local], path))
    with git.Repo(local) as repo:
        dirs = {Path(repo.common_dir).resolve(), Path(repo.git_dir).resolve()}  # they differ in a linked worktree
    watched = sorted(d for d in dirs if not any(d.is_relative_to(o) and d != o for o in dirs))

    def is_ref_update(_change: watchfiles.Change, path: str) -> bool:
        parts = _parts_under(watched, path)
        if not parts or parts[-1].endswith(".lock"):  # git writes x.lock, then renames it to x
            return False
        return parts[-1] in ("HEAD", "packed-refs") or "refs" in parts

    return watched, is_ref_update


def _parts_under(dirs: list[Path], path: str) -> tuple[str, ...]:
    for d in dirs:
        with contextlib.suppress(ValueError):
            return Path(path).relative_to(d).parts
    return ()


def is_git_repo(path: Path) -> bool:
    """A work tree's top level (.git dir or file) or a bare repository; a sub-directory of one is a plain directory."""
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())
