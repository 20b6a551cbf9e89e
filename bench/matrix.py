"""What one bench run measures: the cells (script × protocol mode × clients) and how long and often.

Kept as plain data so that new presets, scripts or modes are a change here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Script(StrEnum):
    """A pgbench builtin script, named as on our command line; `builtin` is pgbench's `-b` name."""

    SELECT_ONLY = "select-only"
    TPCB = "tpcb"

    @property
    def builtin(self) -> str:
        return {Script.SELECT_ONLY: "select-only", Script.TPCB: "tpcb-like"}[self]

    @property
    def is_writing(self) -> bool:
        return self is Script.TPCB


class Mode(StrEnum):
    """pgbench's `-M` query protocol: simple (Query) or extended (Parse/Bind/Execute, unnamed statements)."""

    SIMPLE = "simple"
    EXTENDED = "extended"


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

    def run_count(self, target_count: int) -> int:
        return len(self.cells) * self.repeats * target_count

    def estimated_s(self, target_count: int) -> float:
        """Time spent in pgbench alone (setup and settling come on top)."""
        return self.run_count(target_count) * self.duration_s + target_count * self.warmup_s


def build_cells(scripts: list[Script], modes: list[Mode], clients: list[int]) -> tuple[Cell, ...]:
    """The cross product, in table order: script, then mode, then clients."""
    return tuple(Cell(script=s, mode=m, clients=c) for s in scripts for m in modes for c in clients)


FULL = Matrix(
    cells=build_cells([Script.SELECT_ONLY, Script.TPCB], [Mode.SIMPLE, Mode.EXTENDED], [1, 8, 32]),
    duration_s=10,
    repeats=3,
)

QUICK = Matrix(
    cells=build_cells([Script.SELECT_ONLY], [Mode.SIMPLE, Mode.EXTENDED], [8]),
    duration_s=5,
    repeats=1,
    warmup_s=1,
)
