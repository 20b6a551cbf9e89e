"""`pgwarden diff` in a subprocess against real git repositories: a PR's changes, secrets masked, no keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyrage
import pytest

from reconciler.sops import encrypt_secret_manifest

ROOT = Path(__file__).resolve().parents[2]
OLD_VALUE, NEW_VALUE = "old-pw-6a0c2f", "new-pw-d47e19"

SERVICE = """\
kind: Service
metadata: {name: my-db}
spec:
  dynamicConfig:
    configs:
      - name: read-only
        upstream: {url: postgres://my-pg:5432}
        postgres: {user: read_only, auth: {password: {fromSecret: db-password}}}
      - name: full-access
        upstream: {url: postgres://my-pg:5432}
        postgres: {user: full_access, auth: {password: {fromSecret: db-password}}}
    rules:
      - condition: {match: 'ctx.user.spec.groups.hasAny(["admins"])'}
        configName: full-access
      - condition: {matchAny: true}
        configName: read-only
"""
PEOPLE = "kind: Group\nmetadata: {name: admins}\n---\nkind: User\nmetadata: {name: alice}\nspec: {groups: [admins]}\n"


def isolated_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPS_", "GNUPG", "GIT_"))}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    return env


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=isolated_env(cwd), capture_output=True, text=True,
                            timeout=60, check=True)
    return result.stdout.strip()


def pgwarden(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the command with no sops keys anywhere it could look."""
    env = isolated_env(cwd)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pgwarden", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text), encoding="utf-8")


def commit_all(repo: Path, message: str) -> str:
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


@pytest.fixture(scope="module")
def recipient() -> str:
    # The identity is dropped right here: diff must never need it.
    return str(pyrage.x25519.Identity.generate().to_public())


@pytest.fixture(scope="module")
def old_secret(recipient: str) -> str:
    return encrypt_secret_manifest("db-password", OLD_VALUE, age_recipients=[recipient])


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, old_secret: str) -> Path:
    """The upstream repository: main holds the manifests under m/, tagged v1."""
    repo = tmp_path_factory.mktemp("origin")
    git("init", "-q", "-b", "main", cwd=repo)
    write(repo, {"m/db.yaml": SERVICE, "m/people.yaml": PEOPLE, "m/secrets/db-password.yaml": old_secret})
    commit_all(repo, "manifests")
    git("tag", "v1", cwd=repo)
    return repo


@pytest.fixture
def clone(tmp_path: Path, origin: Path) -> Path:
    """A CI checkout: a clone (so origin/main exists) on a pull-request branch."""
    git("clone", "-q", str(origin), "clone", cwd=tmp_path)
    repo = tmp_path / "clone"
    git("checkout", "-q", "-b", "pr", cwd=repo)
    return repo


def secret_material(*manifests: str) -> list[str]:
    """Every ciphertext in encrypted manifests: ENC[...] values and MACs, and the age-armored data keys."""
    found = [s for m in manifests for s in re.findall(r"ENC\[[^\]]+\]", m)]
    armored = re.compile(r"\s+[A-Za-z0-9+/=]{40,}")
    found += [line.strip() for m in manifests for line in m.splitlines() if armored.fullmatch(line)]
    return found


def assert_nothing_secret(output: str, *manifests: str) -> None:
    assert OLD_VALUE not in output and NEW_VALUE not in output
    assert "ENC[AES256_GCM,data:" not in output and "BEGIN AGE ENCRYPTED FILE" not in output
    materials = secret_material(*manifests)
    assert len(materials) >= 3 * len(manifests)  # value, MAC and at least one age block each
    for material in materials:
        assert material not in output


def test_pull_request_changing_a_service_and_rotating_a_secret(clone: Path, recipient: str, old_secret: str) -> None:
    new_secret = encrypt_secret_manifest("db-password", NEW_VALUE, age_recipients=[recipient])
    write(clone, {"m/db.yaml": SERVICE.replace("user: full_access", "user: admin"),
                  "m/secrets/db-password.yaml": new_secret})
    commit_all(clone, "rotate and grant")
    head, status = git("rev-parse", "HEAD", cwd=clone), git("status", "--porcelain", cwd=clone)

    markdown = pgwarden("diff", "--against", "origin/main", "--output", "markdown", "m", cwd=clone)
    assert markdown.returncode == 1, markdown.stderr
    assert markdown.stdout.startswith("### pgwarden diff: 2 changed (Secret: 1 changed; Service: 1 changed)\n")
    assert "spec.dynamicConfig.configs[1].postgres.user: {before: full_access, after: admin}" in markdown.stdout
    assert "data.value: (changed, value hidden)" in markdown.stdout
    assert "| ~ changed | `my-db` | 1 |" in markdown.stdout
    assert_nothing_secret(markdown.stdout + markdown.stderr, old_secret, new_secret)

    text = pgwarden("diff", "m", cwd=clone)  # the default base is origin/main, since it exists
    assert text.returncode == 1
    assert re.match(r"--- origin/main \([0-9a-f]{12}\) m\n\+\+\+ working tree m\n", text.stdout)
    assert "~ Secret db-password (changed)\n    ~ data.value: (changed, value hidden)\n" in text.stdout
    assert "~ Service my-db (changed)\n    ~ spec.dynamicConfig.configs[1].postgres.user: full_access -> admin\n" \
        in text.stdout
    assert_nothing_secret(text.stdout + text.stderr, old_secret, new_secret)
    # Read from git objects: nothing was checked out, stashed or written.
    assert git("rev-parse", "HEAD", cwd=clone) == head and git("status", "--porcelain", cwd=clone) == status


def test_no_change_exits_0(clone: Path) -> None:
    result = pgwarden("diff", "m", cwd=clone)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("+++ working tree m\nno changes\n")
    markdown = pgwarden("diff", "-o", "markdown", "m", cwd=clone)
    assert markdown.returncode == 0
    assert markdown.stdout.startswith("### pgwarden diff: no changes\n")


def test_invalid_working_tree_cannot_be_diffed(clone: Path) -> None:
    write(clone, {"m/db.yaml": SERVICE.replace("spec:\n", "spec:\n  colour: blue\n")})
    result = pgwarden("diff", "m", cwd=clone)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("pgwarden: error: cannot diff: the manifests under m are not valid (1 problem)\n")
    assert "DETAIL:  m/db.yaml, document 1, spec.colour: unknown field" in result.stderr


def test_plaintext_secret_needs_the_flag_and_stays_hidden(clone: Path, old_secret: str) -> None:
    write(clone, {"m/secrets/db-password.yaml": f"kind: Secret\nmetadata: {{name: db-password}}\n"
                                                f"data: {{value: {NEW_VALUE}}}\n"})
    refused = pgwarden("diff", "m", cwd=clone)
    assert refused.returncode == 2
    assert "Secret db-password in secrets/db-password.yaml is not encrypted" in refused.stderr
    allowed = pgwarden("diff", "--allow-plaintext-secrets", "m", cwd=clone)
    assert allowed.returncode == 1
    assert "~ data.value: (changed, value hidden)" in allowed.stdout
    assert "- sops.recipients: [" in allowed.stdout  # no longer encrypted: shown, since reviewers must notice
    for result in (refused, allowed):
        assert_nothing_secret(result.stdout + result.stderr, old_secret)


def test_against_a_tag_a_sha_and_a_path_new_since(clone: Path) -> None:
    sha = git("rev-parse", "HEAD", cwd=clone)
    write(clone, {"m/people.yaml": PEOPLE + "---\nkind: Group\nmetadata: {name: dba}\n",
                  "n/team.yaml": "kind: Group\nmetadata: {name: ops}\n"})
    for ref in ("v1", sha, sha[:10]):
        result = pgwarden("diff", "--against", ref, "m", cwd=clone)
        assert result.returncode == 1, result.stderr
        assert f"--- {ref} ({sha[:12]}) m" in result.stdout and "+ Group dba (added)" in result.stdout
    new = pgwarden("diff", "n", cwd=clone)
    assert new.returncode == 1
    assert "n does not exist at origin/main: everything is new" in new.stdout
    assert "+ Group ops (added)\n    + metadata.name: ops\n" in new.stdout


def test_one_file_as_path(clone: Path) -> None:
    write(clone, {"m/people.yaml": PEOPLE.replace("groups: [admins]", "groups: []")})
    result = pgwarden("diff", "m/people.yaml", cwd=clone)
    assert result.returncode == 1, result.stderr
    assert "~ User alice (changed)\n    ~ spec.groups: [admins] -> []\n" in result.stdout


def test_could_not_run(clone: Path, tmp_path: Path) -> None:
    unknown = pgwarden("diff", "--against", "origin/nope", "m", cwd=clone)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("pgwarden: error: git revision 'origin/nope' not found in ")
    outside = tmp_path / "plain-dir"
    write(outside, {"g.yaml": "kind: Group\nmetadata: {name: g}\n"})
    not_a_repo = pgwarden("diff", str(outside), cwd=tmp_path)
    assert not_a_repo.returncode == 2
    assert "is not inside a git repository" in not_a_repo.stderr
    missing = pgwarden("diff", "nowhere", cwd=clone)
    assert missing.returncode == 2 and "no such file or directory: nowhere" in missing.stderr


def test_without_origin_the_base_is_head_and_an_old_plaintext_secret_stays_hidden(
    tmp_path: Path, old_secret: str
) -> None:
    repo = tmp_path / "local"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    # History may hold a plaintext Secret from before encryption was required: "before" is never validated.
    write(repo, {"m/db.yaml": SERVICE, "m/pw.yaml": f"kind: Secret\nmetadata: {{name: db-password}}\n"
                                                    f"data: {{value: {OLD_VALUE}}}\n"})
    commit_all(repo, "plaintext era")
    write(repo, {"m/pw.yaml": old_secret})  # the same Secret, now encrypted
    result = pgwarden("diff", "m", cwd=repo)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("--- HEAD (")
    assert "~ data.value: (changed, value hidden)" in result.stdout
    assert_nothing_secret(result.stdout + result.stderr, old_secret)


def test_unreadable_base_revision_is_reported(tmp_path: Path) -> None:
    repo = tmp_path / "local"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    write(repo, {"m/people.yaml": "kind: Group\nmetadata: {name: admins\n"})
    commit_all(repo, "broken")
    write(repo, {"m/people.yaml": PEOPLE})
    result = pgwarden("diff", "m", cwd=repo)
    assert result.returncode == 2
    assert re.match(r"pgwarden: error: cannot diff: m at HEAD \([0-9a-f]{12}\) cannot be read \(1 problem\)\n",
                    result.stderr)
    assert "DETAIL:  m/people.yaml, document 1: line 3, column 1: " in result.stderr


def test_help_shows_an_example_and_a_github_actions_step(tmp_path: Path) -> None:
    result = pgwarden("diff", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "$ pgwarden diff --against origin/main examples-repo/" in result.stdout
    assert "--output markdown" in result.stdout and "gh pr comment" in result.stdout
    assert "fetch-depth: 0" in result.stdout
    assert "0  no change" in result.stdout and "1  changes" in result.stdout
