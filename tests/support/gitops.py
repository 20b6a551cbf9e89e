"""Real Git repositories of manifests and a real `pgwarden up` process, for GitOps behaviour tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import git
import pyrage

from pgwarden.adminclient import call
from reconciler.sops import encrypt_secret_manifest
from tests.support.pgcluster import free_port

SERVICES = """\
kind: Service
metadata: {{name: my-db}}
spec:
  mode: POSTGRES
  dynamicConfig:
    configs:
      - name: read-only
        upstream: {{url: "postgres://{host}:{port}"}}
        postgres: {{user: read_only, database: my_db, auth: {{password: {{fromSecret: read-only-password}}}}}}
      - name: full-access
        parent: read-only
        postgres: {{user: full_access, auth: {{password: {{fromSecret: full-access-password}}}}}}
    rules:
      - condition: {{match: 'ctx.user.spec.groups.hasAny(["admins"])'}}
        configName: full-access
      - condition: {{matchAny: true}}
        configName: read-only
---
kind: Service
metadata: {{name: other}}
spec:
  mode: POSTGRES
  attrs: {{note: "{note}"}}
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: read_only, database: my_db, auth: {{password: {{fromSecret: read-only-password}}}}}}
"""

PEOPLE = """\
kind: Group
metadata: {{name: admins}}
---
kind: User
metadata: {{name: alice}}
spec: {{type: HUMAN, groups: [{alice_groups}]}}
---
kind: User
metadata: {{name: bob}}
spec: {{type: HUMAN, groups: []}}
"""

PGWARDEN = [sys.executable, "-m", "pgwarden"]


class ManifestRepo:
    """A bare 'remote' and a working clone that tests commit to and push from."""

    def __init__(self, base: Path, pg: Any) -> None:
        self.pg = pg
        self.identity = pyrage.x25519.Identity.generate()
        self.key_file = base / "age.key"
        self.key_file.write_text(str(self.identity) + "\n")
        self.key_file.chmod(0o600)
        self.remote = base / "remote.git"
        git.Repo.init(self.remote, bare=True, initial_branch="main")
        self.work = git.Repo.clone_from(str(self.remote), base / "work")
        with self.work.config_writer() as config:
            config.set_value("user", "name", "test").set_value("user", "email", "test@example.com")
        self.root = Path(self.work.working_tree_dir or "")
        self.url = f"file://{self.remote}"

    def write_defaults(self, *, note: str = "v1", alice_groups: str = "admins") -> None:
        self.write("services.yaml", SERVICES.format(host=self.pg.host, port=self.pg.port, note=note))
        self.write("people.yaml", PEOPLE.format(alice_groups=alice_groups))
        for name, role in (("read-only-password", "read_only"), ("full-access-password", "full_access")):
            self.write_secret(name, self.pg.passwords[role])

    def write(self, name: str, text: str) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def write_secret(self, name: str, value: str, *, recipient: str | None = None) -> None:
        recipients = [recipient or str(self.identity.to_public())]
        self.write(f"secrets/{name}.yaml", encrypt_secret_manifest(name, value, age_recipients=recipients))

    def commit(self, message: str, *, push: bool = True) -> str:
        self.work.git.add(A=True)
        commit = self.work.index.commit(message)
        if push:
            self.work.git.push("origin", "HEAD:main")
        return commit.hexsha


class UpProcess:
    """`pgwarden up` as a user runs it, with its output captured for leak checks."""

    def __init__(self, repo_url: str, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [*PGWARDEN, "up", "--repo", repo_url, "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
             "--http-listen", f"127.0.0.1:{self.http_port}", "--access-log", str(data_dir / "access.log"), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
        )
        self._ready = threading.Event()
        self.port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.stop()
            raise AssertionError("pgwarden up did not become ready:\n" + "".join(self.output))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*PGWARDEN, *args, "--data-dir", str(self.data_dir)], capture_output=True, text=True,
                             timeout=60)
        self.output.append(out.stdout + out.stderr)
        return out

    def status(self) -> dict[str, Any]:
        """Straight from the admin socket (a `pgwarden status` process would add ~0.5 s per look)."""
        code, body = call(self.data_dir / "admin.sock", "GET", "/v1/status")
        assert code == 200, body
        self.output.append(json.dumps(body))
        return dict(body)

    def condition(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status()["conditions"] if c["type"] == kind), None)

    def token(self, user: str) -> str:
        return self.cli("token", "issue", "--user", user).stdout.strip()

    def dsn(self, user: str, service: str = "my-db") -> str:
        return (f"host=127.0.0.1 port={self.port} dbname={service} user={user} sslmode=require "
                f"password={self.token(user)}")

    def wait_applied(self, commit: str, timeout_s: float = 15.0) -> float:
        """Seconds until `commit` is the applied revision."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.status()["last_applied_revision"].endswith(commit):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"{commit} not applied in {timeout_s} s; status: {self.status()}")

    def wait_attempted(self, commit: str, timeout_s: float = 15.0) -> dict[str, Any]:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            status = self.status()
            if status["last_attempted_revision"].endswith(commit) and status["history"] and \
                    status["history"][0]["revision"].endswith(commit):
                return status
            time.sleep(0.05)
        raise AssertionError(f"{commit} not attempted in {timeout_s} s; status: {self.status()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return "".join(self.output)
