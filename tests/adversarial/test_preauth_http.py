"""Anonymous clients cannot exhaust the HTTP listener of `pgwarden up` (issue 10, class 6), attacked over sockets.

Against a real `pgwarden up` (started with the common soft limit of 1,024 open files) and a real OpenID Provider:
- a person signs in through the provider while 2,000 idle or trickling sockets hold the listener; RSS stays bounded;
- a client trickling its headers, and one trickling its body, are cut off;
- 10,000 anonymous GET /login, and then a person's login still works;
- device codes and the token endpoints answer 429 (device polls: 400 slow_down) with Retry-After.
"""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from identity.web.limits import HttpLimits
from tests.adversarial.preauth_support import raise_own_fd_limit, rss_kib
from tests.support.peers import OIDC_CLIENT_SECRET, follow_login
from tests.support.sso import SsoCluster, assert_no_secrets, start_sso_cluster

FLOOD = 2000
ANONYMOUS_LOGINS = 10_000


@pytest.fixture(scope="module")
def sso(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoCluster]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))  # what `pgwarden up` inherits, as on hosts
    try:
        env, _ = start_sso_cluster(pg, tmp_path_factory.mktemp("http-limits"),
                                   up_args=("--http-idle-timeout", "2", "--http-request-timeout", "2"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    yield env
    output = env.up.stop()
    env.peer.stop()
    assert_no_secrets([output], [OIDC_CLIENT_SECRET])


async def sign_in(sso: SsoCluster, login: str) -> str:
    """A fresh browser at /login, clicking 'Sign in with Corp' and signing in as `login`; returns pgwarden's page."""
    async with aiohttp.ClientSession() as browser:
        async with browser.get(f"{sso.base}/login") as response:
            page = await response.text()
        assert response.status == 200 and "Sign in with Corp" in page, page
        link = re.search(r"href='(/login/idp/corp\?flow=[^']+)'", page)
        assert link, page
        outcome = await follow_login(browser, sso.base + link.group(1), login=login,
                                     redirect_prefix=f"{sso.base}/login/oidc/callback")
        async with browser.get(outcome.url) as response:
            return await response.text()


def http_port(sso: SsoCluster) -> int:
    return sso.up.http_port


def test_a_person_signs_in_while_2000_idle_sockets_hold_the_http_listener(sso: SsoCluster) -> None:
    raise_own_fd_limit(FLOOD + 200)
    pid = sso.up.proc.pid
    assert "Signed in as" in asyncio.run(sign_in(sso, "alice"))  # warm
    before = rss_kib(pid)
    flood = []
    try:
        for i in range(FLOOD):
            s = socket.create_connection(("127.0.0.1", http_port(sso)), timeout=10)
            if i % 2:
                s.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\n")  # headers never finished
            flood.append(s)
        during = rss_kib(pid)
        started = time.monotonic()
        page = asyncio.run(sign_in(sso, "alice"))
        login_s = time.monotonic() - started
        after_login = rss_kib(pid)
    finally:
        for s in flood:
            s.close()
    time.sleep(0.5)
    after = rss_kib(pid)
    print(f"\nHTTP flood: {FLOOD} idle/trickling sockets; `pgwarden up` RSS before {before} KiB, with the flood "
          f"{during} KiB, after a sign-in under flood {after_login} KiB, after {after} KiB; sign-in took "
          f"{login_s:.3f} s")
    assert "Signed in as <b>alice</b>" in page
    assert max(during, after_login) - before < 64 * 1024


def _closed_within(sock: socket.socket, trickle: bytes, *, steps: int = 40, pause_s: float = 0.25) -> bool:
    """Send `trickle` one byte per pause; True once the server has closed the connection."""
    sock.settimeout(pause_s)
    for i in range(steps):
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True
        try:
            sock.sendall(trickle[i % len(trickle): i % len(trickle) + 1])
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def test_a_client_trickling_its_headers_is_cut_off(sso: SsoCluster) -> None:
    with socket.create_connection(("127.0.0.1", http_port(sso))) as s:
        s.sendall(b"GET /login HTTP/1.1\r\n")
        # 10 s of one header byte per 0.25 s; --http-idle-timeout 2 closes it long before (aiohttp's default: 1 h)
        assert _closed_within(s, b"X-Slow: " + b"a" * 64)


def test_a_client_trickling_its_body_gets_408_and_is_cut_off(sso: SsoCluster) -> None:
    with socket.create_connection(("127.0.0.1", http_port(sso))) as s:
        s.sendall(b"POST /v1/auth/device/code HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 4000\r\n\r\n{")
        s.settimeout(0.25)
        answer = b""
        for _ in range(40):
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
            except TimeoutError:
                try:
                    s.sendall(b" ")
                except OSError:
                    break
            except ConnectionResetError:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_10000_anonymous_logins_do_not_block_a_person(sso: SsoCluster) -> None:
    async def flood() -> int:
        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector) as client:
            async def one() -> int:
                async with client.get(f"{sso.base}/login", allow_redirects=False) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one() for _ in range(ANONYMOUS_LOGINS)))
        return sum(1 for s in statuses if s == 200)

    assert asyncio.run(flood()) == ANONYMOUS_LOGINS  # anonymous page views are not refused either
    assert "Signed in as <b>bob</b>" in asyncio.run(sign_in(sso, "bob"))


def test_device_codes_are_rate_limited_with_retry_after(sso: SsoCluster) -> None:
    limit = HttpLimits().device_codes.requests

    async def go() -> list[tuple[int, str | None, dict[str, Any]]]:
        async with aiohttp.ClientSession() as client:
            out = []
            for _ in range(2 * limit + 1):  # a fixed window may end once while we ask
                async with client.post(f"{sso.base}/v1/auth/device/code", json={}) as response:
                    out.append((response.status, response.headers.get("Retry-After"), await response.json()))
                if response.status != 200:
                    break
            return out

    answers = asyncio.run(go())
    status, retry_after, body = answers[-1]
    assert status == 429 and body["error"] == "too_many_requests", answers
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    assert "device_code" not in body
    assert all(a[0] == 200 for a in answers[:-1])


def test_token_endpoints_over_the_limit_answer_429_and_device_polls_slow_down(sso: SsoCluster) -> None:
    limit = HttpLimits().tokens.requests

    async def go() -> tuple[list[int], tuple[int, str | None, dict[str, Any]]]:
        async with aiohttp.ClientSession() as client:
            statuses = []
            for _ in range(2 * limit + 1):
                async with client.post(f"{sso.base}/v1/auth/token", data={"grant_type": "client_credentials",
                                                                          "client_id": "x", "client_secret": "y"}) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
                        break
            async with client.post(f"{sso.base}/v1/auth/device/token", json={"device_code": "guess"}) as response:
                return statuses, (response.status, response.headers.get("Retry-After"), await response.json())

    statuses, (status, retry_after, body) = asyncio.run(go())
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}  # wrong client secrets, until the limit
    assert (status, body["error"]) == (400, "slow_down")  # RFC 8628 §3.5, for the device's poll
    assert retry_after is not None and int(retry_after) >= 1
