"""A real pgwarden proxy in front of the real test PostgreSQL, run on its own loop in a thread.

The proxy runs in a thread so tests can use blocking clients (psql, psycopg) as well as asyncpg.
Manifests are written as YAML and loaded through the reconciler, as a user would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import uvloop

from proxy.snapshot import Snapshot
from reconciler.directory import load_snapshot
from runtime.process import ProxyOptions, RunningProxy, start_proxy

MANIFESTS = """\
kind: Service
metadata: {{name: my-db}}
spec:
  mode: POSTGRES
  port: 5432
  dynamicConfig:
    configs:
      - name: read-only
        upstream: {{url: "postgres://{host}:{port}"}}
        postgres: {{user: read_only, database: my_db, auth: {{password: {{fromSecret: read-only-password}}}},
                   sslMode: REQUIRE}}
      - name: full-access
        upstream: {{url: "postgres://{host}:{port}"}}
        postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}}}}
    rules:
      - condition: {{match: 'ctx.user.spec.groups.hasAny(["engineering", "admins"])'}}
        configName: full-access
      - condition: {{matchAny: true}}
        configName: read-only
---
kind: Service
metadata: {{name: legacy-md5}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://localhost:{port}"}}
    postgres:
      user: md5_user
      database: my_db
      auth: {{password: {{fromSecret: md5-password}}, mechanisms: [MD5]}}
      sslMode: VERIFY_FULL
      tls: {{ca: {{file: "{ca}"}}}}
---
kind: Service
metadata: {{name: legacy-plain}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://localhost:{port}"}}
    postgres:
      user: plain_user
      database: my_db
      auth: {{password: {{fromSecret: plain-password}}, mechanisms: [PASSWORD]}}
      sslMode: VERIFY_FULL
      tls: {{ca: {{file: "{ca}"}}}}
---
kind: Service
metadata: {{name: verified}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://localhost:{port}"}}
    postgres:
      user: read_only
      database: my_db
      auth: {{password: {{fromSecret: read-only-password}}}}
      sslMode: VERIFY_FULL
      tls: {{ca: {{file: "{ca}"}}}}
---
kind: Service
metadata: {{name: wrong-host}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres:
      user: read_only
      database: my_db
      auth: {{password: {{fromSecret: read-only-password}}}}
      sslMode: VERIFY_FULL
      tls: {{ca: {{file: "{ca}"}}}}
---
kind: Service
metadata: {{name: passthrough}}
spec:
  mode: POSTGRES
  config:
    upstream: {{url: "postgres://{host}:{port}"}}
    postgres: {{auth: {{password: {{fromSecret: read-only-password}}}}}}
---
kind: Group
metadata: {{name: admins}}
spec: {{attrs: {{tier: 1}}}}
---
kind: Group
metadata: {{name: engineering}}
---
kind: User
metadata: {{name: alice}}
spec: {{type: HUMAN, email: alice@example.com, groups: [admins]}}
---
kind: User
metadata: {{name: bob}}
spec: {{type: HUMAN, email: bob@example.com, groups: []}}
---
kind: User
metadata: {{name: carol}}
spec: {{type: HUMAN, isDisabled: true, groups: [admins]}}
---
kind: User
metadata: {{name: ci-bot}}
spec: {{type: WORKLOAD, groups: [engineering]}}
---
kind: Secret
metadata: {{name: full-access-password}}
data: {{value: "{pw_full}"}}
---
kind: Secret
metadata: {{name: read-only-password}}
data: {{value: "{pw_ro}"}}
---
kind: Secret
metadata: {{name: md5-password}}
data: {{value: "{pw_md5}"}}
---
kind: Secret
metadata: {{name: plain-password}}
data: {{value: "{pw_plain}"}}
"""


def write_manifests(directory: Path, pg: Any, text: str = MANIFESTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "all.yaml").write_text(text.format(
        host=pg.host, port=pg.port, ca=pg.ca_cert_path,
        pw_full=pg.passwords["full_access"], pw_ro=pg.passwords["read_only"],
        pw_md5=pg.passwords["md5_user"], pw_plain=pg.passwords["plain_user"],
        pw_admin=pg.passwords["pgwarden_admin"],
    ))
    return directory


class ProxyHarness:
    """A running proxy on its own event loop thread, with helpers to reach it."""

    def __init__(self, running: RunningProxy, loop: asyncio.AbstractEventLoop, log_path: Path, manifests: Path):
        self.running = running
        self.loop = loop
        self.log_path = log_path
        self.manifests = manifests
        self.port = running.port

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a plain function on the proxy's loop and return its result."""
        async def wrapper() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def apply(self, snapshot: Snapshot) -> int:
        return int(self.call(self.running.server.apply, snapshot))

    def reload_from(self, directory: Path) -> int:
        return self.apply(load_snapshot(directory))

    def token(self, user: str, ttl_s: int = 600) -> str:
        """A token bound to a new identity Session, as `pgwarden token issue` makes one."""
        return self.issue(user, ttl_s)[1]

    def issue(self, user: str, ttl_s: int = 600) -> tuple[Any, str]:
        """(identity Session, token)."""
        coro = self.running.server.identity.issue_token(user, ttl_s=ttl_s)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def run(self, coro: Any) -> Any:
        """Await a coroutine on the proxy's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def dsn(self, user: str, service: str = "my-db", *, token: str | None = None, sslmode: str = "require",
            **extra: str) -> str:
        parts = {"host": "127.0.0.1", "port": str(self.port), "dbname": service, "user": user,
                 "password": token if token is not None else self.token(user), "sslmode": sslmode, **extra}
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def log_entries(self) -> list[dict[str, Any]]:
        self.call(self.running.server.access_log.writer.flush)
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate: Any, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError("condition not reached in time")




def start_harness(
    pg: Any, base: Path, *, manifests_text: str = MANIFESTS, default_service: str | None = None,
    state: str | None = None, data_dir: Path | None = None, name: str = "proxy", **options_overrides: Any,
) -> tuple[ProxyHarness, Any]:
    """Start a proxy thread on the given manifests; returns the harness and a stop function.

    Replicas share `data_dir` (signing and state keys) and a PostgreSQL `state`; each gets its own
    admin socket and access log under `base/name-*`. Other keyword arguments override ProxyOptions fields.
    """
    manifests = write_manifests(base / f"{name}-manifests", pg, manifests_text)
    log_path = base / f"{name}-access.log"
    options = ProxyOptions(listen_host="127.0.0.1", listen_port=0, data_dir=data_dir or base / "data",
                           access_log=str(log_path), default_service=default_service, state=state,
                           admin_socket=base / f"{name}-admin.sock")
    options = dataclasses.replace(options, **options_overrides)  # e.g. otlp=…, log_queries=…
    snapshot = load_snapshot(manifests)
    loop = uvloop.new_event_loop()  # what `pgwarden` runs on
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            holder["running"] = await start_proxy(options, snapshot)
            ready.set()

        loop.run_until_complete(boot())
        loop.run_forever()
        # Closed here, not by stop(): uvloop's close() runs the loop until every handle is gone, so a socket the
        # proxy failed to close would block the caller for ever; stop() waits for this thread with a timeout.
        loop.close()

    thread = threading.Thread(target=run, name="pgwarden-proxy", daemon=True)
    thread.start()
    assert ready.wait(30), "proxy did not start"
    harness = ProxyHarness(holder["running"], loop, log_path, manifests)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(holder["running"].close(), loop).result(10)
        # TLS shutdowns in flight end within the proxy's 2 s ssl_shutdown_timeout; closing the loop before
        # they do makes uvloop refuse (EBUSY). Waiting only until the server's client set is empty is not
        # enough (asyncpg's suite left transports still shutting down): wait the whole timeout.
        asyncio.run_coroutine_threadsafe(asyncio.sleep(2.5), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        assert not thread.is_alive(), f"{name}: the event loop did not close within 15 s of the proxy's close()"

    return harness, stop
