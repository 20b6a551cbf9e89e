"""One bench run: set up PostgreSQL and the proxies, run the matrix interleaved across targets, tear down.

Interleaving (every target runs a cell's repeat before the next repeat starts) spreads the machine's drift
over all targets alike; the ratios in results.py pair runs by repeat for the same reason.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.cluster import BenchCluster
from bench.matrix import Cell, Matrix, Mode, Script
from bench.pgbench import PgbenchFailed, run_pgbench
from bench.reloads import run_reload_scenario
from bench.results import BenchReport, RunResult
from bench.system import BenchSetupError, Binaries, cpu_seconds, describe_machine, git_commit
from bench.targets import (
    PolicyUnavailable,
    ServerProcess,
    Target,
    TargetName,
    check_target,
    direct_targets,
    pgbouncer_target,
    pgwarden_target,
    start_pgbouncer,
    start_pgwarden,
)

Progress = Callable[[str], None]
# After pgbench exits, wait this long before reading the proxy's CPU time: pgwarden flushes its access log
# on a 0.2 s timer, and that write belongs to the run. Every target waits, so pacing stays the same.
SETTLE_S = 0.3


class Clock:
    """Elapsed time since the bench started, for progress lines. Mutable only through time itself."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def stamp(self) -> str:
        return f"[{self.elapsed_s:6.1f}s]"


def _start_policy_target(binaries: Binaries, matrix: Matrix, cluster: BenchCluster, work: Path,
                         stack: contextlib.ExitStack, say: Callable[[str], None], notes: list[str]) -> Target | None:
    """pgwarden with per-query policy, or None (with a note saying why) when this build cannot run it."""
    base = work / "pgwarden-policy"
    try:
        warden = start_pgwarden(cluster, base, is_policy=True, workers=matrix.pgwarden_workers)
        stack.callback(warden.stop)
        target = pgwarden_target(warden, base, name=TargetName.PGWARDEN_POLICY)
        check_target(binaries, target)
    except (PolicyUnavailable, BenchSetupError) as exc:
        notes.append(f"{TargetName.PGWARDEN_POLICY} skipped: {exc}")
        say(f"{TargetName.PGWARDEN_POLICY} skipped: {exc}")
        return None
    return target


def _start_targets(binaries: Binaries, matrix: Matrix, work: Path, stack: contextlib.ExitStack,
                   say: Callable[[str], None], notes: list[str]) -> tuple[BenchCluster, list[Target], ServerProcess]:
    cluster = BenchCluster(binaries, work / "postgres")
    stack.callback(cluster.stop)
    say(f"starting PostgreSQL and loading pgbench -i -s {matrix.scale}")
    cluster.start(scale=matrix.scale)
    targets = direct_targets(cluster)
    for is_tls in (False, True):
        bouncer = start_pgbouncer(binaries, cluster, work / f"pgbouncer{'-tls' if is_tls else ''}", is_tls=is_tls)
        stack.callback(bouncer.stop)
        targets.append(pgbouncer_target(bouncer, cluster, is_tls=is_tls))
    warden = start_pgwarden(cluster, work / "pgwarden", workers=matrix.pgwarden_workers)
    stack.callback(warden.stop)
    targets.append(pgwarden_target(warden, work / "pgwarden"))
    if matrix.scaling_workers:
        base = work / "pgwarden-workers"
        scaling = start_pgwarden(cluster, base, workers=matrix.scaling_workers, name=TargetName.PGWARDEN_WORKERS)
        stack.callback(scaling.stop)
        targets.append(pgwarden_target(scaling, base, name=TargetName.PGWARDEN_WORKERS))
    for target in targets:
        check_target(binaries, target)
    if (policy := _start_policy_target(binaries, matrix, cluster, work, stack, say, notes)) is not None:
        targets.append(policy)
    say("targets up: " + ", ".join(f"{t.name} :{t.port}" for t in targets))
    return cluster, targets, warden


def measure(binaries: Binaries, cell: Cell, target: Target, *, matrix: Matrix, repeat: int) -> RunResult:
    """Run one cell once against one target, charging the proxy's CPU time to it."""
    pids = target.cpu_pids or ((target.proxy_pid,) if target.proxy_pid else ())
    before = sum(cpu_seconds(pid) for pid in pids) if pids else None
    try:
        summary = run_pgbench(binaries, cell, target, duration_s=matrix.duration_s, threads=matrix.threads)
    except PgbenchFailed as exc:
        return RunResult(cell=cell, target=target.name, repeat=repeat, tps=0.0, latency_ms=0.0, transactions=0,
                         proxy_cpu_s=None, error=str(exc))
    finally:
        time.sleep(SETTLE_S)
    cpu_s = None
    if pids and before is not None:
        cpu_s = sum(cpu_seconds(pid) for pid in pids) - before
    log_bytes = None
    if target.access_log is not None:
        log_bytes = target.access_log.stat().st_size if target.access_log.exists() else 0
        if log_bytes:
            os.truncate(target.access_log, 0)  # pgwarden opened it O_APPEND: its next line lands at offset 0
    error = f"{summary.failed} failed transactions" if summary.failed else None
    return RunResult(cell=cell, target=target.name, repeat=repeat, tps=summary.tps, latency_ms=summary.latency_ms,
                     latency_median_ms=summary.latency_median_ms, transactions=summary.transactions,
                     proxy_cpu_s=cpu_s, access_log_bytes=log_bytes, error=error)


def _describe(result: RunResult) -> str:
    if result.error:
        return f"FAILED: {result.error}"
    cpu = f"  cpu {us:7.1f} µs/txn" if (us := result.cpu_us_per_txn) is not None else ""
    return f"{result.tps:9.0f} tps  {result.latency_ms:7.3f} ms{cpu}"


def _warm_up(binaries: Binaries, matrix: Matrix, targets: Sequence[Target], say: Callable[[str], None]) -> None:
    if matrix.warmup_s <= 0:
        return
    # The most clients any cell uses, so pgbouncer's pools hold enough server connections before the clock runs.
    cell = Cell(script=Script.SELECT_ONLY, mode=Mode.SIMPLE, clients=max(c.clients for c in matrix.cells))
    say(f"warming up each target for {matrix.warmup_s} s ({cell.label})")
    for target in targets:
        with contextlib.suppress(PgbenchFailed):  # a target that fails here fails again, recorded, below
            run_pgbench(binaries, cell, target, duration_s=matrix.warmup_s, threads=matrix.threads)


def _run_cells(binaries: Binaries, matrix: Matrix, cluster: BenchCluster, targets: Sequence[Target],
               say: Callable[[str], None]) -> list[RunResult]:
    runs: list[RunResult] = []
    total = matrix.run_count(len(targets))
    for index, cell in enumerate(matrix.cells, 1):
        say(f"cell {index}/{len(matrix.cells)}: {cell.label}, {matrix.repeats} x {matrix.duration_s} s per target")
        for repeat in range(matrix.repeats):
            for target in targets:
                if cell.script.is_writing:
                    cluster.reset_for_writes()
                result = measure(binaries, cell, target, matrix=matrix, repeat=repeat)
                runs.append(result)
                left_s = (total - len(runs)) * (matrix.duration_s + SETTLE_S)
                say(f"  {cell.label} repeat {repeat + 1}/{matrix.repeats} {target.name:<14} {_describe(result)}"
                    f"   ({len(runs)}/{total}, ~{left_s / 60:.1f} min left)")
    return runs


def run_bench(matrix: Matrix, binaries: Binaries, progress: Progress) -> BenchReport:
    """Set up, measure every cell on every target, tear everything down (also on Ctrl-C); return the report."""
    clock = Clock()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")

    def say(text: str) -> None:
        progress(f"{clock.stamp()} {text}")

    machine = describe_machine(binaries)
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        work.chmod(0o711)  # the servers run as `postgres` and must reach their own subdirectories
        notes: list[str] = []
        cluster, targets, warden = _start_targets(binaries, matrix, work, stack, say, notes)
        _warm_up(binaries, matrix, targets, say)
        runs = _run_cells(binaries, matrix, cluster, targets, say)
        reloads = None
        if matrix.reloads:
            say(f"reloads under load: {matrix.reload_repeats} x (quiet, {matrix.reloads} reloads) "
                f"x {matrix.reload_duration_s} s, {matrix.reload_clients} clients on {TargetName.PGWARDEN}")
            (subject,) = (t for t in targets if t.name == TargetName.PGWARDEN)
            reloads = run_reload_scenario(binaries, matrix, subject, work / "pgwarden" / "manifests" / "bench.yaml",
                                          warden.log_path, say)
        say("stopping servers and removing " + str(work))
    return BenchReport(machine=machine, matrix=matrix, targets=tuple(t.name for t in targets),
                       started_at=started_at, elapsed_s=clock.elapsed_s, runs=tuple(runs), commit=git_commit(),
                       notes=tuple(notes), reloads=reloads)
