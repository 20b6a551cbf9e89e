"""Run pgbench for one cell against one target, and read its summary (transactions, TPS, latency)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from bench.matrix import Cell
from bench.system import Binaries
from bench.targets import Target

# pgbench 15's summary lines; see "Output" in the pgbench documentation.
_TRANSACTIONS = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([\d.]+) ms", re.MULTILINE)
_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.MULTILINE)
_GRACE_S = 60  # pgbench -T stops on its own; this only bounds a hung run


class PgbenchFailed(RuntimeError):
    """pgbench exited non-zero or printed no summary; the message quotes its stderr."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PgbenchSummary:
    """What we keep from pgbench's output."""

    transactions: int
    failed: int
    tps: float  # excludes connection setup: each client connects once, before the clock starts
    latency_ms: float


def pgbench_argv(binaries: Binaries, cell: Cell, target: Target, *, duration_s: int, threads: int) -> list[str]:
    """The same options for every target; only where it connects differs."""
    return [
        binaries.pg("pgbench"),
        "-n",  # no vacuum through the target; BenchCluster.reset_for_writes does it directly for all alike
        "-b", cell.script.builtin,
        "-M", str(cell.mode),
        "-c", str(cell.clients),
        "-j", str(min(threads, cell.clients)),
        "-T", str(duration_s),
        *target.connect_args(),
        target.dbname,
    ]


def _find(pattern: re.Pattern[str], stdout: str, what: str) -> str:
    match = pattern.search(stdout)
    if match is None:
        raise PgbenchFailed(f"pgbench printed no {what} line")
    return match.group(1)


def parse_summary(stdout: str) -> PgbenchSummary:
    """Read pgbench's summary; raise PgbenchFailed when a line is missing."""
    failed = _FAILED.search(stdout)  # absent before pgbench 15
    return PgbenchSummary(
        transactions=int(_find(_TRANSACTIONS, stdout, "transactions processed")),
        failed=int(failed.group(1)) if failed else 0,
        tps=float(_find(_TPS, stdout, "tps")),
        latency_ms=float(_find(_LATENCY, stdout, "latency average")),
    )


def run_pgbench(binaries: Binaries, cell: Cell, target: Target, *, duration_s: int, threads: int) -> PgbenchSummary:
    """Run pgbench to completion (about `duration_s`) and return its summary; raise PgbenchFailed."""
    argv = pgbench_argv(binaries, cell, target, duration_s=duration_s, threads=threads)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=target.libpq_env(),
                              timeout=duration_s + _GRACE_S)
    except subprocess.TimeoutExpired as exc:
        raise PgbenchFailed(f"pgbench did not finish within {duration_s + _GRACE_S} s") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise PgbenchFailed(f"pgbench exited {done.returncode}: {tail}")
    return parse_summary(done.stdout)
