"""Reloads under load: pgbench on pgwarden while SIGHUP swaps the snapshot between two real revisions.

Quiet and reloading runs alternate (quiet, reloading, quiet, …) so drift hits both alike; the ratio pairs them.
A reload re-reads the manifest directory, exactly what an operator's `kill -HUP` or a git sync does.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.matrix import Cell, Matrix, Mode, Script
from bench.pgbench import PgbenchFailed, PgbenchSummary, run_pgbench
from bench.results import ReloadResult, stat_of
from bench.system import Binaries
from bench.targets import Target

_APPLIED = re.compile(r"reloaded .*: generation \d+")
_FAILED_RELOAD = re.compile(r"reload of .* failed")
# Revision B adds a Group and a second Service next to revision A's: a real change the reconciler must build,
# diff and swap, that leaves the measured session's own Service and User as they are.
_REVISION_B_EXTRA = """\
---
kind: Group
metadata: {name: reload-revision-b}
---
kind: Service
metadata: {name: reload-b}
spec:
  mode: POSTGRES
  config:
    upstream: {url: "postgres://127.0.0.1:1"}
    postgres: {user: nobody, database: nothing, auth: {password: {fromSecret: bench-password}}, sslMode: DISABLE}
"""


def _write_atomically(path: Path, text: str) -> None:
    """Write via a temp file and rename, so a reload never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Reloader:
    """Alternates the manifest file between two revisions and sends SIGHUP; runs in its own thread.

    Mutable: it counts what it sent and can be stopped early when pgbench ends first.
    """

    def __init__(self, pid: int, manifest: Path, *, count: int, over_s: float) -> None:
        self.pid = pid
        self.manifest = manifest
        self.revision_a = manifest.read_text()
        self.revision_b = self.revision_a + _REVISION_B_EXTRA
        self.count = count
        self.interval_s = over_s / max(count, 1)
        self.sent = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        for i in range(self.count):
            if self.stopped.wait(self.interval_s):
                break
            _write_atomically(self.manifest, self.revision_b if i % 2 == 0 else self.revision_a)
            os.kill(self.pid, signal.SIGHUP)
            self.sent += 1

    def restore(self) -> None:
        """Put revision A back (without a reload signal): the next reloading run starts from the same state."""
        _write_atomically(self.manifest, self.revision_a)


def _count(pattern: re.Pattern[str], log: Path) -> int:
    return len(pattern.findall(log.read_text(errors="replace"))) if log.exists() else 0


def _failures(summary: PgbenchSummary) -> int:
    return summary.failed + summary.aborted_clients


def _one_run(binaries: Binaries, matrix: Matrix, cell: Cell, target: Target, manifest: Path, *,
             reloads: int) -> tuple[PgbenchSummary, int]:
    """One pgbench run with `reloads` SIGHUPs spread over it (0: a quiet run); returns its summary and reloads sent.

    Reloads start a moment in and end before pgbench does, so every one lands inside the measured run.
    """
    assert target.proxy_pid is not None
    duration_s = matrix.reload_duration_s
    reloader = Reloader(target.proxy_pid, manifest, count=reloads, over_s=duration_s * 0.9)
    thread = threading.Thread(target=reloader.run, name="bench-reloader", daemon=True)
    thread.start()
    try:
        summary = run_pgbench(binaries, cell, target, duration_s=duration_s, threads=matrix.threads,
                              is_partial_ok=True)
    finally:
        reloader.stopped.set()
        thread.join()
        reloader.restore()
    return summary, reloader.sent


def run_reload_scenario(binaries: Binaries, matrix: Matrix, target: Target, manifest: Path, log: Path,
                        say: Callable[[str], None]) -> ReloadResult:
    """`matrix.reload_repeats` pairs of (quiet, reloading) runs of select-only, `matrix.reload_clients` clients.

    The pair's order alternates by repeat (quiet first, then reloading first), so a drift in one direction
    during the scenario does not favour either side of the ratio.
    """
    cell = Cell(script=Script.SELECT_ONLY, mode=Mode.SIMPLE, clients=matrix.reload_clients)
    tps: dict[tuple[bool, int], float] = {}
    failures = {False: 0, True: 0}
    sent = 0
    errors: list[str] = []
    applied_before = _count(_APPLIED, log)
    refused_before = _count(_FAILED_RELOAD, log)
    for repeat in range(matrix.reload_repeats):
        for is_reloading in (False, True) if repeat % 2 == 0 else (True, False):
            try:
                summary, count = _one_run(binaries, matrix, cell, target, manifest,
                                          reloads=matrix.reloads if is_reloading else 0)
            except PgbenchFailed as exc:
                errors.append(f"{'reloading' if is_reloading else 'quiet'} run {repeat + 1}: {exc}")
                continue
            tps[is_reloading, repeat] = summary.tps
            failures[is_reloading] += _failures(summary)
            sent += count
        say(f"  reloads repeat {repeat + 1}/{matrix.reload_repeats}: quiet {tps.get((False, repeat), 0):.0f} tps, "
            f"with {matrix.reloads} reloads {tps.get((True, repeat), 0):.0f} tps, "
            f"failed transactions so far {failures[True]}")
    time.sleep(0.5)  # the last reload's log line
    refused = _count(_FAILED_RELOAD, log) - refused_before
    if refused:
        errors.append(f"pgwarden refused {refused} reload(s); see its log")
    repeats = range(matrix.reload_repeats)
    return ReloadResult(
        clients=cell.clients, duration_s=matrix.reload_duration_s, reloads_sent=sent,
        reloads_applied=(_count(_APPLIED, log) - applied_before) // matrix.pgwarden_workers,  # each worker logs one
        tps_quiet=stat_of(tps[False, i] for i in repeats if (False, i) in tps),
        tps_reloading=stat_of(tps[True, i] for i in repeats if (True, i) in tps),
        ratio=stat_of(tps[True, i] / tps[False, i] for i in repeats if tps.get((False, i)) and (True, i) in tps),
        failed_transactions=failures[True], quiet_failed_transactions=failures[False], errors=tuple(errors),
    )
