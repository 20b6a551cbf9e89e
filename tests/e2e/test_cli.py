"""The command as a user runs it: `pgwarden proxy` prints where it is; a token gets psql in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.proxy_harness import write_manifests

PGWARDEN = [sys.executable, "-m", "pgwarden"]


@pytest.mark.parametrize("command", [[], ["proxy"], ["up"], ["token", "issue"], ["sessions"], ["status"],
                                     ["validate"], ["diff"], ["access"], ["explain"], ["test"], ["grant"],
                                     ["sops", "decrypt"], ["secret", "create"]])
def test_every_help_teaches_with_an_example(command: list[str]) -> None:
    out = subprocess.run([*PGWARDEN, *command, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "example" in out.stdout.lower()


def test_proxy_command_end_to_end(pg, tmp_path) -> None:  # type: ignore[no-untyped-def]
    manifests = write_manifests(tmp_path / "manifests", pg)
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [*PGWARDEN, "proxy", "--manifests", str(manifests), "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
         "--access-log", str(tmp_path / "access.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+), admin socket (\S+), CA certificate (\S+),", ready)
        assert match, ready
        port, ca = match.group(1), match.group(3)
        assert (data_dir / "signing-key.jwk").stat().st_mode & 0o077 == 0
        token = subprocess.run([*PGWARDEN, "token", "issue", "--user", "alice", "--ttl", "1h", "--data-dir",
                                str(data_dir)], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        env = {**os.environ, "PGPASSWORD": token}
        dsn = f"host=localhost port={port} dbname=my-db sslmode=verify-full sslrootcert={ca} user=alice"
        out = subprocess.run(["psql", dsn, "-AtXc", "SELECT current_user"], env=env, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "full_access"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    for secret in pg.passwords.values():
        assert secret not in stderr and secret not in (tmp_path / "access.log").read_text()


def test_proxy_refuses_invalid_manifests_with_place(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bad.yaml").write_text("kind: Service\nmetadata: {name: x}\nspec: {mode: POSTGRES, port: nope}\n")
    out = subprocess.run([*PGWARDEN, "proxy", "--manifests", str(tmp_path), "--listen", "127.0.0.1:0",
                          "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "bad.yaml" in out.stderr and "spec.port" in out.stderr


def test_token_issue_without_a_running_proxy_explains(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([*PGWARDEN, "token", "issue", "--user", "alice", "--data-dir", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "no pgwarden is running" in out.stderr and "HINT" in out.stderr


def test_proxy_decrypts_sops_secrets_with_the_given_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = Path(__file__).resolve().parents[2] / "examples-repo"
    proc = subprocess.Popen(
        [*PGWARDEN, "proxy", "--manifests", str(repo), "--age-key-file", str(repo / "demo-age-key.txt"),
         "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"), "--access-log", str(tmp_path / "a.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert "pgwarden proxy ready" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    refused = subprocess.run([*PGWARDEN, "proxy", "--manifests", str(repo), "--listen", "127.0.0.1:0",
                              "--data-dir", str(tmp_path / "d2")], capture_output=True, text=True, timeout=30,
                             env={k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")})
    assert refused.returncode == 1 and "no decryption keys configured" in refused.stderr
