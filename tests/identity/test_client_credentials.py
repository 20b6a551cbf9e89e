"""Client authentication at the token endpoint (RFC 6749 §2.3.1) over real HTTP: Basic with or without the
form-urlencoding step, form fields, and refusals that never echo the secret."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from urllib.parse import quote_plus

import aiohttp
import pytest
from aiohttp import web

from identity.web.client_credentials import OAuthError, authenticate, parse_client
from proxy.snapshot import Credential, hash_client_secret

SECRET = "q+8/Zx1Lw2Ne3Rb4Tc5Yd6Uf7Ig8Oh9P+a=="  # base64-ish: '+' and '/' are where Basic clients disagree
CREDENTIALS = {"ci-bot-deploy": Credential(name="ci-bot-deploy", user="ci-bot", secret_hash=hash_client_secret(SECRET))}


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async def token(request: web.Request) -> web.Response:
        try:
            client_id, secrets = await parse_client(request)
            return web.json_response({"client": authenticate(CREDENTIALS, client_id, secrets).name})
        except OAuthError as exc:
            return exc.response()

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/token"
    finally:
        await runner.cleanup()


async def post(url: str, form: dict[str, str], basic: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": "Basic " + base64.b64encode(basic.encode()).decode()} if basic else {}
    async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as response:
        text = await response.text()
        return response.status, (await response.json()), text


@pytest.mark.parametrize("basic", [
    f"ci-bot-deploy:{quote_plus(SECRET)}",  # as RFC 6749 §2.3.1 says
    f"ci-bot-deploy:{SECRET}",  # as curl -u and many libraries send it
])
async def test_basic_authentication_with_either_encoding(url: str, basic: str) -> None:
    status, body, _ = await post(url, {"grant_type": "client_credentials"}, basic)
    assert (status, body) == (200, {"client": "ci-bot-deploy"})


async def test_form_fields_authenticate_too(url: str) -> None:
    status, body, _ = await post(url, {"grant_type": "client_credentials", "client_id": "ci-bot-deploy",
                                       "client_secret": SECRET})
    assert (status, body) == (200, {"client": "ci-bot-deploy"})


@pytest.mark.parametrize("form, basic, status, error", [
    ({"grant_type": "client_credentials"}, "ci-bot-deploy:" + SECRET[:-1], 401, "invalid_client"),
    ({"grant_type": "client_credentials"}, "someone-else:" + SECRET, 401, "invalid_client"),
    ({"grant_type": "client_credentials"}, "no-colon-here", 401, "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "ci-bot-deploy", "client_secret": "x" * 2000}, None, 401,
     "invalid_client"),
    ({"grant_type": "authorization_code"}, "ci-bot-deploy:" + SECRET, 400, "unsupported_grant_type"),
])
async def test_refusals_are_oauth_errors_without_the_secret(url: str, form: dict[str, str], basic: str | None,
                                                            status: int, error: str) -> None:
    got, body, text = await post(url, form, basic)
    assert (got, body["error"]) == (status, error)
    assert SECRET not in text and SECRET[:-1] not in text
