"""What one bench run measures: the cells (script × protocol mode × clients) and how long and often.

Kept as plain data so that new presets, scripts or modes are a change here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Script(StrEnum):
    """A pgbench builtin script, named as on our command line; `builtin` is pgbench's `-b` name.

    `connect` is select-only with `pgbench -C`: a new connection per transaction, so its TPS is the
    connection set-up rate (TLS, token check and upstream login for pgwarden).
    """

    SELECT_ONLY = "select-only"
    TPCB = "tpcb"
    CONNECT = "connect"

    @property
    def builtin(self) -> str:
        return {Script.SELECT_ONLY: "select-only", Script.TPCB: "tpcb-like", Script.CONNECT: "select-only"}[self]

    @property
    def is_writing(self) -> bool:
        return self is Script.TPCB

    @property
    def is_reconnecting(self) -> bool:
        return self is Script.CONNECT

    @property
    def statements_per_txn(self) -> int:
        """Statements one transaction sends: TPC-B-like is BEGIN, 3 UPDATEs, SELECT, INSERT, END."""
        return 7 if self is Script.TPCB else 1


class Mode(StrEnum):
    """pgbench's `-M` query protocol: simple (Query), extended (Parse/Bind/Execute, unnamed statements) or
    prepared (each statement parsed once per connection, then only Bind/Execute)."""

    SIMPLE = "simple"
    EXTENDED = "extended"
    PREPARED = "prepared"


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """One row of the result table: every target runs it the same way."""

    script: Script
    mode: Mode
    clients: int

    @property
    def label(self) -> str:
        return f"{self.script}/{self.mode}/c{self.clients}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Matrix:
    """The cells plus the settings shared by every run (same for every target, so the comparison is fair)."""

    cells: tuple[Cell, ...]
    duration_s: int
    repeats: int
    threads: int = 2  # pgbench -j; this is a 2-core machine
    scale: int = 10  # pgbench -i -s
    warmup_s: int = 2  # one untimed run per target before the first cell
    pgwarden_workers: int = 1  # `pgwarden proxy --workers N` for both pgwarden targets
    # A third pgwarden target, `pgwarden-workers`, with `--workers N` beside the single process (0: none), so one
    # run shows how TPS scales from 1 to N cores next to pgbouncer, which is single-threaded.
    scaling_workers: int = 2
    # Reloads under load (bench/reloads.py): per repeat, one quiet run and one with `reloads` SIGHUPs.
    reloads: int = 0  # 0 skips the scenario
    reload_clients: int = 8
    reload_duration_s: int = 20
    reload_repeats: int = 3

    def run_count(self, target_count: int) -> int:
        return len(self.cells) * self.repeats * target_count

    def estimated_s(self, target_count: int) -> float:
        """Time spent in pgbench alone (setup and settling come on top)."""
        reloads_s = 2 * self.reload_repeats * self.reload_duration_s if self.reloads else 0
        return self.run_count(target_count) * self.duration_s + target_count * self.warmup_s + reloads_s


def build_cells(scripts: list[Script], modes: list[Mode], clients: list[int]) -> tuple[Cell, ...]:
    """The cross product, in table order: script, then mode, then clients."""
    return tuple(Cell(script=s, mode=m, clients=c) for s in scripts for m in modes for c in clients)


ALL_MODES = [Mode.SIMPLE, Mode.EXTENDED, Mode.PREPARED]

# The goals: select-only at 1, 8 and 32 clients in every protocol, TPC-B-like at 8, and the
# connection set-up rate; 13 cells x 7 targets x 3 repeats x 10 s is about 45 minutes.
FULL = Matrix(
    cells=(build_cells([Script.SELECT_ONLY], ALL_MODES, [1, 8, 32]) + build_cells([Script.TPCB], ALL_MODES, [8])
           + build_cells([Script.CONNECT], [Mode.SIMPLE], [8])),
    duration_s=10,
    repeats=3,
    reloads=100,
)

# Proves every part runs in under 2 minutes; one short repeat, so read its numbers as +-30 %.
QUICK = Matrix(
    cells=build_cells([Script.SELECT_ONLY], ALL_MODES, [8]) + build_cells([Script.CONNECT], [Mode.SIMPLE], [8]),
    duration_s=3,
    repeats=1,
    warmup_s=0,  # pgbench's TPS leaves out connecting anyway; quick mode needs the seconds
    scale=1,  # select-only reads cached pages at any scale; a smaller pgbench -i saves setup time
    reloads=20,
    reload_duration_s=3,
    reload_repeats=1,
)
