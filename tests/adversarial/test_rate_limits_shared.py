"""Rate limits and the TOTP failure budget are shared by replicas: two proxies, each with its own store object on
one SQLite state file and its own HTTP listener built as `pgwarden up` builds it, charge one budget."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
from aiohttp import web

from identity.web.app import build_auth_server
from identity.web.device import MAX_WRONG_CODES
from identity.web.flow import AuthServer
from identity.web.limits import HttpLimits, RateLimit, limit_app, start_limited_site
from identity.web.totp import MAX_FAILURES_PER_USER, TotpMethod
from proxy.snapshot import SecretValue
from tests.support.proxy_harness import ProxyHarness, start_harness

LIMITS = HttpLimits(device_codes=RateLimit(4, 3600), second_factors=RateLimit(0, 60))  # 0: the budget below shows
TOTP_SECRET = pyotp.random_base32()


@dataclass
class Replica:
    proxy: ProxyHarness
    auth: AuthServer
    url: str

    def totp(self) -> TotpMethod:
        return next(p for p in self.auth.pages if isinstance(p, TotpMethod))


def _start_replica(pg: Any, base: Path, name: str) -> tuple[Replica, Any]:
    proxy, stop_proxy = start_harness(pg, base, name=name, data_dir=base / "data")  # one state.db for both

    async def serve() -> tuple[AuthServer, web.AppRunner]:
        auth = build_auth_server(proxy.running.server, public_url="http://localhost:9")
        app = web.Application(client_max_size=LIMITS.max_body_bytes)
        limit_app(app, lambda: proxy.running.server.identity.store, LIMITS)
        auth.add_routes(app)
        return auth, await start_limited_site(app, LIMITS, host="127.0.0.1", port=0)

    auth, runner = proxy.run(serve())
    host, port = runner.addresses[0][:2]

    def stop() -> None:
        proxy.run(runner.cleanup())
        stop_proxy()

    return Replica(proxy=proxy, auth=auth, url=f"http://{host}:{port}"), stop


@pytest.fixture(scope="module")
def replicas(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Replica]]:
    base = tmp_path_factory.mktemp("shared-limits")
    one, stop_one = _start_replica(pg, base, "one")
    two, stop_two = _start_replica(pg, base, "two")
    yield one, two
    stop_two()
    stop_one()


def test_device_code_limit_is_one_budget_over_two_replicas(replicas: tuple[Replica, Replica]) -> None:
    async def go() -> list[tuple[int, str | None]]:
        async with aiohttp.ClientSession() as client:
            out = []
            for i in range(LIMITS.device_codes.requests + 2):
                url = replicas[i % 2].url + "/v1/auth/device/code"
                async with client.post(url, json={}) as response:
                    out.append((response.status, response.headers.get("Retry-After")))
            return out

    answers = asyncio.run(go())
    # Each replica saw only 3 requests, under the limit of 4 on its own; together they used the budget.
    assert [s for s, _ in answers] == [200] * LIMITS.device_codes.requests + [429, 429]
    assert all(retry is not None and 1 <= int(retry) <= 3600 for _, retry in answers[-2:])


def test_wrong_totp_codes_on_one_replica_lock_the_user_on_the_other(replicas: tuple[Replica, Replica]) -> None:
    one, two = replicas
    one.proxy.run(one.proxy.running.server.identity.store.save_totp("alice", SecretValue(TOTP_SECRET),
                                                                    confirmed=True))
    for _ in range(MAX_FAILURES_PER_USER):
        assert one.proxy.run(one.totp().check_code("alice", "000000x")) is not None
    right = pyotp.TOTP(TOTP_SECRET).now()
    problem = two.proxy.run(two.totp().check_code("alice", right))
    assert problem is not None and "too many wrong codes" in problem
    # ...and the right code was not spent on the way: the step is still unused in the shared store.
    assert two.proxy.run(two.proxy.running.server.identity.store.mark_totp_used("alice", 0))


def test_wrong_user_codes_are_one_budget_over_two_replicas(replicas: tuple[Replica, Replica]) -> None:
    async def guess(client: aiohttp.ClientSession, replica: Replica) -> tuple[int, str]:
        async with client.get(replica.url + "/device") as response:
            token = re.search(r"name=csrf value='([^']+)'", await response.text())
        assert token
        async with client.post(replica.url + "/device", data={"user_code": "BCDF-GHJK", "csrf": token.group(1),
                                                               "action": "continue"}) as response:
            return response.status, await response.text()

    async def go() -> list[tuple[int, str]]:
        out = []
        for i in range(MAX_WRONG_CODES + 1):
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:  # a new browser
                out.append(await guess(client, replicas[i % 2]))
        return out

    answers = asyncio.run(go())
    assert [status for status, _ in answers[:-1]] == [400] * MAX_WRONG_CODES  # unknown code
    status, page = answers[-1]
    assert status == 429 and "too many wrong codes" in page  # each replica saw only about half of them
