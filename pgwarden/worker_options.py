"""The `--workers` and hidden `--worker-slot` options of `pgwarden proxy` and `pgwarden up` (runtime/workers.py)."""

from __future__ import annotations

import argparse

from runtime.workers import MAX_WORKERS, WorkerSlot, cores_available


def parse_slot(text: str) -> WorkerSlot:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"invalid worker slot {text!r}: use INDEX/COUNT, e.g. 1/4")
    return WorkerSlot(index=int(index), count=int(count))


def worker_count(text: str) -> int:
    """`--workers`: a count from 1 to 64, or `auto` for one per available core (at most 64)."""
    if text.strip().lower() == "auto":
        return max(1, min(cores_available(), MAX_WORKERS))
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"invalid worker count {text!r}: use 1 to {MAX_WORKERS}, or auto")
    return int(text)


def add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=worker_count, default=1, metavar="N|auto",
                   help="worker processes sharing the listening port via SO_REUSEPORT; auto starts one per "
                        "core this process may use (the production setting: one process relays on one core). "
                        "Default 1, e.g. --workers auto; SIGHUP reloads all of them")
    p.add_argument("--worker-slot", type=parse_slot, default=None, help=argparse.SUPPRESS)  # set by the parent


def is_parent(args: argparse.Namespace) -> bool:
    return args.workers > 1 and args.worker_slot is None


def add_up_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=worker_count, default=1, metavar="N|auto",
                   help="proxy worker processes sharing the listening port via SO_REUSEPORT; auto starts one per "
                        "core this process may use (the production setting). Default 1: one process. The "
                        "reconciler, login pages and webhook stay in the parent, which pushes every revision to "
                        "all workers, e.g. pgwarden up --repo URL --workers auto")
    p.add_argument("--worker-slot", type=parse_slot, default=None, help=argparse.SUPPRESS)  # set by the parent
