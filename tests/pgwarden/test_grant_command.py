"""`pgwarden grant` in a subprocess, against a real Git checkout of examples-repo."""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.snapshot import parse_instant
from reconciler import load
from reconciler.access import keyless_snapshot
from reconciler.review import review_documents

ROOT = Path(__file__).resolve().parents[2]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=30).stdout


def pgwarden(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "examples-repo", root)
    (root / "users" / "alice.yaml").write_text(
        "# Alice runs the platform team.\nkind: User\nmetadata:\n  name: alice\nspec:\n  type: HUMAN\n"
        "  email: alice@example.com   # her work address\n  groups:\n    - admins  # permanent\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def grant_branches(repo: Path) -> list[str]:
    return [b.strip() for b in git(repo, "branch", "--list", "grant/*", "--format=%(refname:short)").splitlines()]


def test_grant_commits_the_membership_on_a_new_branch_and_leaves_the_checkout_alone(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    before = datetime.datetime.now(datetime.UTC)
    result = pgwarden("grant", "--user", "bob", "--group", "admins", "--for", "2h", "--reason", "incident 4711",
                      cwd=repo)
    assert result.returncode == 0, result.stderr
    [branch] = grant_branches(repo)
    assert branch.startswith("grant/bob-admins-")
    assert f"new branch {branch}" in result.stdout and "not pushed" in result.stdout
    assert f"git push origin {branch}" in result.stdout and "pull request" in result.stdout
    # The working branch, its commit, index and files are untouched.
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert git(repo, "rev-parse", "HEAD").strip() == head
    assert git(repo, "status", "--porcelain").strip() == ""
    assert "groups: []" in (repo / "users" / "bob.yaml").read_text()
    # One commit on top of main, changing one line of one file, with the reason in its message.
    assert git(repo, "rev-parse", f"{branch}~1").strip() == head
    assert git(repo, "diff", "--name-only", "main", branch).split() == ["users/bob.yaml"]
    assert "Reason: incident 4711" in git(repo, "log", "-1", "--format=%B", branch)
    assert git(repo, "remote").strip() == ""  # nothing to push to, and nothing was pushed
    text = git(repo, "show", f"{branch}:users/bob.yaml")
    line = next(line for line in text.splitlines() if "groups:" in line)
    assert line.startswith("  groups: [{name: admins, validUntil: 20") and line.endswith("Z}]")
    assert text.startswith("# A junior engineer")  # the comment stays
    # The branch's repository is valid, and bob is in admins until two hours from now.
    tree = repo.parent / "branch"
    git(repo, "worktree", "add", "-q", str(tree), branch)
    documents = review_documents(load.load_directory(tree))  # what `pgwarden validate` checks
    bob = keyless_snapshot(documents).users["bob"]
    until = bob.group_windows["admins"].valid_until
    assert until is not None and bob.group_windows["admins"].valid_from is None
    assert before + datetime.timedelta(hours=2) - datetime.timedelta(seconds=1) <= until
    assert until <= datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=2)
    assert parse_instant(line.split("validUntil: ")[1].rstrip("}]")) == until


def test_grant_keeps_comments_and_block_style_of_the_users_file(repo: Path) -> None:
    result = pgwarden("grant", "--user", "alice", "--group", "engineering", "--for", "1h30m", "--reason", "pairing",
                      cwd=repo)
    assert result.returncode == 0, result.stderr
    [branch] = grant_branches(repo)
    diff = git(repo, "diff", "-U0", "main", branch, "--", "users/alice.yaml")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed[0] == "+    - name: engineering" and changed[1].startswith("+      validUntil: 20")
    assert len(changed) == 2  # comments, the permanent entry and everything else stay as written


@pytest.mark.parametrize(("args", "expected"), [
    (["--user", "bobb", "--group", "admins", "--for", "2h"], "no User named 'bobb' under . (did you mean 'bob'?)"),
    (["--user", "bob", "--group", "oncall", "--for", "2h"], "no Group named 'oncall'"),
    (["--user", "bob", "--group", "admins", "--for", "2 hours"], "--for '2 hours' is not a duration"),
    (["--user", "bob", "--group", "admins", "--for", "0h"], "--for '0h' is zero"),
    (["--user", "bob", "--group", "admins", "--for", "31d"], "longer than 30 days"),
    (["--user", "alice", "--group", "admins", "--for", "2h"], "already in group 'admins' without a time limit"),
])
def test_grant_refuses_with_a_clear_error_and_changes_nothing(repo: Path, args: list[str], expected: str) -> None:
    result = pgwarden("grant", *args, "--reason", "x", cwd=repo)
    assert result.returncode == 2
    assert expected in result.stderr
    assert grant_branches(repo) == []


def test_grant_refuses_a_dirty_tree(repo: Path) -> None:
    (repo / "users" / "bob.yaml").write_text((repo / "users" / "bob.yaml").read_text() + "# edited\n")
    result = pgwarden("grant", "--user", "bob", "--group", "admins", "--for", "2h", "--reason", "x", cwd=repo)
    assert result.returncode == 2
    assert "uncommitted changes" in result.stderr and "HINT:" in result.stderr
    assert grant_branches(repo) == []


def test_grant_help_has_an_example(tmp_path: Path) -> None:
    result = pgwarden("grant", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert '$ cd manifests/ && pgwarden grant --user bob --group oncall --for 2h --reason "incident 4711"' \
        in result.stdout
