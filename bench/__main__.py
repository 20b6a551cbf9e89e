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
from bench.report import format_report, write_json
from bench.run import run_bench
from bench.system import BenchSetupError, find_binaries

T = TypeVar("T")

DESCRIPTION = """\
Run pgbench (select-only and TPC-B-like; simple and extended protocol; 1, 8 and 32 clients) against
five targets in one run: PostgreSQL directly (plain and TLS), pgbouncer (plain and client TLS) and
pgwarden (TLS, access log on). Runs are interleaved across targets; the tables show the median of the
repeats with their spread, pgwarden's TPS ratios to the others, and each proxy's CPU µs per transaction.
Everything (PostgreSQL, pgbouncer, pgwarden) is started in a temp dir and removed at the end.
"""

EPILOG = """\
examples:
  python -m bench --quick                      # ~1 min: select-only, 8 clients, 5 s, 1 repeat
  python -m bench --json bench-results.json    # the full matrix: 10 s runs, 3 repeats (~35 min)
  python -m bench --scripts tpcb --clients 8,32 --repeats 5

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
                   help="select-only, 8 clients, simple+extended, 5 s runs, 1 repeat (the options below still apply)")
    p.add_argument("--duration", type=int, metavar="S", help="seconds per pgbench run (default 10; quick 5)")
    p.add_argument("--repeats", type=int, metavar="N", help="runs per cell and target (default 3; quick 1)")
    p.add_argument("--clients", type=_csv_of(_positive_int, "positive integers"), metavar="1,8,32",
                   help="client counts (default 1,8,32; quick 8)")
    p.add_argument("--modes", type=_csv_of(Mode, "simple, extended"), metavar="simple,extended",
                   help="pgbench -M protocols (default both)")
    p.add_argument("--scripts", type=_csv_of(Script, "select-only, tpcb"), metavar="select-only,tpcb",
                   help="pgbench builtin scripts (default both; quick select-only)")
    p.add_argument("--scale", type=int, metavar="N", help="pgbench -i scale factor (default 10)")
    p.add_argument("--warmup", type=int, metavar="S", help="untimed seconds per target before the first cell")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every run and the summaries as JSON")
    return p


def matrix_from(args: argparse.Namespace) -> Matrix:
    """The preset (full or quick) with the command line's overrides applied."""
    base = QUICK if args.quick else FULL
    scripts = args.scripts or sorted({c.script for c in base.cells}, key=list(Script).index)
    modes = args.modes or sorted({c.mode for c in base.cells}, key=list(Mode).index)
    clients = args.clients or sorted({c.clients for c in base.cells})
    overrides = {"duration_s": args.duration, "repeats": args.repeats, "scale": args.scale,
                 "warmup_s": args.warmup}
    return dataclasses.replace(base, cells=build_cells(scripts, modes, clients),
                               **{k: v for k, v in overrides.items() if v is not None})


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run_bench's cleanup (stop servers, remove the temp dir) runs on the way out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    matrix = matrix_from(args)
    if matrix.duration_s <= 0 or matrix.repeats <= 0:
        print("bench: --duration and --repeats must be positive", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        binaries = find_binaries()
        progress(f"bench: {len(matrix.cells)} cells x {matrix.repeats} repeats x 5 targets x {matrix.duration_s} s "
                 f"= about {matrix.estimated_s(5) / 60:.1f} min of pgbench, plus setup")
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
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
