"""How long an asyncio loop goes unserved while some work runs: a 1 ms ticker on the same loop records every gap.

On a loaded machine the kernel also deschedules the whole process for tens of ms; such a gap shows in wall time
but not in the process's CPU time. A stall we cause (the loop thread blocked by our own work) burns CPU
throughout, so `worst_busy_gap_ms` takes min(wall, process CPU) per gap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class LoopGaps:
    """One run of `action` under the ticker."""

    action_s: float  # from the call to the action's end
    cpu_s: float  # process CPU time meanwhile (every thread)
    worst_gap_ms: float  # the longest the ticker waited, whatever the cause
    worst_busy_gap_ms: float  # the same, counting only the process's own CPU time within each gap
    p99_gap_ms: float


async def with_ticker(action: Callable[[], Awaitable[object]], *, tail_s: float = 0.1) -> LoopGaps:
    """Run `action` while the ticker runs; it goes on `tail_s` after (work the action leaves to the loop)."""
    gaps: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last, last_cpu = time.perf_counter(), time.process_time()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now, cpu = time.perf_counter(), time.process_time()
            gaps.append(((now - last) * 1000, (cpu - last_cpu) * 1000))
            last, last_cpu = now, cpu

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started, cpu = time.perf_counter(), time.process_time()
    await action()
    action_s, action_cpu = time.perf_counter() - started, time.process_time() - cpu
    await asyncio.sleep(tail_s)
    stop.set()
    await task
    walls = sorted(wall for wall, _ in gaps)
    return LoopGaps(action_s=action_s, cpu_s=action_cpu, worst_gap_ms=walls[-1],
                    worst_busy_gap_ms=max(min(wall, busy) for wall, busy in gaps),
                    p99_gap_ms=walls[int(len(walls) * 0.99) - 1])
