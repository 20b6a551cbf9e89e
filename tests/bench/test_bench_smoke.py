"""The bench's own machinery runs end to end on a tiny matrix and yields a row with TPS for every target.

No timing assertions: timing goals belong in the bench's output, never in tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.matrix import Matrix, Mode, Script, build_cells
from bench.pgbench import parse_summary
from bench.report import format_report, report_to_json
from bench.run import run_bench
from bench.system import find_binaries
from bench.targets import TargetName

TINY = Matrix(cells=build_cells([Script.SELECT_ONLY], [Mode.SIMPLE], [1]), duration_s=2, repeats=1, scale=1,
              warmup_s=0)

PGBENCH_15_OUTPUT = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: simple
number of clients: 1
number of threads: 1
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 8028
number of failed transactions: 0 (0.000%)
latency average = 0.249 ms
initial connection time = 9.810 ms
tps = 4023.957282 (without initial connection time)
"""


def test_parse_summary_reads_pgbench_15() -> None:
    summary = parse_summary(PGBENCH_15_OUTPUT)
    assert (summary.transactions, summary.failed, summary.tps, summary.latency_ms) == (8028, 0, 4023.957282, 0.249)


@pytest.mark.slow
def test_every_target_yields_a_row_with_tps() -> None:
    binaries = find_binaries()  # .ci/run installs postgresql and pgbouncer; missing ones must fail loudly
    progress: list[str] = []

    report = run_bench(TINY, binaries, progress.append)

    assert report.failures == 0, [run.error for run in report.runs]
    assert report.targets == tuple(TargetName)
    (cell,) = report.cells
    for target in TargetName:
        tps = cell.targets[target].tps
        assert tps is not None and tps.median > 0, target
    for proxy in (TargetName.PGBOUNCER, TargetName.PGBOUNCER_TLS, TargetName.PGWARDEN):
        assert cell.targets[proxy].cpu_us_per_txn is not None, proxy
    (warden_run,) = (run for run in report.runs if run.target == TargetName.PGWARDEN)
    assert warden_run.access_log_bytes, "pgwarden was measured with its access log on"
    assert all(f"{target} " in format_report(report) for target in TargetName)
    assert json.loads(json.dumps(report_to_json(report)))["cells"][0]["clients"] == 1
    # Teardown removed the work dir it announced.
    (removed,) = (m.group(1) for line in progress if (m := re.search(r"removing (\S+)", line)))
    assert not Path(removed).exists()
