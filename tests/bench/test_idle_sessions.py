"""The idle-sessions bench (issue 6) runs end to end on a few sessions against real PostgreSQL, pgbouncer and pgwarden.

No timing assertions: memory and latency numbers belong in the bench's output; this checks the machinery.
"""

from __future__ import annotations

import json
import resource
import tempfile
from pathlib import Path

import pytest

from bench import idle_sessions
from bench.idle_sessions import run_idle_sessions, session_limit
from bench.system import find_binaries

SESSIONS = 50


@pytest.mark.slow
def test_idle_sessions_are_held_by_pgwarden_and_all_answer() -> None:
    progress: list[str] = []
    before = _run_dirs()

    report = run_idle_sessions(SESSIONS, tries=10, binaries=find_binaries(), progress=progress.append)

    assert (report.opened, report.open_errors, report.first_open_error) == (SESSIONS, 0, "")
    assert report.pgwarden_alive
    # Every idle session still works at the end, not just the ones used for latency.
    assert (report.idle_checked, report.idle_answered) == (SESSIONS, SESSIONS)
    # pgwarden holds a client socket and an upstream socket per session; PostgreSQL sees only pooled backends.
    assert report.pgwarden_fds_after >= 2 * SESSIONS
    assert report.postgres_backends < SESSIONS
    assert report.pgwarden_rss_before_kib > 0 and report.pgwarden_rss_after_kib > 0
    assert report.baseline is not None and report.loaded is not None
    assert report.loaded.idle_sessions == SESSIONS
    for latency in (report.baseline.fresh_connect, report.baseline.open_session, report.loaded.fresh_connect,
                    report.loaded.open_session):
        assert (latency.tries, latency.errors) == (10, 0)
    table = report.to_markdown()
    assert f"{SESSIONS} of {SESSIONS} opened" in table
    assert "| pgwarden RSS (KiB) |" in table and f"| {SESSIONS} idle p50 |" in table
    assert json.loads(json.dumps(report.to_json()))["opened"] == SESSIONS
    assert any("opening 50 idle sessions" in line for line in progress)
    # Everything it started is gone: its temporary directory (servers' data, token store) was removed.
    assert _run_dirs() <= before


def _run_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{idle_sessions.TEMP_PREFIX}*"))


def test_the_fd_limit_is_raised_and_bounds_the_session_count() -> None:
    soft = idle_sessions.raise_nofile()

    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert soft >= min(idle_sessions.WANTED_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    # Two fds per session in pgwarden (client + upstream) plus spare: 20,000 fds are not enough for 10,000.
    assert session_limit(20_000) < 10_000 <= session_limit(idle_sessions.WANTED_NOFILE)


def test_quick_mode_caps_sessions_and_tries() -> None:
    args = idle_sessions._parse(["--quick"])

    assert (args.sessions, args.tries) == (1_000, 50)
    with pytest.raises(SystemExit):
        idle_sessions._parse(["--sessions", "0"])
