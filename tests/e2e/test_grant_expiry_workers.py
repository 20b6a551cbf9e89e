"""`pgwarden up --workers 2`: a grant that expires ends the sessions relying on it on every worker, on the real clock.

The parent keeps the grant timer and pushes the re-evaluation to both workers, so they move to the same generation.
The window is a few seconds long and the test polls for its end (no sleeps, no clock outside the processes).
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import psycopg

from pgwarden.adminclient import call
from tests.support.gitops import ManifestRepo, UpProcess

WINDOW_S = 18  # long enough to apply the commit and connect on a loaded CI machine (~5 s here); the test waits it out


def worker_state(up: UpProcess, index: int) -> dict[str, Any]:
    code, body = call(up.data_dir / f"admin-{index}.sock", "GET", "/v1/state")
    assert code == 200, body
    return dict(body)


def test_an_expiring_grant_ends_its_sessions_on_both_workers_at_the_boundary(pg: Any, tmp_path: Path) -> None:
    repo = ManifestRepo(tmp_path, pg)
    repo.write_defaults()
    repo.commit("initial")
    up = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600",
                   "--workers", "2")
    try:
        until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=WINDOW_S)).replace(microsecond=0)
        shown = until.isoformat().replace("+00:00", "Z")
        repo.write_defaults(alice_groups=f'{{name: admins, validUntil: "{until.isoformat()}"}}')
        commit = repo.commit("alice: admins for a few seconds")
        up.cli("reconcile", "--with-source")
        up.wait_applied(commit)
        generation = worker_state(up, 0)["generation"]
        assert worker_state(up, 1)["generation"] == generation
        dsn = up.dsn("alice")
        conns = [psycopg.connect(dsn) for _ in range(12)]
        assert all(c.execute("SELECT current_user").fetchone() == ("full_access",) for c in conns)
        assert datetime.datetime.now(datetime.UTC) < until, "the machine took longer than the window to connect"
        code, body = call(up.data_dir / "admin.sock", "GET", "/v1/sessions")
        assert code == 200 and sorted({s["worker"] for s in body["sessions"]}) == [0, 1], body
        alive, deadline = list(conns), time.monotonic() + WINDOW_S + 30
        while alive and time.monotonic() < deadline:
            for conn in list(alive):
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error as exc:  # the FATAL carries AccessDenied's SQLSTATE, 42501
                    assert exc.diag.severity_nonlocalized == "FATAL", exc
                    assert f'the grant group "admins" of user "alice" expired at {shown}' in str(exc), exc
                    alive.remove(conn)
            time.sleep(0.1)
        assert not alive, f"{len(alive)} of 12 sessions outlived the grant"
        assert datetime.datetime.now(datetime.UTC) >= until
        assert worker_state(up, 0)["generation"] == worker_state(up, 1)["generation"] == generation + 1
        with psycopg.connect(up.dsn("alice")) as again:
            assert again.execute("SELECT current_user").fetchone() == ("read_only",)
        for conn in conns:
            conn.close()
    finally:
        output = up.stop()
        repo.work.close()  # GitPython's persistent `git cat-file` processes
    assert "grant window boundary" in output
