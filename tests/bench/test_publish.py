"""The --out writers: a Markdown page with every table, a PNG chart, and a JSON history that grows by one per run.

Fed a report built from pgbench-shaped numbers (no servers): what is checked is what lands on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest

from bench.matrix import Cell, Matrix, Mode, Script
from bench.publish import HISTORY, publish
from bench.results import BenchReport, ReloadResult, RunResult, stat_of
from bench.system import Machine
from bench.targets import TargetName

CELLS = (Cell(script=Script.SELECT_ONLY, mode=Mode.PREPARED, clients=1),
         Cell(script=Script.CONNECT, mode=Mode.SIMPLE, clients=8))
# direct 0.100 ms, pgwarden 0.150 ms median per select-only transaction: pgwarden adds 50 µs per query.
LATENCY_MS = {TargetName.DIRECT: 0.100, TargetName.PGBOUNCER: 0.120, TargetName.PGWARDEN: 0.150}


def _report(*, repeats: int = 2) -> BenchReport:
    runs = tuple(
        RunResult(cell=cell, target=target, repeat=r, tps=1000.0 / latency + r, latency_ms=latency,
                  latency_median_ms=latency if cell.clients == 1 else None, transactions=5000,
                  proxy_cpu_s=None if target is TargetName.DIRECT else 0.2)
        for cell in CELLS for r in range(repeats) for target, latency in LATENCY_MS.items()
    )
    machine = Machine(cpus=2, arch="x86_64", cpu_model="Test CPU", memory_gib=4.0, kernel="6.1", python="3.11.7",
                      postgres="postgres (PostgreSQL) 15.18", pgbouncer="PgBouncer 1.18.0")
    reloads = ReloadResult(clients=8, duration_s=3, reloads_sent=20, reloads_applied=20, tps_quiet=stat_of([900.0]),
                           tps_reloading=stat_of([880.0]), ratio=stat_of([880 / 900]), failed_transactions=0,
                           quiet_failed_transactions=0)
    return BenchReport(machine=machine, matrix=Matrix(cells=CELLS, duration_s=3, repeats=repeats),
                       targets=tuple(LATENCY_MS), started_at="2026-11-29T01:00:00+00:00", elapsed_s=95.0, runs=runs,
                       commit="abc1234", notes=("pgwarden+policy skipped: policy engine not available: test",),
                       reloads=reloads)


def test_publish_writes_page_chart_and_history(tmp_path: Path) -> None:
    out = tmp_path / "bench"

    written = publish(_report(), out, "quick")

    assert sorted(p.name for p in written) == [HISTORY, "quick.md", "quick.png"]
    page = (out / "quick.md").read_text()
    assert "commit abc1234" in page and "(Test CPU), 4.0 GiB RAM" in page
    assert "![TPS and latency per configuration](quick.png)" in page
    assert "| select-only | prepared | 1 |" in page and "| connect | simple | 8 |" in page
    # pgwarden's added latency per query over direct, 1 client: 150 µs - 100 µs.
    latency_table = page.split("## latency average")[1]
    assert latency_table.splitlines()[4].endswith("| 50±0% |"), latency_table
    assert "20 reloads sent, 20 applied" in page and "failed transactions during reloads: 0" in page
    assert "- pgwarden+policy skipped: policy engine not available: test" in page
    image = matplotlib.image.imread(out / "quick.png")
    assert image.shape[0] > 400 and image.shape[1] > 600  # a real PNG, big enough to read
    (entry,) = json.loads((out / HISTORY).read_text())
    assert (entry["preset"], entry["commit"], entry["machine"]["memory_gib"]) == ("quick", "abc1234", 4.0)
    assert entry["cells"][0]["added_latency_us_per_query_vs_direct"]["pgwarden"]["median"] == pytest.approx(50)


def test_history_grows_by_one_entry_per_run(tmp_path: Path) -> None:
    publish(_report(), tmp_path, "quick")
    publish(_report(repeats=1), tmp_path, "full")

    history = json.loads((tmp_path / HISTORY).read_text())

    assert [e["preset"] for e in history] == ["quick", "full"]
    assert (tmp_path / "full.md").exists() and (tmp_path / "quick.md").exists()


def test_damaged_history_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / HISTORY).write_text('{"not": "a list"')

    with pytest.raises(ValueError, match=r"history.json is not valid JSON .*move it aside"):
        publish(_report(), tmp_path, "quick")

    assert sorted(p.name for p in tmp_path.iterdir()) == [HISTORY]
    assert (tmp_path / HISTORY).read_text() == '{"not": "a list"'
