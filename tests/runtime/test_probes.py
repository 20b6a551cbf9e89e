"""The probes answer over real HTTP: /readyz follows the readiness flags, /livez fails once the reconcile loop died."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from runtime.probes import Readiness, add_probe_routes


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Readiness, list[bool]]]:
    readiness, applied, ready = Readiness(), [False], [False]
    readiness.has_applied = lambda: applied[0]
    app = web.Application()
    add_probe_routes(app, readiness, is_ready=lambda: ready[0])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", readiness, applied
    await runner.cleanup()


async def get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


async def test_readyz_follows_startup_and_drain(served: tuple[str, Readiness, list[bool]]) -> None:
    base, readiness, applied = served
    assert (await get(base + "/readyz"))[0] == 503  # not listening yet
    readiness.is_listening = True
    status, body = await get(base + "/readyz")
    assert status == 503 and "first revision" in str(body["reason"])
    applied[0] = True
    assert await get(base + "/readyz") == (200, {"ready": True, "reason": "ok"})
    readiness.is_draining = True
    status, body = await get(base + "/readyz")
    assert status == 503 and "draining" in str(body["reason"])


async def test_livez_fails_once_the_reconcile_loop_died(served: tuple[str, Readiness, list[bool]]) -> None:
    base, readiness, _ = served

    async def crashing_loop() -> None:
        raise OSError("disk gone")

    readiness.reconcile_task = asyncio.get_running_loop().create_task(crashing_loop())
    await asyncio.sleep(0)  # let it run
    await asyncio.wait({readiness.reconcile_task})
    status, body = await get(base + "/livez")
    assert status == 503 and body == {"live": False, "reason": "the reconcile loop stopped: OSError"}
    readiness.reconcile_task = None
    assert await get(base + "/livez") == (200, {"live": True, "reason": "ok"})
