"""Results as values: one RunResult per pgbench run, summarized per cell as median and spread over repeats."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.matrix import Cell, Matrix
from bench.system import Machine
from bench.targets import TargetName


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """One pgbench run of one cell against one target. A failed run has `error` set and zeros elsewhere."""

    cell: Cell
    target: TargetName
    repeat: int  # 0-based; runs with the same repeat ran back to back, so their ratios pair up
    tps: float
    latency_ms: float
    transactions: int
    proxy_cpu_s: float | None  # CPU time of the proxy process during the run; None for direct targets
    latency_median_ms: float | None = None  # 1-client cells: from pgbench's per-transaction log
    access_log_bytes: int | None = None  # what pgwarden logged during the run: shows logging was on
    error: str | None = None

    @property
    def cpu_us_per_txn(self) -> float | None:
        if self.proxy_cpu_s is None or self.transactions <= 0:
            return None
        return self.proxy_cpu_s * 1e6 / self.transactions


@dataclass(frozen=True, slots=True, kw_only=True)
class Stat:
    """Median of the repeats and their range."""

    median: float
    low: float
    high: float
    n: int

    @property
    def spread_pct(self) -> float:
        """Half the range as a percentage of the median: all repeats lie within about ±this of it."""
        return 0.0 if self.median == 0 else (self.high - self.low) / 2 / self.median * 100


def stat_of(values: Iterable[float]) -> Stat | None:
    """A Stat of `values`, or None when there are none."""
    data = sorted(values)
    if not data:
        return None
    return Stat(median=statistics.median(data), low=data[0], high=data[-1], n=len(data))


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetSummary:
    """One target's numbers in one cell, over its successful repeats."""

    target: TargetName
    tps: Stat | None
    latency_ms: Stat | None
    cpu_us_per_txn: Stat | None
    failures: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CellSummary:
    """A row of the result table."""

    cell: Cell
    targets: dict[TargetName, TargetSummary]
    runs: tuple[RunResult, ...]

    def ratio(self, numerator: TargetName, denominator: TargetName) -> Stat | None:
        """TPS ratio over runs paired by repeat: neighbours in time share the machine's drift, so it cancels."""
        by_repeat = {(r.target, r.repeat): r.tps for r in self.runs if r.error is None and r.tps > 0}
        repeats = {r.repeat for r in self.runs}
        return stat_of(by_repeat[numerator, i] / by_repeat[denominator, i] for i in repeats
                       if (numerator, i) in by_repeat and (denominator, i) in by_repeat)

    def added_latency_us(self, target: TargetName, baseline: TargetName) -> Stat | None:
        """Latency `target` adds per statement over `baseline` (µs), paired by repeat.

        Uses the median per-transaction latency where pgbench logged one (1-client cells), else the average.
        """
        def latency(r: RunResult) -> float:
            return r.latency_median_ms if r.latency_median_ms is not None else r.latency_ms

        by_repeat = {(r.target, r.repeat): latency(r) for r in self.runs if r.error is None and r.transactions > 0}
        per_txn = self.cell.script.statements_per_txn
        return stat_of((by_repeat[target, i] - by_repeat[baseline, i]) * 1000 / per_txn
                       for i in {r.repeat for r in self.runs}
                       if (target, i) in by_repeat and (baseline, i) in by_repeat)


def summarize_cell(cell: Cell, runs: Sequence[RunResult], targets: Sequence[TargetName]) -> CellSummary:
    """Median and spread per target for one cell."""
    mine = tuple(r for r in runs if r.cell == cell)
    summaries: dict[TargetName, TargetSummary] = {}
    for target in targets:
        ok = [r for r in mine if r.target == target and r.error is None]
        summaries[target] = TargetSummary(
            target=target,
            tps=stat_of(r.tps for r in ok),
            latency_ms=stat_of(r.latency_ms for r in ok),
            cpu_us_per_txn=stat_of(v for r in ok if (v := r.cpu_us_per_txn) is not None),
            failures=sum(1 for r in mine if r.target == target and r.error is not None),
        )
    return CellSummary(cell=cell, targets=summaries, runs=mine)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """pgbench on pgwarden with and without snapshot reloads (SIGHUP, alternating two revisions) running."""

    clients: int
    duration_s: int
    reloads_sent: int
    reloads_applied: int  # "reloaded … generation N" lines pgwarden logged during the loaded runs
    tps_quiet: Stat | None
    tps_reloading: Stat | None
    ratio: Stat | None  # reloading / quiet, paired by repeat
    failed_transactions: int  # pgbench's failed transactions plus one per aborted client, reloading runs
    quiet_failed_transactions: int
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchReport:
    """Everything one bench run produced; the writers in report.py only read it."""

    machine: Machine
    matrix: Matrix
    targets: tuple[TargetName, ...]
    started_at: str  # ISO 8601, UTC
    elapsed_s: float
    runs: tuple[RunResult, ...]
    commit: str = "unknown"  # `git describe --always --dirty` of the tree that was measured
    notes: tuple[str, ...] = ()  # e.g. why a target was skipped
    reloads: ReloadResult | None = None

    @property
    def cells(self) -> list[CellSummary]:
        return [summarize_cell(cell, self.runs, self.targets) for cell in self.matrix.cells]

    @property
    def failures(self) -> int:
        return sum(1 for r in self.runs if r.error is not None)
