"""`python -m bench`: measure pgbench against PostgreSQL, pgbouncer and pgwarden in one run, print the tables."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

from bench.matrix import FULL, QUICK, Matrix, Mode, Script, build_cells
from bench.publish import check_chart_support, publish
from bench.report import format_report, write_json
from bench.run import run_bench
from bench.system import BenchSetupError, find_binaries

T = TypeVar("T")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"

DESCRIPTION = """\
Run pgbench (select-only and TPC-B-like; simple, extended and prepared protocol; 1, 8 and 32 clients;
and `connect`, a new connection per transaction) against seven targets in one run: PostgreSQL directly
(plain and TLS), pgbouncer (plain and client TLS), pgwarden (TLS, access log on; one process, and
pgwarden-workers with --workers 2 to show how it scales with cores) and pgwarden+policy
(every query authorized against a read-only Policy; skipped with a note if this build lacks the policy
engine). Then reloads under load: pgbench on pgwarden while SIGHUP swaps two manifest revisions.
Runs are interleaved across targets; the tables show the median of the repeats with their spread,
pgwarden's TPS ratios, the latency it adds per query, and each proxy's CPU µs per transaction.
Everything is started in a temp dir and removed at the end. Results go to stdout and to --out DIR
(Markdown table, PNG chart, JSON history).
"""

EPILOG = """\
examples:
  python -m bench --quick                      # < 2 min: select-only x 3 modes + connect, 8 clients, 3 s, 1 repeat
  python -m bench                              # the full matrix: 10 s runs, 3 repeats (~45 min), docs/bench/full.*
  python -m bench --scripts tpcb --clients 8,32 --repeats 5 --out /tmp/bench --reloads 0

needs PostgreSQL's binaries (pg_config --bindir, or PGBIN) and pgbouncer: apt-get install postgresql pgbouncer
exit codes: 0 ok, 1 some runs failed (see the table and progress lines), 2 could not run, 130 interrupted.
See docs/benchmarks.md for how to read the numbers.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def _csv_of(parse_one: Callable[[str], T], choices: str) -> Callable[[str], list[T]]:
    """An argparse type for a comma-separated list, e.g. `1,8,32`."""
    def parse(text: str) -> list[T]:
        try:
            values = [parse_one(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"invalid list {text!r}: use {choices}, comma-separated")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="select-only in 3 modes and connect, 8 clients, 3 s runs, 1 repeat, 20 reloads "
                        "(the options below still apply)")
    p.add_argument("--duration", type=int, metavar="S", help="seconds per pgbench run (default 10; quick 3)")
    p.add_argument("--repeats", type=int, metavar="N", help="runs per cell and target (default 3; quick 1)")
    p.add_argument("--clients", type=_csv_of(_positive_int, "positive integers"), metavar="1,8,32",
                   help="client counts (default: the preset's cells; giving any of --clients/--modes/--scripts "
                        "runs their cross product)")
    p.add_argument("--modes", type=_csv_of(Mode, "simple, extended, prepared"), metavar="simple,extended,prepared",
                   help="pgbench -M protocols")
    p.add_argument("--scripts", type=_csv_of(Script, "select-only, tpcb, connect"), metavar="select-only,tpcb,connect",
                   help="pgbench builtin scripts; connect = select-only with -C (connections per second)")
    p.add_argument("--reloads", type=int, metavar="N",
                   help="snapshot reloads during each loaded pgwarden run (default 100; quick 20; 0 skips)")
    p.add_argument("--out", type=Path, metavar="DIR", default=DEFAULT_OUT,
                   help="write <preset>.md, <preset>.png and append to history.json here (default docs/bench)")
    p.add_argument("--no-out", action="store_true", help="print the tables only; write nothing under --out")
    p.add_argument("--pgwarden-workers", type=_positive_int, metavar="N",
                   help="run both pgwarden targets with `pgwarden proxy --workers N` (default 1), e.g. 2")
    p.add_argument("--scaling-workers", type=int, metavar="N",
                   help="the pgwarden-workers target runs `pgwarden proxy --workers N` beside the single process "
                        "(default 2; 0 leaves the target out), e.g. --scaling-workers 4 on a 4-core machine")
    p.add_argument("--scale", type=int, metavar="N", help="pgbench -i scale factor (default 10; quick 1)")
    p.add_argument("--warmup", type=int, metavar="S", help="untimed seconds per target before the first cell")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every run and the summaries as JSON")
    return p


def matrix_from(args: argparse.Namespace) -> Matrix:
    """The preset (full or quick) with the command line's overrides applied."""
    base = QUICK if args.quick else FULL
    cells = base.cells
    if args.scripts or args.modes or args.clients:
        scripts = args.scripts or sorted({c.script for c in base.cells}, key=list(Script).index)
        modes = args.modes or sorted({c.mode for c in base.cells}, key=list(Mode).index)
        clients = args.clients or sorted({c.clients for c in base.cells})
        cells = build_cells(scripts, modes, clients)
    overrides = {"duration_s": args.duration, "repeats": args.repeats, "scale": args.scale,
                 "warmup_s": args.warmup, "reloads": args.reloads, "pgwarden_workers": args.pgwarden_workers,
                 "scaling_workers": args.scaling_workers}
    return dataclasses.replace(base, cells=cells, **{k: v for k, v in overrides.items() if v is not None})


def preset_name(args: argparse.Namespace) -> str:
    """`quick` or `full` when the preset ran as is, else `custom`: names the files under --out."""
    is_custom = any(getattr(args, k) is not None for k in ("duration", "repeats", "clients", "modes", "scripts",
                                                            "scale", "warmup", "reloads", "pgwarden_workers",
                                                            "scaling_workers"))
    return "custom" if is_custom else "quick" if args.quick else "full"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run_bench's cleanup (stop servers, remove the temp dir) runs on the way out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    matrix = matrix_from(args)
    if matrix.duration_s <= 0 or matrix.repeats <= 0 or matrix.reloads < 0 or matrix.scaling_workers < 0:
        print("bench: --duration and --repeats must be positive, --reloads and --scaling-workers zero or more",
              file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        binaries = find_binaries()
        if not args.no_out:
            check_chart_support()
        targets = 7 if matrix.scaling_workers else 6
        progress(f"bench: {len(matrix.cells)} cells x {matrix.repeats} repeats x {targets} targets x "
                 f"{matrix.duration_s} s = about {matrix.estimated_s(targets) / 60:.1f} min of pgbench, plus setup")
        report = run_bench(matrix, binaries, progress)
    except BenchSetupError as exc:
        print(f"bench: could not run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; servers stopped and temp files removed", file=sys.stderr)
        return 130
    print(format_report(report))
    if args.json:
        write_json(report, args.json)
        progress(f"bench: wrote {args.json}")
    if not args.no_out:
        try:
            written = publish(report, args.out, preset_name(args))
        except (OSError, ValueError) as exc:
            print(f"bench: could not write the results under {args.out}: {exc}", file=sys.stderr)
            return 2
        progress("bench: wrote " + ", ".join(str(p) for p in written))
    failed_reloads = report.reloads is not None and (report.reloads.failed_transactions or report.reloads.errors)
    return 1 if report.failures or failed_reloads else 0


if __name__ == "__main__":
    sys.exit(main())
