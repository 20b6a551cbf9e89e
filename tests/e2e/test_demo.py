"""`pgwarden up --demo` as README's first command: database, repo, proxy, reconciler, a commit goes live."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import git
import psycopg

from pgwarden.demo import demo_passwords
from tests.support.pgcluster import free_port, wait_for_demo_ports

PGWARDEN = [sys.executable, "-m", "pgwarden"]


def test_demo_end_to_end(tmp_path: Path, leak_guard) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    wait_for_demo_ports()
    proc = subprocess.Popen([*PGWARDEN, "up", "--demo", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
                             "--http-listen", f"127.0.0.1:{free_port()}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "Neither alice nor bob" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(90), "".join(output)
        text = "".join(output)
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        assert f'psql "host=127.0.0.1 port={port} dbname=my-db sslmode=require user=alice"' in text

        def connect(user: str) -> psycopg.Connection:
            token = subprocess.run([*PGWARDEN, "token", "issue", "--user", user, "--data-dir", str(data_dir)],
                                   capture_output=True, text=True, check=True).stdout.strip()
            return psycopg.connect(f"host=127.0.0.1 port={port} dbname=my-db sslmode=require user={user} "
                                   f"password={token}")

        with connect("alice") as alice:
            assert alice.execute("INSERT INTO items(name) VALUES ('demo') RETURNING current_user").fetchone() == (
                "full_access",)
        with connect("bob") as bob:
            assert bob.execute("SELECT current_user").fetchone() == ("read_only",)
            try:
                bob.execute("INSERT INTO items(name) VALUES ('nope')")
                raise AssertionError("read_only must not write")
            except psycopg.errors.InsufficientPrivilege:
                pass
        repo_dir = data_dir / "demo-repo"
        bob_file = repo_dir / "users" / "bob.yaml"
        bob_file.write_text(bob_file.read_text().replace("groups: []", "groups: [engineering]"))
        repo = git.Repo(repo_dir)
        repo.git.add(A=True)
        repo.index.commit("bob joins engineering")
        deadline = time.monotonic() + 10
        while True:
            try:
                with connect("bob") as bob:
                    if bob.execute("SELECT current_user").fetchone() == ("full_access",):
                        break
            except psycopg.errors.InsufficientPrivilege as exc:
                # The reload landed while this read_only session ran: it is ended, as it should be; poll again.
                assert "routing changed" in str(exc)
            assert time.monotonic() < deadline, "the commit did not go live"
            time.sleep(0.2)
        status = subprocess.run([*PGWARDEN, "status", "--data-dir", str(data_dir)], capture_output=True, text=True)
        assert status.returncode == 0 and "Ready        True" in status.stdout
        output.append(status.stdout)
        leak_guard.secrets.update(demo_passwords(repo_dir).values())
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, "".join(output)
    leak_guard.check("".join(output), "demo output")
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("pgwarden-demo-pg-*")), "demo database left behind"
