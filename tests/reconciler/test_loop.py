"""The reconcile loop names the stage that failed, stalls on what only a new revision can fix, retries the rest."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from identity.sessions import SessionAuthority
from identity.store.sqlite import SqliteStore
from identity.tokens import TokenAuthority
from proxy.audit.accesslog import AccessLog, AccessLogWriter
from proxy.server import ProxyServer
from reconciler.apply import InMemoryTarget, LiveTarget
from reconciler.loop import ReconcileOptions, Reconciler
from reconciler.source import GitSource, SourceSpec
from reconciler.status import ConditionType, Reason, Status
from runtime.worker_group import WorkerGroup

SHORT_CLIENT_SECRET = "only-23-bytes-of-secret"  # validate cannot see a value's length; build can
CREDENTIAL = f"""\
kind: Credential
metadata: {{name: ci-bot-deploy}}
spec:
  user: ci-bot
  type: OAUTH2
  secret: {{fromSecret: ci-bot-client-secret}}
---
kind: Secret
metadata: {{name: ci-bot-client-secret}}
data: {{value: "{SHORT_CLIENT_SECRET}"}}
"""


def reconciler_for(root: Path, cache: Path, target: LiveTarget) -> Reconciler:
    source = GitSource(SourceSpec(url=str(root)), cache)
    options = ReconcileOptions(allow_plaintext_secrets=True, health_probe=False)
    return Reconciler(source, target, None, options)


def assert_stalled(status: Status, reason: Reason) -> None:
    stalled = status.conditions[ConditionType.STALLED]
    assert (stalled.status, stalled.reason) == ("True", reason)
    assert status.conditions[ConditionType.READY].reason == reason
    assert ConditionType.RECONCILING not in status.conditions
    assert status.next_retry_at is None  # terminal: no backoff timer, only a new revision moves it


async def test_a_build_failure_is_build_failed_and_stalls(seed_root: Path, tmp_path: Path) -> None:
    (seed_root / "credential.yaml").write_text(CREDENTIAL)
    target = InMemoryTarget()
    reconciler = reconciler_for(seed_root, tmp_path / "cache", target)
    assert not await reconciler.reconcile()
    assert_stalled(reconciler.status, Reason.BUILD_FAILED)
    [attempt] = reconciler.status.history
    assert attempt.reason == "BuildFailed" and "shorter than 24 bytes" in "\n".join(attempt.errors)
    assert SHORT_CLIENT_SECRET not in json.dumps(reconciler.status.to_dict())
    assert target.generation == 1  # nothing was applied
    assert not await reconciler.reconcile()  # the same revision again: not even attempted
    assert len(reconciler.status.history) == 1


async def test_an_empty_revision_is_refused_under_its_own_reason(seed_root: Path, tmp_path: Path) -> None:
    target = InMemoryTarget()
    reconciler = reconciler_for(seed_root, tmp_path / "cache", target)
    assert await reconciler.reconcile()
    live = target.current()
    for path in seed_root.rglob("*.y*ml"):
        path.unlink()
    assert not await reconciler.reconcile()
    assert_stalled(reconciler.status, Reason.EMPTY_REVISION_REFUSED)
    assert reconciler.status.history[0].reason == "EmptyRevisionRefused"
    assert target.current() is live and sorted(live.services) == ["my-db"]  # nothing pruned


class _Worker(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A worker's admin socket that refuses every snapshot as one that cannot compile (HTTP 422), as
    `proxy.admin` answers when `ProxyServer.apply` raises SnapshotInvalid."""

    daemon_threads = True
    puts = 0


class _Refuse(http.server.BaseHTTPRequestHandler):
    server: _Worker

    def do_PUT(self) -> None:  # noqa: N802 - the http.server spelling
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.puts += 1
        body = json.dumps({"error": "snapshot rejected, generation 1 stays live: policy p: cannot compile"}).encode()
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "parent"

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_worker(tmp_path: Path) -> Iterator[tuple[Path, _Worker]]:
    path = tmp_path / "worker-0.sock"
    server = _Worker(str(path), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, server
    server.shutdown()
    server.server_close()


def group(worker_sockets: list[Path], control: dict[str, object]) -> WorkerGroup:
    """The target `pgwarden up --workers` hands the reconciler: the parent's WorkerGroup."""
    return WorkerGroup(worker_sockets, ProxyServer(**control))  # type: ignore[arg-type]


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[dict[str, object]]:
    """What the parent's ProxyServer needs: the parent of `pgwarden up --workers`."""
    store = await SqliteStore(tmp_path / "state.db", encryption_key=b"k" * 32).open()
    yield {"tls_context": None, "identity": SessionAuthority(TokenAuthority.load_or_create(tmp_path), store),
           "access_log": AccessLog(AccessLogWriter(None)), "fingerprint_key": b"k" * 32}
    await store.close()


async def test_a_snapshot_a_worker_cannot_compile_stalls(seed_root: Path, tmp_path: Path,
                                                         refusing_worker: tuple[Path, _Worker],
                                                         control: dict[str, object]) -> None:
    path, worker = refusing_worker
    target = group([path], control)
    reconciler = reconciler_for(seed_root, tmp_path / "cache", target)
    assert not await reconciler.reconcile()
    assert_stalled(reconciler.status, Reason.APPLY_FAILED)
    assert "cannot compile" in reconciler.status.history[0].message
    assert target.live.generation == 1 and worker.puts == 1
    assert not await reconciler.reconcile()  # no endless backoff: the same revision is not sent again
    assert worker.puts == 1


async def test_an_unreachable_worker_is_retried(seed_root: Path, tmp_path: Path,
                                                control: dict[str, object]) -> None:
    target = group([tmp_path / "no-such-worker.sock"], control)
    reconciler = reconciler_for(seed_root, tmp_path / "cache", target)
    assert not await reconciler.reconcile()
    status = reconciler.status
    assert ConditionType.STALLED not in status.conditions
    assert status.conditions[ConditionType.RECONCILING].status == "True"
    assert status.conditions[ConditionType.READY].reason == Reason.APPLY_FAILED
    assert status.next_retry_at is not None  # backoff: a worker that comes back takes the same revision
    assert "unreachable" in status.history[0].message
    assert target.live.generation == 1
