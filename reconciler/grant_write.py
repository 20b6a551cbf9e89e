"""`pgwarden grant`: a time-limited Group membership written into the manifests repository as a commit on a
new branch, so break-glass access still goes through review and history.

Only the User's own YAML document is re-emitted (ruamel round-trip: comments, flow style and quotes kept);
every other document of the file stays byte for byte. The commit is built with Git plumbing in a private
index (hash-object, update-index, write-tree, commit-tree, branch): the working tree, the real index and the
current branch are never touched, and nothing is pushed.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.util import load_yaml_guess_indent

from proxy.snapshot import format_instant
from reconciler import load
from reconciler.errors import suggestion

MAX_GRANT = datetime.timedelta(days=30)  # break-glass is for hours or days; longer belongs in a plain review
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?")
_MARKER = re.compile(r"^---(\s|$)")


class GrantRefused(Exception):
    """The grant cannot be written; `hint` says the way out. Nothing was changed."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantCommit:
    branch: str
    commit: str
    file: str  # relative to the repository root
    valid_until: datetime.datetime
    current_branch: str


def parse_duration(text: str) -> datetime.timedelta:
    """`2h`, `30m`, `1d`, `1h30m`: positive, at most 30 days."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None or not any(match.groups()):
        raise GrantRefused(f"--for {text!r} is not a duration", hint="write it like 2h, 30m, 1d or 1h30m")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    length = datetime.timedelta(days=days, hours=hours, minutes=minutes)
    if length <= datetime.timedelta(0):
        raise GrantRefused(f"--for {text!r} is zero", hint="give the grant a length, e.g. 2h")
    if length > MAX_GRANT:
        raise GrantRefused(f"--for {text!r} is longer than 30 days",
                           hint="a standing membership belongs in spec.groups without a window, through review")
    return length


def write_grant(path: Path, *, user: str, group: str, length: datetime.timedelta, reason: str,
                now: datetime.datetime) -> GrantCommit:
    """Commit `{name: group, validUntil: now+length}` into `user`'s manifest on a new branch. Raises GrantRefused."""
    if not reason.strip():
        raise GrantRefused("--reason is empty", hint='say why, e.g. --reason "incident 4711"')
    top = Path(_git(path, "rev-parse", "--show-toplevel").strip())
    documents = load.load_directory(path) if path.is_dir() else load.load_file(path, path.parent)
    users = {d.name: d for d in documents if d.kind == "User"}
    groups = {d.name for d in documents if d.kind == "Group"}
    if user not in users:
        raise GrantRefused(f"no User named {user!r} under {path}{suggestion(user, users)}", hint=_known("Users", users))
    if group not in groups:
        raise GrantRefused(f"no Group named {group!r} under {path}{suggestion(group, groups)}",
                           hint=_known("Groups", groups))
    if _git(top, "status", "--porcelain", "--untracked-files=no").strip():
        raise GrantRefused(f"the working tree of {top} has uncommitted changes",
                           hint="commit or stash them first: the grant is committed on top of HEAD")
    file = (path if path.is_file() else path / users[user].file).resolve().relative_to(top.resolve()).as_posix()
    try:
        text = _git(top, "show", f"HEAD:{file}")
    except GrantRefused as exc:
        raise GrantRefused(f"{file} is not committed", hint="commit the User's manifest first") from exc
    until = (now + length).astimezone(datetime.UTC).replace(microsecond=0)
    new_text = with_membership(text, user=user, group=group, until=until, file=file)
    stamp = now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    branch = f"grant/{user}-{group}-{stamp}"
    if _git(top, "branch", "--list", branch).strip():
        raise GrantRefused(f"branch {branch} already exists", hint="run the command again in a second")
    message = (f"grant: {user} in group {group} until {format_instant(until)}\n\nReason: {reason.strip()}\n\n"
               "Written by `pgwarden grant`: the membership ends by itself at validUntil, enforced by the proxy.\n")
    commit = _commit_beside(top, file, new_text, message)
    _git(top, "branch", branch, commit)
    current = _git(top, "rev-parse", "--abbrev-ref", "HEAD").strip()
    return GrantCommit(branch=branch, commit=commit, file=file, valid_until=until, current_branch=current)


def with_membership(text: str, *, user: str, group: str, until: datetime.datetime, file: str) -> str:
    """The file's text with `{name: group, validUntil: until}` in the User `user`'s spec.groups."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _MARKER.match(line)]
    bounds = [0, *[s for s in starts if s > 0], len(lines)]
    segments = ["".join(lines[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    for i, segment in enumerate(segments):
        body = _load(segment)
        if isinstance(body, CommentedMap) and body.get("kind") == "User" \
                and (body.get("metadata") or {}).get("name") == user:
            segments[i] = _edited(segment, body, group, until)
            return "".join(segments)
    raise GrantRefused(f"cannot find the User document {user!r} in {file} to edit",
                       hint=f"add {{name: {group}, validUntil: {format_instant(until)}}} to its spec.groups by hand")


def _yaml() -> YAML:
    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    return yaml


def _load(segment: str) -> Any:
    try:
        return _yaml().load(segment)
    except Exception:  # noqa: BLE001 - not the document we edit (the validated load read it already)
        return None


def _edited(segment: str, body: CommentedMap, group: str, until: datetime.datetime) -> str:
    spec = body.get("spec")
    if spec is None:
        spec = body["spec"] = CommentedMap()
    entries = spec.get("groups")
    if entries is None:
        entries = spec["groups"] = CommentedSeq()
    if not entries:  # `groups: []` (or none): keep it on one line, `[{name: oncall, validUntil: …}]`
        entries.fa.set_flow_style()
    for entry in entries:
        if entry == group:
            raise GrantRefused(f"user is already in group {group!r} without a time limit",
                               hint="nothing to grant: the membership is permanent")
    # A YAML timestamp written as RFC 3339 (as the docs show it), not a quoted string.
    stamp = _yaml().load(f"v: {format_instant(until)}\n")["v"]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == group:
            entry["validUntil"] = stamp  # extend (or shorten) the window already there
            entry.pop("validFrom", None)
            break
    else:
        entry = CommentedMap([("name", group), ("validUntil", stamp)])
        if entries.fa.flow_style():
            entry.fa.set_flow_style()
        entries.append(entry)
    yaml = _yaml()
    _, sequence, offset = load_yaml_guess_indent(segment)
    yaml.indent(mapping=_mapping_indent(segment), sequence=sequence or 2, offset=offset or 0)
    first = segment.splitlines(keepends=True)[0] if _MARKER.match(segment) else ""
    out = io.StringIO()
    yaml.dump(body, out)
    return first + out.getvalue()


def _mapping_indent(segment: str) -> int:
    """How far the document indents a nested mapping (2 unless it says otherwise)."""
    lines = [line for line in segment.splitlines() if line.strip() and not line.lstrip().startswith(("#", "-"))]
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if indent:
            return indent
    return 2


def _commit_beside(top: Path, file: str, text: str, message: str) -> str:
    """A commit of HEAD with `file` replaced by `text`, built in a private index; returns its id."""
    blob = _git(top, "hash-object", "-w", "--stdin", stdin=text).strip()
    mode = _git(top, "ls-tree", "HEAD", "--", file).split()[0]
    with tempfile.TemporaryDirectory(prefix="pgwarden-grant-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(top, "read-tree", "HEAD", env=env)
        _git(top, "update-index", "--cacheinfo", f"{mode},{blob},{file}", env=env)
        tree = _git(top, "write-tree", env=env).strip()
    return _git(top, "commit-tree", tree, "-p", "HEAD", "-F", "-", stdin=message).strip()


def _git(cwd: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
    where = cwd if cwd.is_dir() else cwd.parent
    try:
        done = subprocess.run(["git", *args], cwd=where, input=stdin, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **(env or {})}, check=False)
    except FileNotFoundError as exc:
        raise GrantRefused("git is not installed", hint="install git: the grant is written as a commit") from exc
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["failed"])[0]
        hint = "run it inside a Git checkout of the manifests repository" if "not a git repository" in first else \
            ("set your name and email: git config user.name / user.email" if "identity" in first.lower() else None)
        raise GrantRefused(f"git {args[0]}: {first}", hint=hint)
    return done.stdout


def _known(what: str, names: Any) -> str:
    listed = sorted(names)
    return f"known {what}: {', '.join(listed[:10]) or 'none'}" + (" …" if len(listed) > 10 else "")
