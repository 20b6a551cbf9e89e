"""`pgwarden proxy` with a shared PostgreSQL state store whose password never appears on the command line."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pgwarden.state_dsn import STATE_ENV
from tests.support.proxy_harness import write_manifests

PGWARDEN = [sys.executable, "-m", "pgwarden"]


def test_state_url_with_a_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    out = subprocess.run([*PGWARDEN, "proxy", "--manifests", str(tmp_path), "--listen", "127.0.0.1:0",
                          "--state", "postgres://pgwarden:hunter2-state@127.0.0.1/state"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "hunter2" not in out.stderr + out.stdout
    assert "--state-file" in out.stderr and STATE_ENV in out.stderr


@pytest.mark.parametrize("how", ["file", "env"])
def test_state_dsn_from_a_file_or_the_environment_stays_out_of_ps(pg: Any, tmp_path: Path, how: str) -> None:
    database = f"pgwarden_state_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {database}", database="postgres")
    dsn = pg.dsn("pgwarden_admin", database)
    password = pg.passwords["pgwarden_admin"]
    assert password in dsn
    argv = [*PGWARDEN, "proxy", "--manifests", str(write_manifests(tmp_path / "m", pg)), "--listen", "127.0.0.1:0",
            "--data-dir", str(tmp_path / "data"), "--access-log", str(tmp_path / "access.log")]
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}
    if how == "file":
        (tmp_path / "state-dsn").write_text(dsn + "\n")
        (tmp_path / "state-dsn").chmod(0o600)
        argv += ["--state-file", str(tmp_path / "state-dsn")]
    else:
        env[STATE_ENV] = dsn
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "listening on" in ready, ready
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()  # what `ps` shows every local user
        assert password.encode() not in cmdline
        # The proxy really opened the PostgreSQL store (not the sqlite default): its schema is on the server.
        assert pg.psql("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgwarden'", database=database).strip() == "1"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=15)
        pg.psql(f"DROP DATABASE {database} WITH (FORCE)", database="postgres")
    assert proc.returncode == 0, stderr
    assert password not in stderr
    assert not (tmp_path / "data" / "state.db").exists()
