"""N worker processes, each with its own uvloop and ProxyServer, on one port (`pgwarden proxy|up --workers N`).

How it works:
- The parent reserves the port (a bound, non-listening SO_REUSEPORT socket, so `--listen HOST:0` works),
  then runs worker 0 and, once it is ready (it creates the data directory's keys), workers 1..N-1. Each
  worker is `pgwarden proxy` with the same arguments plus `--worker-slot I/N`: it loads the same manifest
  directory, listens with SO_REUSEPORT (the kernel spreads new connections by their address hash) and
  serves its admin API on its own socket (worker 0: the usual one; worker k: `admin-k.sock` next to it).
- SIGHUP to the parent is forwarded to every worker; each re-reads the directory, as a single process does.
  SIGINT/SIGTERM stop every worker. If a worker dies, the parent stops the others and exits 1 (no respawn).
- Cancel requests arrive on a new connection, which may land on any worker. The BackendKeyData secret key
  we hand out encodes the owning worker (`key mod N`, costing log2(N) of its 32 random bits); a worker that
  gets a CancelRequest it does not own sends the (pid, key) pair over the owner's unix socket
  (DATA_DIR/cancel-I.sock), and the owner, who alone knows the upstream key, sends the real cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from identity.store.base import utc_now
from proxy.server import ProxyServer
from proxy.snapshot import Snapshot
from proxy.upstream import CANCEL_DELIVERY_TIMEOUT_S
from runtime.datadir import ADMIN_SOCKET
from runtime.process import ProxyOptions, RunningProxy, start_proxy

log = logging.getLogger("pgwarden")
READY_FD_ENV = "PGWARDEN_WORKER_READY_FD"
_START_TIMEOUT_S = 60.0
_CANCEL = struct.Struct("!ii")  # process id, secret key: a CancelRequest's payload


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSlot:
    """Which worker this process is (`index`) out of `count`."""

    index: int
    count: int

    def owner_of(self, secret_key: int) -> int:
        """The worker that issued `secret_key` (keys are signed int32 on the wire)."""
        return (secret_key & 0xFFFFFFFF) % self.count

    def tag(self, secret_key: int) -> int:
        """`secret_key` moved to the nearest value this worker owns; stays a signed int32."""
        unsigned = secret_key & 0xFFFFFFFF
        unsigned += self.index - unsigned % self.count
        if unsigned > 0xFFFFFFFF:
            unsigned -= self.count
        return unsigned - 2**32 if unsigned >= 2**31 else unsigned


MAX_WORKERS = 64


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity, so a container's or taskset's limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cancel_socket(data_dir: Path, index: int) -> Path:
    return data_dir / f"cancel-{index}.sock"


def admin_socket_for(slot: WorkerSlot | None, admin_socket: Path) -> Path:
    """Worker 0 keeps the admin socket (so `pgwarden token issue` finds it); worker k gets `NAME-k.sock`."""
    if slot is None or slot.index == 0:
        return admin_socket
    return admin_socket.with_name(f"{admin_socket.stem}-{slot.index}{admin_socket.suffix}")


class WorkerCancelRouter:
    """The registry's CancelRouter in a worker: keys name their worker; a sibling's key goes to its unix socket."""

    def __init__(self, slot: WorkerSlot, data_dir: Path) -> None:
        self.slot = slot
        self.data_dir = data_dir

    def claim(self, secret_key: int) -> int:
        return self.slot.tag(secret_key)

    def is_mine(self, secret_key: int) -> bool:
        return self.slot.owner_of(secret_key) == self.slot.index

    async def forward(self, process_id: int, secret_key: int) -> None:
        owner = self.slot.owner_of(secret_key)
        # Like PostgreSQL, a cancel gets no reply: a vanished owner is logged, never reported to the sender.
        try:
            reader, writer = await asyncio.open_unix_connection(str(cancel_socket(self.data_dir, owner)))
            try:
                writer.write(_CANCEL.pack(process_id, secret_key))
                await writer.drain()
                # The owner closes once the upstream has the cancel; the client's cancel connection waits for that.
                async with asyncio.timeout(CANCEL_DELIVERY_TIMEOUT_S):
                    await reader.read()
            finally:
                writer.close()
            log.info("worker %d: forwarded a cancel request to worker %d", self.slot.index, owner)
        except (OSError, TimeoutError) as exc:
            log.warning("worker %d: could not forward a cancel request to worker %d: %s", self.slot.index, owner,
                        str(exc) or "no answer in time")  # str(TimeoutError()) is empty


async def open_cancel_inbox(server: ProxyServer, router: WorkerCancelRouter) -> Callable[[], Awaitable[None]]:
    """Listen on DATA_DIR/cancel-I.sock for cancels sibling workers forward here; returns its closer."""
    path = cancel_socket(router.data_dir, router.slot.index)
    path.unlink(missing_ok=True)  # left by a worker that was killed
    inbox = await asyncio.get_running_loop().create_unix_server(lambda: _CancelInbox(server, router), str(path))
    path.chmod(0o600)

    async def close() -> None:
        inbox.close()
        path.unlink(missing_ok=True)

    return close


async def start_worker(options: ProxyOptions, snapshot: Snapshot, slot: WorkerSlot, **kwargs: Any) -> RunningProxy:
    """`start_proxy` for worker `slot`: the shared port (SO_REUSEPORT), a cancel router and its inbox."""
    router = WorkerCancelRouter(slot, options.data_dir)
    # The parent re-evaluates grant windows and pushes the result to every worker (WorkerGroup.refresh_grants),
    # so all end a lapsed grant's sessions on one generation; a worker's own timer would race it.
    running = await start_proxy(options, snapshot, cancel_router=router, reuse_port=True, has_grant_timer=False,
                                **kwargs)
    running.closers.append(await open_cancel_inbox(running.server, router))
    return running


async def recheck_identity_sessions(server: ProxyServer) -> int:
    """One pass of the 30 s identity re-check, now: `pgwarden up --workers N` asks for it (SIGUSR1) after a
    revocation, because the SQLite store's notices do not cross processes. Returns connections ended."""
    ended, now = 0, utc_now()
    for sid in server.registry.identity_session_ids():
        session = await server.identity.store.get_session(sid)
        if session is None or not session.is_active(now):
            state = "gone" if session is None else session.state(now).lower()
            ended += await server.revoke_identity_sessions([sid], reason=f"session {sid} is {state}")
    return ended


class _CancelInbox(asyncio.Protocol):
    """Receives (pid, key) pairs forwarded by sibling workers; one pair per connection."""

    def __init__(self, server: ProxyServer, router: WorkerCancelRouter) -> None:
        self.server = server
        self.router = router
        self.buffer = b""
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < _CANCEL.size:
            return
        process_id, secret_key = _CANCEL.unpack_from(self.buffer)
        self.buffer = b""
        transport = self.transport
        assert transport is not None  # data arrives only after connection_made
        if not self.router.is_mine(secret_key):  # never bounce it on
            transport.close()
            return
        # The registry keeps a reference to the task; closing when it is done tells the forwarding sibling the
        # upstream has the cancel.
        self.server.start_cancel(process_id, secret_key).add_done_callback(lambda _: transport.close())


def worker_options(options: ProxyOptions, slot: WorkerSlot) -> ProxyOptions:
    """A `pgwarden proxy` worker's options: worker 0 keeps the admin socket, worker k has its own."""
    admin = admin_socket_for(slot, options.admin_socket or options.data_dir / ADMIN_SOCKET)
    return dataclasses.replace(options, admin_socket=admin)


def announce_ready(ready_line: str, *, is_to_stderr: bool) -> None:
    """A worker tells its parent through the inherited pipe; a lone process prints the ready line."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        print(ready_line, file=sys.stderr if is_to_stderr else sys.stdout, flush=True)
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(ready_line + "\n")


# --- the parent ---------------------------------------------------------------------------------------------

def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: the workers can share the port, and port 0 becomes a fixed one."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def spawn_worker(index: int, count: int, host: str, port: int,
           extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """Start `pgwarden` with this process's arguments, then `extra` and the shared port and slot (later wins)."""
    read_fd, write_fd = os.pipe()
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [sys.executable, "-m", "pgwarden", *sys.argv[1:], *extra, "--listen", listen,
            "--worker-slot", f"{index}/{count}"]
    popen = subprocess.Popen(argv, pass_fds=(write_fd,), env={**os.environ, READY_FD_ENV: str(write_fd)})
    os.close(write_fd)
    return popen, read_fd


def await_ready(popen: subprocess.Popen[bytes], read_fd: int, index: int) -> str:
    deadline = time.monotonic() + _START_TIMEOUT_S
    with os.fdopen(read_fd, "rb") as pipe:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([pipe], [], [], 0.2)
            if readable:
                line = pipe.readline().decode(errors="replace").strip()
                if line:
                    return line
                break  # EOF: the worker exited before it was ready
            if popen.poll() is not None:
                break
    raise RuntimeError(f"worker {index} did not start (exit code {popen.poll()}); its errors are above")


class WorkersFailed(Exception):
    """A worker did not start, or one exited while serving: the parent stopped the others."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def run_workers(host: str, port: int, count: int, *, ready_to_stderr: bool, stop_timeout_s: float = 15.0) -> None:
    """Start `count` workers, print one ready line, forward SIGHUP, stop them all on SIGINT/SIGTERM.

    Raises OSError when the port cannot be reserved, WorkersFailed when a worker does not start or dies.
    """
    reservation = reserve_port(host, port)
    port = reservation.getsockname()[1]
    workers: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        first, fd = spawn_worker(0, count, host, port)
        workers.append(first)
        line = await_ready(first, fd, 0)  # worker 0 creates the data directory's keys; the rest reuse them
        rest = [spawn_worker(i, count, host, port) for i in range(1, count)]
        workers += [popen for popen, _ in rest]
        for i, (popen, fd) in enumerate(rest, 1):
            await_ready(popen, fd, i)
    except RuntimeError as exc:
        forward(signal.SIGTERM, None)
        wait_all(workers)
        raise WorkersFailed(str(exc), hint="run without --workers to see the single-process error") from exc
    pids = ", ".join(str(w.pid) for w in workers)
    print(f"{line.split(', generation')[0]}, {count} workers (pids {pids})",
          file=sys.stderr if ready_to_stderr else sys.stdout, flush=True)
    while not stopping:
        if any(w.poll() is not None for w in workers):
            dead = next(i for i, w in enumerate(workers) if w.poll() is not None)
            if not stopping:
                forward(signal.SIGTERM, None)
                wait_all(workers)
                raise WorkersFailed(f"worker {dead} exited with {workers[dead].returncode}; stopping the others")
        time.sleep(0.2)
    wait_all(workers, timeout_s=stop_timeout_s)
    reservation.close()


def wait_all(workers: list[subprocess.Popen[bytes]], *, timeout_s: float = 15.0) -> None:
    """Wait for every worker to exit (a draining one may take up to its --drain-timeout); kill one that does not."""
    deadline = time.monotonic() + timeout_s
    for worker in workers:
        try:
            worker.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
