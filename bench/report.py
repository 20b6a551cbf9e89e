"""Writers for a BenchReport: the aligned text tables printed at the end, and JSON. They only read the report.

Columns are data (`Column`), so a Markdown or chart writer can reuse `result_columns()` and `rows()`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import BenchReport, CellSummary, Stat
from bench.targets import TargetName

# whose ratios and added latency we report
SUBJECTS = (TargetName.PGWARDEN, TargetName.PGWARDEN_WORKERS, TargetName.PGWARDEN_POLICY)
_SHORT = {TargetName.PGWARDEN: "pgw", TargetName.PGWARDEN_WORKERS: "pgw-wk", TargetName.PGWARDEN_POLICY: "pgw+pol",
          TargetName.PGBOUNCER: "pgb", TargetName.PGBOUNCER_TLS: "pgb+tls", TargetName.DIRECT: "direct",
          TargetName.DIRECT_TLS: "direct+tls"}
_PROXIES = (TargetName.PGWARDEN, TargetName.PGWARDEN_WORKERS, TargetName.PGWARDEN_POLICY, TargetName.PGBOUNCER,
            TargetName.PGBOUNCER_TLS)
_RATIO_ORDER = (TargetName.PGBOUNCER, TargetName.PGBOUNCER_TLS, TargetName.DIRECT, TargetName.DIRECT_TLS)
_LATENCY_BASELINE = TargetName.DIRECT


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its header, how to render a row, and whether it is text (left-aligned)."""

    header: str
    render: Callable[[CellSummary], str]
    is_text: bool = False


def format_stat(stat: Stat | None, *, digits: int, failures: int = 0) -> str:
    """`median±spread%` (spread only with 2+ repeats); `FAIL` when no repeat succeeded; `*` when some failed."""
    if stat is None:
        return "FAIL" if failures else "-"
    text = f"{stat.median:.{digits}f}"
    if stat.n > 1:
        text += f"±{stat.spread_pct:.0f}%"
    return text + ("*" if failures else "")


def _key_columns() -> list[Column]:
    return [Column("script", lambda c: str(c.cell.script), is_text=True),
            Column("mode", lambda c: str(c.cell.mode), is_text=True),
            Column("clients", lambda c: str(c.cell.clients))]


def _target_column(target: TargetName, metric: str, digits: int) -> Column:
    def render(c: CellSummary) -> str:
        summary = c.targets[target]
        return format_stat(getattr(summary, metric), digits=digits, failures=summary.failures)
    return Column(str(target), render)


def _ratio_column(subject: TargetName, other: TargetName) -> Column:
    return Column(f"{_SHORT[subject]}/{_SHORT[other]}", lambda c: format_stat(c.ratio(subject, other), digits=2))


def _added_latency_column(subject: TargetName) -> Column:
    def render(c: CellSummary) -> str:
        if c.cell.clients != 1:  # with more clients the difference is mostly queueing, not the proxy's hop
            return "-"
        return format_stat(c.added_latency_us(subject, _LATENCY_BASELINE), digits=0)
    return Column(f"{_SHORT[subject]} +µs/query (c1)", render)


def _cpu_column(target: TargetName) -> Column:
    def render(c: CellSummary) -> str:
        return format_stat(c.targets[target].cpu_us_per_txn, digits=1)
    return Column(f"{_SHORT[target]} µs cpu/txn", render)


def tps_columns(targets: Sequence[TargetName]) -> list[Column]:
    """TPS per target (connections per second in `connect` rows)."""
    return _key_columns() + [_target_column(t, "tps", 0) for t in targets]


def ratio_columns(targets: Sequence[TargetName]) -> list[Column]:
    """Each pgwarden flavour's TPS ratio to pgbouncer (plain and TLS) and PostgreSQL (plain and TLS)."""
    return _key_columns() + [_ratio_column(s, t) for s in SUBJECTS if s in targets
                             for t in _RATIO_ORDER if t in targets]


def cpu_columns(targets: Sequence[TargetName]) -> list[Column]:
    """Each proxy's CPU µs per transaction."""
    return _key_columns() + [_cpu_column(t) for t in _PROXIES if t in targets]


def result_columns(targets: Sequence[TargetName]) -> list[Column]:
    """TPS, ratios and CPU µs per transaction in one wide table (the Markdown writer splits them)."""
    key = len(_key_columns())
    return tps_columns(targets) + ratio_columns(targets)[key:] + cpu_columns(targets)[key:]


def latency_columns(targets: Sequence[TargetName]) -> list[Column]:
    """Average latency (ms) per target, and for 1 client the latency each pgwarden flavour adds per query."""
    return (_key_columns() + [_target_column(t, "latency_ms", 3) for t in targets]
            + [_added_latency_column(s) for s in SUBJECTS if s in targets and _LATENCY_BASELINE in targets])


def rows(columns: Sequence[Column], cells: Sequence[CellSummary]) -> list[list[str]]:
    return [[column.render(cell) for column in columns] for cell in cells]


def format_table(columns: Sequence[Column], cells: Sequence[CellSummary]) -> str:
    """Columns separated by two spaces, text left-aligned and numbers right-aligned."""
    body = rows(columns, cells)
    widths = [max(len(col.header), *(len(row[i]) for row in body)) for i, col in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if col.is_text else v.rjust(w) for v, w, col in zip(values, widths, columns, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([c.header for c in columns]), *(line(row) for row in body)])


def sections(report: BenchReport) -> list[tuple[str, list[Column]]]:
    """The result tables, titled, in print order; the text and Markdown writers both render these."""
    targets = report.targets
    tables = [("TPS (transactions per second; `connect` rows: new connections per second)", tps_columns(targets)),
              ("pgwarden's TPS ratios (paired by repeat)", ratio_columns(targets)),
              ("proxy CPU µs per transaction", cpu_columns(targets)),
              ("latency average (ms); +µs/query: latency added per statement vs direct, 1 client, median",
               latency_columns(targets))]
    return [(title, columns) for title, columns in tables if len(columns) > len(_key_columns())]


def context_lines(report: BenchReport) -> list[str]:
    """When, where and how: the lines above every table."""
    m = report.matrix
    repeats = f"median of {m.repeats} runs ±half their range" if m.repeats > 1 else "1 run, no spread"
    lines = [
        f"pgwarden bench, {report.started_at}, commit {report.commit}, took {report.elapsed_s / 60:.1f} min",
        f"machine: {report.machine.describe()}",
        f"pgbench -j {m.threads}, -T {m.duration_s}, scale {m.scale}; runs interleaved across targets; {repeats}; "
        f"pgwarden {'--workers ' + str(m.pgwarden_workers) if m.pgwarden_workers > 1 else 'single process'}",
    ]
    if TargetName.PGWARDEN_WORKERS in report.targets:
        lines.append(f"{TargetName.PGWARDEN_WORKERS} ({_SHORT[TargetName.PGWARDEN_WORKERS]}): pgwarden proxy "
                     f"--workers {m.scaling_workers}, one process per core (its CPU µs/txn is summed over the "
                     "workers); pgbouncer is single-threaded")
    return lines


def reload_lines(report: BenchReport) -> list[str]:
    """The reloads-under-load result in a few lines, or none when the scenario did not run."""
    r = report.reloads
    if r is None:
        return []
    lines = [
        f"reloads under load ({r.clients} clients, select-only, {r.duration_s} s runs, SIGHUP alternating two "
        f"revisions): {r.reloads_sent} reloads sent, {r.reloads_applied} applied",
        f"  TPS quiet {format_stat(r.tps_quiet, digits=0)}, during reloads {format_stat(r.tps_reloading, digits=0)}, "
        f"ratio {format_stat(r.ratio, digits=2)}; failed transactions during reloads: {r.failed_transactions} "
        f"(quiet runs: {r.quiet_failed_transactions})",
    ]
    return lines + [f"  error: {e}" for e in r.errors]


def footer_lines(report: BenchReport) -> list[str]:
    lines = list(report.notes)
    if report.failures:
        lines.append(f"{report.failures} run(s) failed: FAIL = every repeat failed, * = some did; "
                     "the progress lines and the JSON say why")
    return lines


def format_report(report: BenchReport) -> str:
    """The text printed at the end of a run: context, the result tables, reloads, notes."""
    cells = report.cells
    lines = context_lines(report)
    for title, columns in sections(report):
        lines += ["", title + ":", format_table(columns, cells)]
    if more := reload_lines(report):
        lines += ["", *more]
    if more := footer_lines(report):
        lines += ["", *more]
    return "\n".join(lines)


def report_to_json(report: BenchReport) -> dict[str, Any]:
    """Every run, plus the per-cell summaries and ratios the table shows, as plain JSON values."""
    cells = []
    for cell in report.cells:
        ratios = {f"{subject}/{other}": cell.ratio(subject, other) for subject in SUBJECTS for other in _RATIO_ORDER
                  if subject in report.targets and other in report.targets}
        added = {str(subject): cell.added_latency_us(subject, _LATENCY_BASELINE) for subject in SUBJECTS
                 if subject in report.targets and _LATENCY_BASELINE in report.targets}
        cells.append({
            **dataclasses.asdict(cell.cell),
            "targets": {str(name): dataclasses.asdict(s) for name, s in cell.targets.items()},
            "ratios": {k: dataclasses.asdict(v) if v else None for k, v in ratios.items()},
            "added_latency_us_per_query_vs_direct": {k: dataclasses.asdict(v) if v else None
                                                      for k, v in added.items()},
        })
    return {
        "schema": 2,
        "started_at": report.started_at,
        "commit": report.commit,
        "elapsed_s": round(report.elapsed_s, 1),
        "machine": dataclasses.asdict(report.machine),
        "matrix": dataclasses.asdict(report.matrix),
        "targets": [str(t) for t in report.targets],
        "notes": list(report.notes),
        "runs": [{**dataclasses.asdict(r), "cpu_us_per_txn": r.cpu_us_per_txn} for r in report.runs],
        "cells": cells,
        "reloads": dataclasses.asdict(report.reloads) if report.reloads else None,
    }


def write_json(report: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(report_to_json(report), indent=2, ensure_ascii=False) + "\n")
