"""Write a BenchReport to a directory: a Markdown page, a PNG chart, and a line in the JSON history.

`--out DIR` (default docs/bench/): `<preset>.md` and `<preset>.png` hold the latest run of that preset
(quick, full or custom); `history.json` keeps every run, newest last, for comparing runs over time.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import Column, context_lines, footer_lines, reload_lines, report_to_json, rows, sections
from bench.results import BenchReport, CellSummary
from bench.system import BenchSetupError

HISTORY = "history.json"


def markdown_table(columns: Sequence[Column], cells: Sequence[CellSummary]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""
    header = "| " + " | ".join(c.header for c in columns) + " |"
    rule = "|" + "|".join(":---" if c.is_text else "---:" for c in columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in rows(columns, cells)]
    return "\n".join([header, rule, *body])


def format_markdown(report: BenchReport, chart_name: str) -> str:
    """The page committed under docs/: context, chart, one table per section, reloads, notes."""
    cells = report.cells
    lines = [f"# pgwarden bench: {report.started_at}", ""]
    lines += [f"- {line}" for line in context_lines(report)]
    lines += ["", "How to read these numbers: [docs/benchmarks.md](../benchmarks.md).", "",
              f"![TPS and latency per configuration]({chart_name})"]
    for title, columns in sections(report):
        lines += ["", f"## {title}", "", markdown_table(columns, cells)]
    if more := reload_lines(report):
        lines += ["", "## Reloads under load", "", "```", *more, "```"]
    if more := footer_lines(report):
        lines += ["", "## Notes", "", *(f"- {line}" for line in more)]
    return "\n".join(lines) + "\n"


def check_chart_support() -> None:
    """Raise BenchSetupError before any measuring when matplotlib (the `bench` extra) is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise BenchSetupError("matplotlib is not installed, so no chart can be written: "
                              'pip install -e ".[bench]" (or run with --no-out)')


def _read_history(path: Path) -> list[Any]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); move it aside to start a new history") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a JSON list of runs; move it aside to start a new history")
    return data


def publish(report: BenchReport, out: Path, preset: str) -> list[Path]:
    """Write `<preset>.md`, `<preset>.png` and append to `history.json` under `out`; return what was written.

    The history is read before anything is written, so a damaged history file changes nothing.
    """
    history_path = out / HISTORY
    history = _read_history(history_path)
    out.mkdir(parents=True, exist_ok=True)
    page, chart = out / f"{preset}.md", out / f"{preset}.png"
    from bench.chart import write_chart  # matplotlib loads only when a chart is wanted (check_chart_support)

    write_chart(report, chart)
    page.write_text(format_markdown(report, chart.name))
    history.append({"preset": preset, **report_to_json(report)})
    tmp = history_path.with_name(f".{HISTORY}.tmp")
    tmp.write_text(json.dumps(history, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(history_path)  # a crash mid-write leaves the old history, not half of it
    return [page, chart, history_path]
