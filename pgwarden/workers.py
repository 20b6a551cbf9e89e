"""`pgwarden proxy --workers N`: N worker processes, each with its own uvloop and ProxyServer, on one port.

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

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from identity.store.base import utc_now
from pgwarden.datadir import ADMIN_SOCKET
from pgwarden.output import error
from pgwarden.runtime import ProxyOptions
from proxy.metrics import ProxyMetrics
from proxy.registry import RegisteredSession, SessionRegistry
from proxy.server import ProxyServer

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


def parse_slot(text: str) -> WorkerSlot:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"invalid worker slot {text!r}: use INDEX/COUNT, e.g. 1/4")
    return WorkerSlot(index=int(index), count=int(count))


MAX_WORKERS = 64


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity, so a container's or taskset's limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _workers(text: str) -> int:
    """`--workers`: a count from 1 to 64, or `auto` for one per available core (at most 64)."""
    if text.strip().lower() == "auto":
        return max(1, min(cores_available(), MAX_WORKERS))
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}: use 1 to {MAX_WORKERS}, or auto")
    return int(text)


def add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=_workers, default=1, metavar="N|auto",
                   help="worker processes sharing the listening port via SO_REUSEPORT; auto starts one per "
                        "core this process may use (the production setting: one process relays on one core). "
                        "Default 1, e.g. --workers auto; SIGHUP reloads all of them")
    p.add_argument("--worker-slot", type=parse_slot, default=None, help=argparse.SUPPRESS)  # set by the parent


def is_parent(args: argparse.Namespace) -> bool:
    return args.workers > 1 and args.worker_slot is None


def cancel_socket(data_dir: Path, index: int) -> Path:
    return data_dir / f"cancel-{index}.sock"


def admin_socket_for(slot: WorkerSlot | None, admin_socket: Path) -> Path:
    """Worker 0 keeps the admin socket (so `pgwarden token issue` finds it); worker k gets `NAME-k.sock`."""
    if slot is None or slot.index == 0:
        return admin_socket
    return admin_socket.with_name(f"{admin_socket.stem}-{slot.index}{admin_socket.suffix}")


class WorkerRegistry(SessionRegistry):
    """A worker's sessions: cancel keys name the worker, and a cancel for a sibling's session is forwarded to it."""

    def __init__(self, metrics: ProxyMetrics, *, slot: WorkerSlot, data_dir: Path) -> None:
        super().__init__(metrics)
        self.slot = slot
        self.data_dir = data_dir

    def register(self, session: RegisteredSession, user: str, generation: int) -> tuple[int, int]:
        process_id, secret_key = super().register(session, user, generation)
        by_key = self.by_cancel_key  # re-filed under a key that names this worker
        tagged = self.slot.tag(secret_key)
        while tagged != secret_key and (process_id, tagged) in by_key:
            tagged = self.slot.tag(secrets.randbits(32) - 2**31)
        by_key[(process_id, tagged)] = by_key.pop((process_id, secret_key))
        return process_id, tagged

    async def cancel(self, process_id: int, secret_key: int) -> None:
        owner = self.slot.owner_of(secret_key)
        if owner == self.slot.index:
            await super().cancel(process_id, secret_key)
            return
        # Like PostgreSQL, a cancel gets no reply: a vanished owner is logged, never reported to the sender.
        try:
            _, writer = await asyncio.open_unix_connection(str(cancel_socket(self.data_dir, owner)))
            writer.write(_CANCEL.pack(process_id, secret_key))
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            log.info("worker %d: forwarded a cancel request to worker %d", self.slot.index, owner)
        except OSError as exc:
            log.warning("worker %d: could not forward a cancel request to worker %d: %s", self.slot.index, owner, exc)


class WorkerServer(ProxyServer):
    """A ProxyServer that shares its port and routes cancel requests to the worker owning the session."""

    def __init__(self, *, slot: WorkerSlot, data_dir: Path, **kwargs: Any) -> None:
        super().__init__(registry_factory=functools.partial(WorkerRegistry, slot=slot, data_dir=data_dir), **kwargs)
        self.grant_timer = None  # the parent re-evaluates grant windows and pushes the result to every worker
        self.slot = slot
        self.data_dir = data_dir
        self._cancel_server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        path = cancel_socket(self.data_dir, self.slot.index)
        path.unlink(missing_ok=True)  # left by a worker that was killed
        self._cancel_server = await asyncio.get_running_loop().create_unix_server(
            lambda: _CancelInbox(self), str(path))
        path.chmod(0o600)
        return await super().start(host, port, reuse_port=True)

    async def close(self) -> None:
        if self._cancel_server is not None:
            self._cancel_server.close()
            cancel_socket(self.data_dir, self.slot.index).unlink(missing_ok=True)
        await super().close()

    async def recheck_identity_sessions(self) -> int:
        """One pass of the 30 s identity re-check, now: `pgwarden up --workers N` asks for it (SIGUSR1) after a
        revocation, because the SQLite store's notices do not cross processes. Returns connections ended."""
        ended, now = 0, utc_now()
        for sid in self.registry.identity_session_ids():
            session = await self.identity.store.get_session(sid)
            if session is None or not session.is_active(now):
                state = "gone" if session is None else session.state(now).lower()
                ended += await self.revoke_identity_sessions([sid], reason=f"session {sid} is {state}")
        return ended


class _CancelInbox(asyncio.Protocol):
    """Receives (pid, key) pairs forwarded by sibling workers; one pair per connection."""

    def __init__(self, server: WorkerServer) -> None:
        self.server = server
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= _CANCEL.size:
            process_id, secret_key = _CANCEL.unpack_from(self.buffer)
            self.buffer = b""
            if self.server.slot.owner_of(secret_key) == self.server.slot.index:  # never bounce it on
                self.server.start_cancel(process_id, secret_key)  # keeps a reference to its task


def worker_setup(options: ProxyOptions, slot: WorkerSlot | None) -> tuple[ProxyOptions, Callable[..., ProxyServer]]:
    """Options and server class for this process: unchanged unless it is a worker."""
    if slot is None:
        return options, ProxyServer
    admin = admin_socket_for(slot, options.admin_socket or options.data_dir / ADMIN_SOCKET)
    return (dataclasses.replace(options, admin_socket=admin),
            functools.partial(WorkerServer, slot=slot, data_dir=options.data_dir))


def announce_ready(ready_line: str, *, is_to_stderr: bool) -> None:
    """A worker tells its parent through the inherited pipe; a lone process prints the ready line."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        print(ready_line, file=sys.stderr if is_to_stderr else sys.stdout, flush=True)
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(ready_line + "\n")


# --- the parent ---------------------------------------------------------------------------------------------

def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: the workers can share the port, and port 0 becomes a fixed one."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def _spawn(index: int, count: int, host: str, port: int,
           extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """Start `pgwarden` with this process's arguments, then `extra` and the shared port and slot (later wins)."""
    read_fd, write_fd = os.pipe()
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [sys.executable, "-m", "pgwarden", *sys.argv[1:], *extra, "--listen", listen,
            "--worker-slot", f"{index}/{count}"]
    popen = subprocess.Popen(argv, pass_fds=(write_fd,), env={**os.environ, READY_FD_ENV: str(write_fd)})
    os.close(write_fd)
    return popen, read_fd


def _await_ready(popen: subprocess.Popen[bytes], read_fd: int, index: int) -> str:
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


def run_workers(args: argparse.Namespace, ready_to_stderr: bool) -> int:
    """Start `args.workers` workers, print one ready line, forward SIGHUP, stop them all on SIGINT/SIGTERM."""
    host, port = args.listen
    count = args.workers
    try:
        reservation = _reserve_port(host, port)
    except OSError as exc:
        error(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="pick another address with --listen")
        return 2
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
        first, fd = _spawn(0, count, host, port)
        workers.append(first)
        line = _await_ready(first, fd, 0)  # worker 0 creates the data directory's keys; the rest reuse them
        rest = [_spawn(i, count, host, port) for i in range(1, count)]
        workers += [popen for popen, _ in rest]
        for i, (popen, fd) in enumerate(rest, 1):
            _await_ready(popen, fd, i)
    except RuntimeError as exc:
        error(str(exc), hint="run without --workers to see the single-process error")
        forward(signal.SIGTERM, None)
        _wait_all(workers)
        return 1
    pids = ", ".join(str(w.pid) for w in workers)
    print(f"{line.split(', generation')[0]}, {count} workers (pids {pids})",
          file=sys.stderr if ready_to_stderr else sys.stdout, flush=True)
    while not stopping:
        if any(w.poll() is not None for w in workers):
            dead = next(i for i, w in enumerate(workers) if w.poll() is not None)
            if not stopping:
                error(f"worker {dead} exited with {workers[dead].returncode}; stopping the others")
                forward(signal.SIGTERM, None)
                _wait_all(workers)
                return 1
        time.sleep(0.2)
    _wait_all(workers)
    reservation.close()
    return 0


def _wait_all(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
