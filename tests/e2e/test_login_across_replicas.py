"""A login's steps on different replicas of one PostgreSQL state store: the SSO first factor parks the flow on
one replica, the TOTP second factor finishes it on another, and the TOTP time step is used once across both."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from identity.store.base import AssuranceLevel
from tests.support.second_factors import AuthSite, enrol_totp, fetch, join_flow, start_auth_site, totp_code


@pytest.fixture(scope="module")
def replicas(pg: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuthSite, AuthSite]]:
    base = tmp_path_factory.mktemp("login-replicas")
    database = f"pgwarden_state_{secrets.token_hex(4)}"
    pg.psql(f"CREATE DATABASE {database}", database="postgres")
    shared = {"state": pg.dsn("pgwarden_admin", database), "data_dir": base / "shared-data"}
    a, stop_a = start_auth_site(pg, base, name="a", **shared)
    try:
        b, stop_b = start_auth_site(pg, base, name="b", **shared)
    except BaseException:
        stop_a()
        raise
    try:
        yield a, b
    finally:
        stop_b()
        stop_a()
        pg.psql(f"DROP DATABASE {database} WITH (FORCE)", database="postgres")


async def test_the_second_factor_finishes_on_another_replica_and_its_code_is_used_once(
        replicas: tuple[AuthSite, AuthSite]) -> None:
    a, b = replicas
    secret, _ = await enrol_totp(a, "dave")
    code = totp_code(secret)
    flow = a.park("dave")  # SSO done on replica a, AAL2 asked: parked in the shared store
    path = f"/login/totp?{urlencode({'flow': flow.id})}"
    async with aiohttp.ClientSession() as browser:
        join_flow(browser, a, flow)  # the flow cookie is for localhost, whichever port (replica) answers
        status, page, _ = await fetch(browser, b, path)
        assert status == 200 and "Signed in as <b>dave</b>" in page, page
        status, page, _ = await fetch(browser, b, path, {"code": code})
        assert status == 200 and "Signed in as <b>dave</b> (oidc, AAL2)" in page, page
        status, page, _ = await fetch(browser, a, path, {"code": code})  # the finished flow, on the other replica
        assert status == 403 and "expired or is unknown" in page, page

    again = a.park("dave")
    async with aiohttp.ClientSession() as browser:
        join_flow(browser, a, again)
        status, page, _ = await fetch(browser, a, f"/login/totp?{urlencode({'flow': again.id})}", {"code": code})
        assert status == 403 and "already used" in page, page  # the time step b accepted, refused on a
    sessions = a.run(a.proxy.running.server.identity.store.list_sessions("dave"))
    assert len([s for s in sessions if s.aal >= AssuranceLevel.AAL2]) == 1
