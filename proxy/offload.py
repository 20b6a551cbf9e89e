"""Run CPU work in threads beside the relay's event loop (reading manifests, compiling snapshots) without
stalling it: the loop thread gets the GIL back quickly, and a compile does not trigger long collections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
COMPILE_SWITCH_INTERVAL_S = 0.0002  # while work runs beside the relay: how long the loop may wait for the GIL


async def run_beside_relay(work: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`asyncio.to_thread` for CPU work beside the relay (reading manifests, decoding a snapshot): the loop
    thread gets the GIL back within COMPILE_SWITCH_INTERVAL_S instead of CPython's default 5 ms."""
    def run() -> T:
        with _window.opened(is_compile=False):
            return work(*args, **kwargs)
    return await asyncio.to_thread(run)


class _ThreadWindow:
    """Process-wide settings while CPU work runs in threads beside the relay; the last one out restores them.

    Two CPython habits would otherwise stall the loop thread meanwhile:
    - the GIL: a waiting thread takes it only after the switch interval (5 ms by default), so every loop
      wake-up would wait up to that long; the interval is shortened to COMPILE_SWITCH_INTERVAL_S.
    - the cyclic garbage collector (compiles only): a compile allocates the new snapshot's objects (~140k for
      900 routing rules), which triggers collections of every generation, each holding the GIL for 100 ms or
      more on a busy machine. Collection is paused during a compile, and the objects alive after it are moved
      straight to the oldest generation (`gc.freeze()` then `gc.unfreeze()`), so no young collection walks
      them; only the rare full collection does. They are not left frozen: a frozen object is never collected,
      and everything alive at that moment (ending sessions' reference cycles included) would leak. A compiled
      snapshot holds no reference cycles (tests/proxy/test_reload_off_loop.py checks it), so reference
      counting alone frees it when it is replaced.
    Mutable and locked: overlapping reloads run in different threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads = 0
        self._compiles = 0
        self._saved_interval_s = 0.0
        self._was_collecting = False

    @contextlib.contextmanager
    def opened(self, *, is_compile: bool) -> Iterator[None]:
        with self._lock:
            if self._threads == 0:
                self._saved_interval_s = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved_interval_s, COMPILE_SWITCH_INTERVAL_S))
            self._threads += 1
            if is_compile:
                if self._compiles == 0:
                    self._was_collecting = gc.isenabled()
                    gc.disable()
                self._compiles += 1
        try:
            yield
        finally:
            with self._lock:
                if is_compile:
                    self._compiles -= 1
                    if self._compiles == 0:
                        gc.freeze()  # everything alive now to the oldest generation...
                        gc.unfreeze()  # ...and collectable there, as usual
                        if self._was_collecting:
                            gc.enable()
                self._threads -= 1
                if self._threads == 0:
                    sys.setswitchinterval(self._saved_interval_s)


_window = _ThreadWindow()


@contextlib.contextmanager
def compile_window() -> Iterator[None]:
    """Around a snapshot compile in a worker thread: short GIL switch interval, collector paused meanwhile."""
    with _window.opened(is_compile=True):
        yield
