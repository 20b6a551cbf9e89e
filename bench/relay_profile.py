"""A/B the relay's CPU cost: pgbench against pgwarden started from two source trees, interleaved.

The full bench compares pgwarden with pgbouncer; this script answers a narrower question while working on the
relay: did a change cut pgwarden's CPU µs per transaction? It starts one PostgreSQL, pgbouncer with client
TLS (the yardstick), and one pgwarden per `--tree` (e.g. an unpacked `git archive HEAD` and the working tree),
then runs the same pgbench cell against each in turn, `--rounds` times, so machine noise hits all alike.
With `--py-spy DIR` it also records a py-spy flame graph of each pgwarden during its last run.

    python -m bench.relay_profile --tree /tmp/before --tree . --rounds 5 --duration 5
    python -m bench.relay_profile --tree . --policy --mode extended --py-spy /tmp/prof
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import targets as bench_targets
from bench.cluster import BenchCluster
from bench.matrix import Cell, Mode, Script
from bench.pgbench import PgbenchSummary, run_pgbench
from bench.system import CLOCK_TICKS_PER_S, find_binaries


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of `pid`: the kernel's share is mostly socket writes and wake-ups."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / CLOCK_TICKS_PER_S, int(fields[12]) / CLOCK_TICKS_PER_S


def _start_from(tree: Path, cluster: BenchCluster, base: Path, *, is_policy: bool) -> tuple[
        bench_targets.ServerProcess, bench_targets.Target]:
    """pgwarden as bench/targets.py starts it, but run with `tree` as the working directory (so its code)."""
    saved = bench_targets.REPO_ROOT
    bench_targets.REPO_ROOT = tree
    try:
        process = bench_targets.start_pgwarden(cluster, base, is_policy=is_policy)
        target = bench_targets.pgwarden_target(process, base)
    finally:
        bench_targets.REPO_ROOT = saved
    return process, target


def _run(binaries: object, cell: Cell, target: bench_targets.Target, duration: int,
         profile: Path | None = None) -> tuple[PgbenchSummary, tuple[float, float] | None]:
    pid = target.proxy_pid
    before = _cpu_split(pid) if pid else None
    spy = None
    if profile is not None and pid:
        spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(duration), "-r", "250", "--native",
                                "-f", "raw", "-o", str(profile)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = run_pgbench(binaries, cell, target, duration_s=duration, threads=2)  # type: ignore[arg-type]
    if spy is not None:
        spy.wait(60)
    cpu = None
    if pid and before is not None:
        after = _cpu_split(pid)
        cpu = (after[0] - before[0], after[1] - before[1])
    if target.access_log is not None and target.access_log.exists():
        target.access_log.write_bytes(b"")
    return summary, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", type=Path, required=True,
                        help="a source tree to run pgwarden from (repeat to compare), e.g. --tree /tmp/before")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per pgbench run (default 5)")
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients (default 8)")
    parser.add_argument("--mode", default="simple", help="pgbench -M: simple, extended or prepared")
    parser.add_argument("--script", default="select-only", help="select-only, tpcb or connect (pgbench -C)")
    parser.add_argument("--policy", action="store_true", help="authorization mode ALL (bench's read-only Policy)")
    parser.add_argument("--no-pgbouncer", action="store_true", help="skip the pgbouncer+tls yardstick")
    parser.add_argument("--py-spy", type=Path,
                        help="write py-spy collapsed stacks (flamegraph.pl input) per tree here (last round)")
    args = parser.parse_args()
    binaries = find_binaries()
    cell = Cell(script=Script(args.script), mode=Mode(args.mode), clients=args.clients)
    work = Path(tempfile.mkdtemp(prefix="relay-profile-"))
    bench_targets.give_to_postgres(work)
    stack = contextlib.ExitStack()
    try:
        cluster = BenchCluster(binaries, work / "pg")
        cluster.start(scale=1)
        stack.callback(cluster.stop)
        runs: list[tuple[str, bench_targets.Target]] = []
        if not args.no_pgbouncer:
            bouncer = bench_targets.start_pgbouncer(binaries, cluster, work / "pgbouncer", is_tls=True)
            stack.callback(bouncer.stop)
            runs.append(("pgbouncer+tls", bench_targets.pgbouncer_target(bouncer, cluster, is_tls=True)))
        for index, tree in enumerate(args.tree):
            process, target = _start_from(tree.resolve(), cluster, work / f"pgwarden-{index}", is_policy=args.policy)
            stack.callback(process.stop)
            runs.append((f"{index}:{tree}", target))
        results: dict[str, list[tuple[float, float | None]]] = {name: [] for name, _ in runs}
        for round_no in range(args.rounds):
            for index, (name, target) in enumerate(runs):
                profile = None
                if args.py_spy is not None and round_no == args.rounds - 1 and target.access_log is not None:
                    args.py_spy.mkdir(parents=True, exist_ok=True)
                    profile = args.py_spy / f"tree{index}.txt"
                summary, cpu = _run(binaries, cell, target, args.duration, profile)
                us = sys_us = None
                if cpu is not None and summary.transactions:
                    us, sys_us = sum(cpu) / summary.transactions * 1e6, cpu[1] / summary.transactions * 1e6
                results[name].append((summary.tps, us))
                print(f"round {round_no + 1} {name}: {summary.tps:.0f} TPS"
                      + (f", {us:.1f} µs/txn (kernel {sys_us:.1f})" if us is not None else ""), flush=True)
                time.sleep(0.5)
        print(f"\n{cell.label}, {args.rounds} rounds of {args.duration} s, median (min-max):")
        yard = statistics.median(t for t, _ in results.get("pgbouncer+tls", [(0.0, None)])) or None
        for name, values in results.items():
            tps = [t for t, _ in values]
            cpus = [c for _, c in values if c is not None]
            line = f"  {name:40} {statistics.median(tps):8.0f} TPS ({min(tps):.0f}-{max(tps):.0f})"
            if cpus:
                line += f"  {statistics.median(cpus):6.1f} µs/txn ({min(cpus):.1f}-{max(cpus):.1f})"
            if yard:
                line += f"  {statistics.median(tps) / yard:.2f}x pgbouncer+tls"
            print(line)
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
