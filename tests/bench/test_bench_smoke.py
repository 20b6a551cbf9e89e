"""The bench's own machinery runs end to end on a tiny matrix and yields a row with TPS for every target.

No timing assertions: timing goals belong in the bench's output, never in tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import targets
from bench.matrix import Matrix, Mode, Script, build_cells
from bench.pgbench import parse_summary
from bench.report import format_report, report_to_json
from bench.run import run_bench
from bench.system import find_binaries
from bench.targets import TargetName

# 1 client in prepared mode exercises the per-transaction log (median latency); `connect` pgbench -C; and a
# few reloads under load, where no transaction may fail.
TINY = Matrix(cells=build_cells([Script.SELECT_ONLY], [Mode.PREPARED], [1]) + build_cells([Script.CONNECT],
                                                                                            [Mode.SIMPLE], [2]),
              duration_s=2, repeats=1, scale=1, warmup_s=0, reloads=4, reload_duration_s=2, reload_repeats=1)

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
    assert report.targets == tuple(TargetName), report.notes  # pgwarden+policy too: the policy engine is in-tree
    for cell in report.cells:
        for target in TargetName:
            tps = cell.targets[target].tps
            assert tps is not None and tps.median > 0, (cell.cell.label, target)
        for proxy in (TargetName.PGBOUNCER, TargetName.PGBOUNCER_TLS, TargetName.PGWARDEN,
                      TargetName.PGWARDEN_POLICY):
            assert cell.targets[proxy].cpu_us_per_txn is not None, proxy
    steady, _connect = report.cells
    assert all(run.latency_median_ms for run in steady.runs), "1-client runs read pgbench's per-transaction log"
    assert steady.added_latency_us(TargetName.PGWARDEN, TargetName.DIRECT) is not None
    warden_runs = [run for run in report.runs if run.target == TargetName.PGWARDEN]
    assert all(run.access_log_bytes for run in warden_runs), "pgwarden was measured with its access log on"
    text = format_report(report)
    assert all(f"{target} " in text for target in TargetName)
    assert json.loads(json.dumps(report_to_json(report)))["cells"][0]["clients"] == 1
    reloads = report.reloads
    assert reloads is not None and reloads.errors == (), reloads
    assert reloads.reloads_sent == reloads.reloads_applied == 4, reloads
    assert reloads.failed_transactions == 0 and reloads.tps_reloading is not None, reloads
    # Teardown removed the work dir it announced.
    (removed,) = (m.group(1) for line in progress if (m := re.search(r"removing (\S+)", line)))
    assert not Path(removed).exists()


def test_refused_policy_manifests_skip_the_policy_target_with_the_reason(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # What a build without the policy engine does: validation rejects the Policy document and pgwarden exits.
    refused = targets._POLICY_MANIFESTS.replace("effect: DENY", "effect: MAYBE")
    monkeypatch.setattr(targets, "_POLICY_MANIFESTS", refused)
    cluster = SimpleNamespace(host="127.0.0.1", port=1, user="bench", database="bench", password="not-used")

    with pytest.raises(targets.PolicyUnavailable) as caught:
        targets.start_pgwarden(cluster, tmp_path / "pgwarden-policy", is_policy=True)  # type: ignore[arg-type]

    message = str(caught.value)
    assert message.startswith("policy engine not available: ")
    assert "bench.yaml, document 2, spec.rules[0].effect" in message, message  # pgwarden's words, naming the place
