"""`pgwarden validate PATH` in a subprocess: offline, no keys; every problem placed; plaintext Secrets refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyrage
import pytest

from reconciler.sops import RecipientGroup, dump_yaml, encrypt_documents, encrypt_secret_manifest

ROOT = Path(__file__).resolve().parents[2]
VALUE = "pw-3b9e1d7c"

SERVICE = """\
kind: Service
metadata: {name: my-db}
spec:
  config:
    upstream: {url: postgres://my-pg:5432}
    postgres: {user: app, auth: {password: {fromSecret: pw}}}
  dynamicConfig:
    configs:
      - {name: admin, parent: default, postgres: {user: admin}}
    rules:
      - condition: {match: 'ctx.user.spec.groups.hasAny(["admins"])'}
        configName: admin
"""
PEOPLE = """\
kind: Group
metadata: {name: admins}
---
kind: User
metadata: {name: alice}
spec: {groups: [admins]}
"""


def pgwarden(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the command with no sops keys anywhere it could look."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPS_", "GNUPG"))}
    env.update(HOME=str(cwd), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pgwarden", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def recipient() -> str:
    # The identity is dropped right here: validate must never need it.
    return str(pyrage.x25519.Identity.generate().to_public())


@pytest.fixture
def encrypted(recipient: str) -> str:
    return encrypt_secret_manifest("pw", VALUE, age_recipients=[recipient])


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def assert_no_secret(result: subprocess.CompletedProcess[str], *more: str) -> None:
    output = result.stdout + result.stderr
    assert VALUE not in output and "ENC[AES256_GCM,data:" not in output
    for secret in more:
        assert secret not in output


def test_encrypted_repository_is_valid_without_any_key(tmp_path: Path, encrypted: str) -> None:
    write(tmp_path / "m", {"db.yaml": SERVICE, "people.yaml": PEOPLE, "secrets/pw.yaml": encrypted})
    result = pgwarden("validate", "m", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "✓ 4 documents valid (Service: 1, Group: 1, User: 1, Secret: 1)\n"
    assert_no_secret(result)


def test_plaintext_secret_is_refused_unless_allowed(tmp_path: Path) -> None:
    plain = f"kind: Secret\nmetadata: {{name: pw}}\ndata: {{value: {VALUE}}}\n"
    write(tmp_path / "m", {"db.yaml": SERVICE, "people.yaml": PEOPLE, "secrets.yaml": plain})
    refused = pgwarden("validate", "m", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stdout.splitlines()[0] == (
        "m/secrets.yaml, document 1, data: Secret pw in secrets.yaml is not encrypted: "
        "encrypt it with `pgwarden secret create`"
    )
    assert "--allow-plaintext-secrets" in refused.stdout
    allowed = pgwarden("validate", "--allow-plaintext-secrets", "m", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stdout
    assert_no_secret(refused)
    assert_no_secret(allowed)


def test_every_problem_is_one_placed_line(tmp_path: Path, encrypted: str) -> None:
    broken = SERVICE.replace("configName: admin", "configName: admn").replace(
        "hasAny", "hasAny(").replace("  config:\n", "  colour: blue\n  config:\n")
    write(tmp_path / "m", {"db.yaml": broken, "people.yaml": PEOPLE.replace("[admins]", "[admin]"),
                           "pw.yaml": encrypted})
    result = pgwarden("validate", "m", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == "✗ 4 problems in the manifests under m"
    problems = lines[:4]
    assert all(re.match(r"m/[a-z]+\.yaml, document \d+, \S+: ", line) for line in problems), problems
    joined = "\n".join(problems)
    assert "m/db.yaml, document 1, spec.colour: unknown field" in joined
    assert "m/db.yaml, document 1, spec.dynamicConfig.rules[0].configName: no config named 'admn'" in joined
    assert "m/db.yaml, document 1, spec.dynamicConfig.rules[0].condition.match: invalid CEL" in joined
    assert "m/people.yaml, document 2, spec.groups[0]: no Group named 'admin'" in joined
    assert_no_secret(result)


def test_unreadable_yaml_is_placed_by_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "m", {"people.yaml": PEOPLE, "bad.yaml": "kind: Group\nmetadata: {name: x\n"})
    result = pgwarden("validate", "m", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith("m/bad.yaml, document 1: line 3, column 1: ")


def test_sops_shape_is_checked_without_decrypting(tmp_path: Path, encrypted: str) -> None:
    in_clear = re.sub(r"value: ENC\[[^\]]+\]", f"value: {VALUE}", encrypted)
    no_mac = re.sub(r"\n\s+mac: ENC\[[^\]]+\]", "", encrypted)
    assert in_clear != encrypted and no_mac != encrypted
    write(tmp_path / "m", {"a.yaml": in_clear, "b.yaml": no_mac.replace("name: pw", "name: pw2")})
    result = pgwarden("validate", "m", cwd=tmp_path)
    assert result.returncode == 1
    assert "m/a.yaml, document 1, data.value: data.value is not encrypted" in result.stdout
    assert "m/b.yaml, document 1, sops.mac: sops metadata has no MAC" in result.stdout
    assert_no_secret(result, *re.findall(r"ENC\[[^\]]+\]", encrypted))


def test_only_secrets_may_be_encrypted(tmp_path: Path, recipient: str) -> None:
    group = encrypt_documents([{"kind": "Group", "metadata": {"name": "admins"}}],
                              recipients=[RecipientGroup(age=(recipient,))])
    write(tmp_path / "m", {"g.yaml": dump_yaml(group)})
    result = pgwarden("validate", "m", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "m/g.yaml, document 1, sops: only Secret manifests may be sops-encrypted (and only their `data`)"
    )
    assert_no_secret(result)  # kind and name are ciphertext here: never echoed as "unknown kind 'ENC[...]'"


def test_json_output(tmp_path: Path, encrypted: str) -> None:
    write(tmp_path / "m", {"db.yaml": SERVICE, "people.yaml": PEOPLE, "pw.yaml": encrypted})
    ok = json.loads(pgwarden("validate", "-o", "json", "m", cwd=tmp_path).stdout)
    assert ok == {"valid": True, "path": "m", "documents": 4,
                  "kinds": {"Service": 1, "Group": 1, "User": 1, "Secret": 1}}
    (tmp_path / "m" / "people.yaml").write_text(PEOPLE.replace("[admins]", "[admin]"))
    result = pgwarden("validate", "--output", "json", "m", cwd=tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stdout)["problems"] == [{
        "file": "m/people.yaml", "document": 2, "path": "spec.groups[0]",
        "message": "no Group named 'admin' (did you mean 'admins'?)", "hint": None, "error": "DanglingReference",
    }]


def test_missing_path_could_not_run(tmp_path: Path) -> None:
    result = pgwarden("validate", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("pgwarden: error: no such file or directory: nowhere\nHINT:  ")
    assert result.stdout == ""


def test_help_teaches_with_an_example(tmp_path: Path) -> None:
    result = pgwarden("validate", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "$ pgwarden validate repo/" in result.stdout
    assert "exit status:" in result.stdout and "2  could not run" in result.stdout
    assert "--allow-plaintext-secrets" in result.stdout
