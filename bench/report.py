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

SUBJECT = TargetName.PGWARDEN
_SHORT = {TargetName.PGWARDEN: "pgw", TargetName.PGBOUNCER: "pgb", TargetName.PGBOUNCER_TLS: "pgb+tls",
          TargetName.DIRECT: "direct", TargetName.DIRECT_TLS: "direct+tls"}
_PROXIES = (TargetName.PGWARDEN, TargetName.PGBOUNCER, TargetName.PGBOUNCER_TLS)
_RATIO_ORDER = (TargetName.PGBOUNCER, TargetName.PGBOUNCER_TLS, TargetName.DIRECT, TargetName.DIRECT_TLS)


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


def _ratio_column(other: TargetName) -> Column:
    return Column(f"{_SHORT[SUBJECT]}/{_SHORT[other]}", lambda c: format_stat(c.ratio(SUBJECT, other), digits=2))


def _cpu_column(target: TargetName) -> Column:
    def render(c: CellSummary) -> str:
        return format_stat(c.targets[target].cpu_us_per_txn, digits=1)
    return Column(f"{_SHORT[target]} µs cpu/txn", render)


def result_columns(targets: Sequence[TargetName]) -> list[Column]:
    """TPS per target, pgwarden's TPS ratios to the others, and each proxy's CPU µs per transaction."""
    columns = _key_columns() + [_target_column(t, "tps", 0) for t in targets]
    if SUBJECT in targets:
        columns += [_ratio_column(t) for t in _RATIO_ORDER if t in targets]
    columns += [_cpu_column(t) for t in _PROXIES if t in targets]
    return columns


def latency_columns(targets: Sequence[TargetName]) -> list[Column]:
    """Average latency (ms) per target."""
    return _key_columns() + [_target_column(t, "latency_ms", 3) for t in targets]


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


def format_report(report: BenchReport) -> str:
    """The text printed at the end of a run: context, the result table, the latency table, a legend."""
    m = report.matrix
    cells = report.cells
    repeats = f"median of {m.repeats} runs ±half their range" if m.repeats > 1 else "1 run, no spread"
    lines = [
        f"pgwarden bench, {report.started_at}, took {report.elapsed_s / 60:.1f} min",
        f"machine: {report.machine.describe()}",
        f"pgbench -j {m.threads}, -T {m.duration_s}, scale {m.scale}; runs interleaved across targets; {repeats}",
        "",
        "TPS (transactions per second), pgwarden's TPS ratios, proxy CPU per transaction:",
        format_table(result_columns(report.targets), cells),
        "",
        "latency average (ms):",
        format_table(latency_columns(report.targets), cells),
    ]
    if report.failures:
        lines += ["", f"{report.failures} run(s) failed: FAIL = every repeat failed, * = some did; "
                      "the progress lines and --json say why"]
    return "\n".join(lines)


def report_to_json(report: BenchReport) -> dict[str, Any]:
    """Every run, plus the per-cell summaries and ratios the table shows, as plain JSON values."""
    cells = []
    for cell in report.cells:
        ratios = {f"{SUBJECT}/{other}": cell.ratio(SUBJECT, other) for other in _RATIO_ORDER
                  if SUBJECT in report.targets and other in report.targets}
        cells.append({
            **dataclasses.asdict(cell.cell),
            "targets": {str(name): dataclasses.asdict(s) for name, s in cell.targets.items()},
            "ratios": {k: dataclasses.asdict(v) if v else None for k, v in ratios.items()},
        })
    return {
        "schema": 1,
        "started_at": report.started_at,
        "elapsed_s": round(report.elapsed_s, 1),
        "machine": dataclasses.asdict(report.machine),
        "matrix": dataclasses.asdict(report.matrix),
        "targets": [str(t) for t in report.targets],
        "runs": [{**dataclasses.asdict(r), "cpu_us_per_txn": r.cpu_us_per_txn} for r in report.runs],
        "cells": cells,
    }


def write_json(report: BenchReport, path: Path) -> None:
    path.write_text(json.dumps(report_to_json(report), indent=2, ensure_ascii=False) + "\n")
