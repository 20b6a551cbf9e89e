"""Run pgbench for one cell against one target, and read its summary (transactions, TPS, latency)."""

from __future__ import annotations

import dataclasses
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.matrix import Cell
from bench.system import Binaries
from bench.targets import Target

# pgbench 15's summary lines; see "Output" in the pgbench documentation.
_TRANSACTIONS = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
# With -C pgbench says "(including reconnection times)": then TPS is the connection set-up rate.
_TPS = re.compile(r"^tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)",
                  re.MULTILINE)
_ABORTED = re.compile(r"^client \d+ aborted", re.MULTILINE)
# A per-transaction log (-l) costs pgbench a line per transaction: only 1-client cells keep one, for the
# median latency (the "added latency per query" goal is a median; pgbench prints only the mean).
_LOG_MAX_CLIENTS = 1
_GRACE_S = 60  # pgbench -T stops on its own; this only bounds a hung run


class PgbenchFailed(RuntimeError):
    """pgbench exited non-zero or printed no summary; the message quotes its stderr."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PgbenchSummary:
    """What we keep from pgbench's output."""

    transactions: int
    failed: int
    tps: float  # excludes connection setup: each client connects once, before the clock starts (except -C)
    latency_ms: float
    latency_median_ms: float | None = None  # from the per-transaction log, 1-client cells only
    aborted_clients: int = 0  # clients pgbench gave up on after an error (it then exits 2)


def pgbench_argv(binaries: Binaries, cell: Cell, target: Target, *, duration_s: int, threads: int,
                 log_prefix: Path | None = None) -> list[str]:
    """The same options for every target; only where it connects differs."""
    return [
        binaries.pg("pgbench"),
        "-n",  # no vacuum through the target; BenchCluster.reset_for_writes does it directly for all alike
        "-b", cell.script.builtin,
        "-M", str(cell.mode),
        "-c", str(cell.clients),
        "-j", str(min(threads, cell.clients)),
        "-T", str(duration_s),
        *(["-C"] if cell.script.is_reconnecting else []),
        *(["-l", f"--log-prefix={log_prefix}"] if log_prefix is not None else []),
        *target.connect_args(),
        target.dbname,
    ]


def median_latency_ms(log_dir: Path) -> float | None:
    """The median of the per-transaction latencies in pgbench's -l files (field 3 is the latency in µs)."""
    latencies: list[int] = []
    for path in log_dir.iterdir():
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():  # "skipped" and "failed" lines are not latencies
                latencies.append(int(fields[2]))
    return statistics.median(latencies) / 1000 if latencies else None


def _find(pattern: re.Pattern[str], stdout: str, what: str) -> str:
    match = pattern.search(stdout)
    if match is None:
        raise PgbenchFailed(f"pgbench printed no {what} line")
    return match.group(1)


def parse_summary(stdout: str, stderr: str = "") -> PgbenchSummary:
    """Read pgbench's summary; raise PgbenchFailed when a line is missing."""
    failed = _FAILED.search(stdout)  # absent before pgbench 15
    return PgbenchSummary(
        transactions=int(_find(_TRANSACTIONS, stdout, "transactions processed")),
        failed=int(failed.group(1)) if failed else 0,
        tps=float(_find(_TPS, stdout, "tps")),
        latency_ms=float(_find(_LATENCY, stdout, "latency average")),
        aborted_clients=len(_ABORTED.findall(stderr)),
    )


def run_pgbench(binaries: Binaries, cell: Cell, target: Target, *, duration_s: int, threads: int,
                is_partial_ok: bool = False) -> PgbenchSummary:
    """Run pgbench to completion (about `duration_s`) and return its summary; raise PgbenchFailed.

    With `is_partial_ok`, a run where some clients aborted (exit 2, summary printed) still returns its summary,
    with `aborted_clients` set: the reload scenario counts those as failures instead of losing the run.
    """
    with tempfile.TemporaryDirectory(prefix="pgbench-log-") as log_dir:
        log_prefix = Path(log_dir) / "txn" if cell.clients <= _LOG_MAX_CLIENTS else None
        argv = pgbench_argv(binaries, cell, target, duration_s=duration_s, threads=threads, log_prefix=log_prefix)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, env=target.libpq_env(),
                                  timeout=duration_s + _GRACE_S)
        except subprocess.TimeoutExpired as exc:
            raise PgbenchFailed(f"pgbench did not finish within {duration_s + _GRACE_S} s") from exc
        is_partial = is_partial_ok and done.returncode == 2 and _TPS.search(done.stdout) is not None
        if done.returncode != 0 and not is_partial:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise PgbenchFailed(f"pgbench exited {done.returncode}: {tail}")
        summary = parse_summary(done.stdout, done.stderr)
        if log_prefix is not None:
            summary = dataclasses.replace(summary, latency_median_ms=median_latency_ms(Path(log_dir)))
        return summary
