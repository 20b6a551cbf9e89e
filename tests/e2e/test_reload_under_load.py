"""SIGHUP bursts on `pgwarden proxy` while a client keeps querying: reads and compiles run beside the relay, a
burst is folded into passes that re-read the directory, the last revision written is the one that stays live,
and the client's session never sees an error.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from pgwarden.adminclient import call
from tests.support.proxy_harness import write_manifests

PGWARDEN = [sys.executable, "-m", "pgwarden"]
EXTRA_SERVICE = """\
---
kind: Service
metadata: {{name: {name}}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{user: read_only, database: my_db, auth: {{password: {{fromSecret: read-only-password}}}},
               sslMode: REQUIRE}}
"""


def test_a_sighup_burst_ends_on_the_last_revision_without_failing_a_query(pg: Any, tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "manifests", pg)
    base_text = (manifests / "all.yaml").read_text()
    data_dir, log = tmp_path / "data", tmp_path / "pgwarden.log"
    with log.open("w") as err:
        proc = subprocess.Popen([*PGWARDEN, "proxy", "--manifests", str(manifests), "--listen", "127.0.0.1:0",
                                 "--data-dir", str(data_dir), "--access-log", "none"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+),", ready)
        assert match, (ready, log.read_text())
        token = subprocess.run([*PGWARDEN, "token", "issue", "--user", "bob", "--ttl", "1h", "--data-dir",
                                str(data_dir)], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        dsn = f"host=127.0.0.1 port={match.group(1)} dbname=my-db sslmode=require user=bob password='{token}'"
        stop, answered, errors = threading.Event(), [0], []

        def query_until_stopped() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                while not stop.is_set():
                    try:
                        assert conn.execute("SELECT 1").fetchone() == (1,)
                        answered[0] += 1
                    except Exception as exc:  # noqa: BLE001 - any error is the finding
                        errors.append(repr(exc))
                        return

        client = threading.Thread(target=query_until_stopped)
        client.start()
        for i in range(20):  # each revision adds a differently named Service; the last one must win
            text = base_text + EXTRA_SERVICE.format(name=f"revision-{i}", host=pg.host, port=pg.port)
            (manifests / ".all.yaml.tmp").write_text(text)
            (manifests / ".all.yaml.tmp").replace(manifests / "all.yaml")
            proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        services: dict[str, Any] = {}
        while time.monotonic() < deadline and "revision-19" not in services:
            services = call(data_dir / "admin.sock", "GET", "/v1/state")[1]["services"]
            time.sleep(0.1)
        before = answered[0]
        time.sleep(0.3)  # the session keeps being served after the burst
        stop.set()
        client.join(30)
        assert errors == [] and answered[0] > before, (errors, answered)
        assert "revision-19" in services, sorted(services)
        assert not any(name.startswith("revision-") and name != "revision-19" for name in services)
        with psycopg.connect(dsn.replace("dbname=my-db", "dbname=revision-19"), autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "failed" not in text, text
    applied = [int(g) for g in re.findall(r"reloaded .*: generation (\d+)", text)]
    assert applied == sorted(applied) and 1 <= len(applied) <= 20, applied  # in order; a burst may fold
