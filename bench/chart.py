"""The bench's PNG chart: TPS and average latency per configuration (cell) and target, as grouped bars.

matplotlib with the Agg backend (no display needed); error bars span the lowest to highest repeat.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: the bench runs on headless machines

import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice
from matplotlib.axes import Axes  # noqa: E402

from bench.results import BenchReport, CellSummary, Stat  # noqa: E402
from bench.targets import TargetName  # noqa: E402

# One colour per target, stable across runs so charts compare at a glance.
_COLOURS = {"direct": "#4c72b0", "direct+tls": "#8da0cb", "pgbouncer": "#dd8452", "pgbouncer+tls": "#f2b880",
            "pgwarden": "#55a868", "pgwarden-workers": "#9bd3a8", "pgwarden+policy": "#2f6b3f"}


def _bars(stats: list[Stat | None]) -> tuple[list[float], list[list[float]]]:
    """Heights (medians) and asymmetric error bars (median-low, high-median); zero where a target failed."""
    heights = [s.median if s else 0.0 for s in stats]
    errors = [[s.median - s.low if s else 0.0 for s in stats], [s.high - s.median if s else 0.0 for s in stats]]
    return heights, errors


def _draw(tps_ax: Axes, lat_ax: Axes, cells: Sequence[CellSummary], targets: Sequence[TargetName],
          *, is_spread: bool) -> None:
    """One bar group per cell on both axes, one bar per target."""
    width = 0.8 / max(len(targets), 1)
    positions = range(len(cells))
    for index, target in enumerate(targets):
        xs = [p + (index - (len(targets) - 1) / 2) * width for p in positions]
        colour = _COLOURS.get(str(target))
        for ax, metric in ((tps_ax, "tps"), (lat_ax, "latency_ms")):
            heights, errors = _bars([getattr(c.targets[target], metric) for c in cells])
            ax.bar(xs, heights, width, yerr=errors if is_spread else None, label=str(target), color=colour,
                   capsize=2)
    lat_ax.set_xticks(list(positions), [c.cell.label for c in cells], rotation=30, ha="right")
    for ax in (tps_ax, lat_ax):
        ax.grid(axis="y", alpha=0.3)


def write_chart(report: BenchReport, path: Path) -> None:
    """TPS above, average latency below; steady-state cells on the left, `connect` cells (own scale) right."""
    cells = report.cells
    groups = [[c for c in cells if not c.cell.script.is_reconnecting],
              [c for c in cells if c.cell.script.is_reconnecting]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(2, len(groups), figsize=(max(8.0, 1.0 * len(cells) + 4), 9), squeeze=False,
                             sharex="col", gridspec_kw={"width_ratios": [max(len(g), 1.5) for g in groups]})
    try:
        for column, group in enumerate(groups):
            tps_ax, lat_ax = axes[0][column], axes[1][column]
            _draw(tps_ax, lat_ax, group, report.targets, is_spread=report.matrix.repeats > 1)
            is_connect = group[0].cell.script.is_reconnecting
            tps_ax.set_ylabel("new connections / s" if is_connect else "transactions / s")
            lat_ax.set_ylabel("connect + query (ms)" if is_connect else "average latency (ms)")
        axes[0][0].legend(ncols=3, fontsize="small", loc="upper right")
        spread = f"median of {report.matrix.repeats} repeats, bars span low-high" \
            if report.matrix.repeats > 1 else "1 repeat"
        machine = textwrap.fill(report.machine.describe(), 110)
        fig.suptitle(f"pgwarden bench {report.started_at} ({report.commit}), {spread}\n{machine}", fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
