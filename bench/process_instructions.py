"""Instructions each proxy process executes per transaction, pgwarden beside pgbouncer, under callgrind.

Wall-clock and CPU-time figures on a shared VM swing several-fold from run to run; the instructions a process
executes for the same work do not. This runs pgbouncer (client TLS) and pgwarden (client TLS, access log on;
plain and with every query authorized) under `valgrind --tool=callgrind`, drives each with the same pgbench
select-only load, and counts the proxy process's user-space instructions between two marks (zeroed before,
dumped after), so start-up and shut-down do not count. Kernel work (syscalls, TCP) is not in the count: it is
about the same per message for both proxies, which make the same number of reads and writes per query.

    python -m bench.process_instructions            # 8 clients, runs of 200 and 1,000 transactions each

It prints one line per (target, protocol mode) and the ratio to pgbouncer+tls. Instructions are not seconds
(an interpreter's instructions retire at a different rate from a C loop's), so read the ratio beside
`python -m bench`'s CPU-per-transaction column, not instead of it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cluster import BenchCluster
from bench.system import BenchSetupError, Binaries, find_binaries, give_to_postgres
from bench.targets import (
    ServerProcess,
    Target,
    TargetName,
    check_target,
    pgbouncer_target,
    pgwarden_target,
    start_pgbouncer,
    start_pgwarden,
)

_TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.MULTILINE)
_VALGRIND_START_TIMEOUT_S = 240.0  # Python's imports run ~50x slower under callgrind
MODES = ("simple", "extended", "prepared")


@dataclass(frozen=True, slots=True)
class Count:
    target: str
    mode: str
    transactions: int
    instructions: int

    @property
    def per_transaction(self) -> float:
        return self.instructions / self.transactions


def callgrind_wrapper(out_dir: Path, name: str) -> tuple[str, ...]:
    """valgrind in front of a server; its counters are zeroed before the load, so start-up does not count."""
    return ("valgrind", "--tool=callgrind", "--dump-instr=no",
            f"--callgrind-out-file={out_dir}/{name}.%p", "--trace-children=no")


def _control(*args: str, pid: int, port: int) -> None:
    """callgrind_control on a server; pokes its port until the request is served.

    valgrind serves such a request only while the process runs, and an idle server sleeps in epoll_wait: a TCP
    connect and close wakes it (a few thousand instructions, paid equally by both runs that are differenced).
    vgdb finds a process by files named for its owner, so it is asked as that user (pgbouncer runs as postgres).
    """
    owner = Path(f"/proc/{pid}").stat().st_uid
    # The server was started without USER and HOST in its environment, so valgrind named its files "by-???"
    # "on-???"; vgdb builds the name from its own environment, which therefore must lack them too.
    as_owner = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--"] if owner != os.geteuid() else []
    as_owner += ["env", "-u", "USER", "-u", "LOGNAME", "-u", "HOST"]
    control = subprocess.Popen([*as_owner, "callgrind_control", *args, str(pid)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while control.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        time.sleep(0.2)
    if control.poll() is None:
        control.kill()
    out, err = control.communicate()
    if control.returncode != 0:
        raise BenchSetupError(f"callgrind_control {' '.join(args)} {pid} failed: {err.strip() or out.strip()}")


def _latest_dump_total(out_dir: Path, name: str, pid: int, before: set[Path], *, poke: int) -> int:
    """The instruction total of the dump callgrind wrote for `pid` after `before` was listed."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        fresh = sorted(set(out_dir.glob(f"{name}.{pid}*")) - before, key=lambda p: p.stat().st_mtime)
        for dump in reversed(fresh):
            found = _TOTALS.search(dump.read_text(errors="replace"))
            if found:
                return int(found.group(1))
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", poke), timeout=1):
            pass  # the dump is written when the server next runs
        time.sleep(0.2)
    raise BenchSetupError(f"no callgrind dump for {name} (pid {pid}) in {out_dir}")


def _counted_run(binaries: Binaries, target: Target, process: ServerProcess, out_dir: Path, *, mode: str,
                 clients: int, transactions: int) -> int:
    """Zero the process's counters, run pgbench, dump, and return the instructions it executed meanwhile."""
    name = str(target.name).replace("+", "_")
    _control("--zero", pid=process.pid, port=target.port)
    argv = [binaries.pg("pgbench"), "-n", "-b", "select-only", "-M", mode, "-c", str(clients), "-j", "2",
            "-t", str(transactions), *target.connect_args(), target.dbname]
    done = subprocess.run(argv, capture_output=True, text=True, env=target.libpq_env(), timeout=1800)
    if done.returncode != 0:
        raise BenchSetupError(f"pgbench through {target.name} exited {done.returncode}: {done.stderr.strip()}")
    before = set(out_dir.glob(f"{name}.{process.pid}*"))
    _control("--dump", pid=process.pid, port=target.port)
    return _latest_dump_total(out_dir, name, process.pid, before, poke=target.port)


def count(binaries: Binaries, target: Target, process: ServerProcess, out_dir: Path, *, mode: str,
          clients: int, transactions: int) -> Count:
    """Instructions per transaction, without connection set-up: a run of T and one of 5T, differenced.

    Each pgbench client connects once (TLS handshake, login); the longer run pays that the same, so the
    difference is the work of 4T transactions per client alone."""
    check_target(binaries, target)
    # One run first, not counted: the first connections pay one-time set-up (TLS and SCRAM caches, imports).
    _counted_run(binaries, target, process, out_dir, mode=mode, clients=clients, transactions=transactions)
    short = _counted_run(binaries, target, process, out_dir, mode=mode, clients=clients, transactions=transactions)
    long = _counted_run(binaries, target, process, out_dir, mode=mode, clients=clients,
                        transactions=5 * transactions)
    return Count(str(target.name), mode, clients * 4 * transactions, long - short)


def run(*, clients: int, transactions: int, modes: tuple[str, ...], keep: Path | None = None) -> list[Count]:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise BenchSetupError("valgrind is missing; install it with: apt-get install valgrind")
    binaries = find_binaries()
    counts: list[Count] = []
    with tempfile.TemporaryDirectory(prefix="pgwarden-instr-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        out_dir = keep if keep is not None else work / "callgrind"
        out_dir.mkdir(parents=True, exist_ok=True)
        give_to_postgres(work, out_dir)  # pgbouncer runs as the postgres user and writes its dumps here
        cluster = BenchCluster(binaries, work / "pg")
        cluster.start(scale=1)
        stack.callback(cluster.stop)
        processes: list[tuple[Target, ServerProcess]] = []
        bouncer = start_pgbouncer(binaries, cluster, work / "pgbouncer", is_tls=True,
                                  wrapper=callgrind_wrapper(out_dir, "pgbouncer_tls"),
                                  start_timeout_s=_VALGRIND_START_TIMEOUT_S)
        stack.callback(bouncer.stop)
        processes.append((pgbouncer_target(bouncer, cluster, is_tls=True), bouncer))
        for is_policy, target_name in ((False, TargetName.PGWARDEN), (True, TargetName.PGWARDEN_POLICY)):
            base = work / str(target_name).replace("+", "_")
            proxy = start_pgwarden(cluster, base, is_policy=is_policy,
                                   wrapper=callgrind_wrapper(out_dir, str(target_name).replace("+", "_")),
                                   start_timeout_s=_VALGRIND_START_TIMEOUT_S)
            stack.callback(proxy.stop)
            processes.append((pgwarden_target(proxy, base, name=target_name), proxy))
        for mode in modes:
            for target, process in processes:
                result = count(binaries, target, process, out_dir, mode=mode, clients=clients,
                               transactions=transactions)
                print(f"  {result.target:<16} {mode:<9} {result.per_transaction:>10,.0f} instructions/txn",
                      file=sys.stderr, flush=True)
                counts.append(result)
    return counts


def report(counts: list[Count]) -> str:
    """A Markdown table: instructions per transaction and the ratio to pgbouncer+tls, per mode."""
    lines = ["| mode | target | instructions / txn | × pgbouncer+tls |", "|---|---|---:|---:|"]
    for mode in dict.fromkeys(c.mode for c in counts):
        row = {c.target: c for c in counts if c.mode == mode}
        base = row.get(str(TargetName.PGBOUNCER_TLS))
        for c in row.values():
            ratio = f"{c.per_transaction / base.per_transaction:.2f}" if base else "—"
            lines.append(f"| {mode} | {c.target} | {c.per_transaction:,.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.process_instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients (default 8)")
    parser.add_argument("--transactions", type=int, default=200,
                        help="transactions per client of the short run; the long run has 5x (default 200)")
    parser.add_argument("--modes", default=",".join(MODES), help="pgbench -M modes, comma-separated")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the callgrind dumps in DIR (read them with callgrind_annotate; the last dump of "
                             "each process is the long run)")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    if not set(modes) <= set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    try:
        counts = run(clients=args.clients, transactions=args.transactions, modes=modes,
                     keep=args.keep.resolve() if args.keep else None)
    except BenchSetupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(report(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
