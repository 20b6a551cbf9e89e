"""`pgwarden diff` opens with the Access section: examples-repo as a pull request that gives bob a group."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.reconciler.test_diff_cli import ROOT, commit_all, git, pgwarden

BOB_LINE = "bob · my-db · connects as read_only → full_access (rule engineering-or-admins (configName full-access))"


def test_a_group_for_bob_reads_as_his_new_role_before_the_object_changes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    shutil.copytree(ROOT / "examples-repo", repo / "m")
    commit_all(repo, "examples")
    bob = repo / "m" / "users" / "bob.yaml"
    bob.write_text(bob.read_text().replace("groups: []", "groups: [engineering]"))

    text = pgwarden("diff", "--against", "HEAD", "m", cwd=repo)
    assert text.returncode == 1, text.stderr
    lines = text.stdout.splitlines()
    assert lines[2:5] == ["Access", f"  {BOB_LINE}", ""]
    assert lines.index("~ User bob (changed)") > lines.index("Access")

    markdown = pgwarden("diff", "--against", "HEAD", "-o", "markdown", "m", cwd=repo)
    assert markdown.returncode == 1, markdown.stderr
    access = markdown.stdout.index(f"### Access\n\n- {BOB_LINE}\n")
    assert access < markdown.stdout.index("#### User")


def test_a_password_rotation_changes_no_access(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    shutil.copytree(ROOT / "examples-repo", repo / "m")
    commit_all(repo, "examples")
    secret = repo / "m" / "secrets" / "read-only-password.yaml"
    secret.write_text(secret.read_text().replace("ENC[AES256_GCM,data:", "ENC[AES256_GCM,data:AA", 1))
    text = pgwarden("diff", "--against", "HEAD", "m", cwd=repo)
    assert text.returncode == 1, text.stderr
    assert "Access" not in text.stdout and "(changed, value hidden)" in text.stdout
