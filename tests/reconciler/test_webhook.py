"""The webhook receiver: only an authenticated POST schedules a fetch, and the body is only size-checked and HMACed."""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from reconciler.webhook import MAX_BODY_BYTES, add_webhook_routes

SECRET = "gh-webhook-secret"
TOKEN = "generic-token-123"
PAYLOAD = b'{"ref": "refs/heads/main", "after": "not trusted anyway"}'


@dataclass
class Triggers:
    count: int = 0

    def __call__(self) -> None:
        self.count += 1


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def client_for(
    triggers: Triggers, *, github_secret: str | None = SECRET, token: str | None = TOKEN
) -> TestClient:
    app = web.Application()
    add_webhook_routes(app, on_trigger=triggers, github_secret=github_secret, token=token)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
def triggers() -> Triggers:
    return Triggers()


@pytest.fixture
async def client(triggers: Triggers) -> AsyncIterator[TestClient]:
    client = await client_for(triggers)
    yield client
    await client.close()


async def test_valid_github_signature_schedules_a_fetch(client: TestClient, triggers: Triggers) -> None:
    response = await client.post(
        "/hooks/git", data=PAYLOAD, headers={"X-Hub-Signature-256": sign(PAYLOAD), "X-GitHub-Event": "push"}
    )
    assert response.status == 202
    assert await response.json() == {"status": "fetch scheduled"}
    assert triggers.count == 1


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Hub-Signature-256": sign(PAYLOAD, "another-secret")}, 403),
        ({"X-Hub-Signature-256": sign(PAYLOAD + b" ")}, 403),  # signature of a different body
        ({"X-Hub-Signature-256": "sha256=zz"}, 403),
        ({"Authorization": "Bearer wrong-token"}, 403),
        ({"Authorization": f"Basic {TOKEN}"}, 401),  # only the Bearer scheme carries the token
        ({"X-Pgwarden-Token": "wrong-token"}, 403),
    ],
)
async def test_wrong_or_missing_credentials_do_not_trigger(
    client: TestClient, triggers: Triggers, headers: dict[str, str], status: int
) -> None:
    response = await client.post("/hooks/git", data=PAYLOAD, headers=headers)
    assert response.status == status
    assert "error" in await response.json()
    assert triggers.count == 0


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {TOKEN}"}, {"X-Pgwarden-Token": TOKEN}])
async def test_token_schedules_a_fetch(client: TestClient, triggers: Triggers, headers: dict[str, str]) -> None:
    response = await client.post("/hooks/git", data=b"", headers=headers)
    assert response.status == 202
    assert triggers.count == 1


async def test_oversized_body_is_refused(client: TestClient, triggers: Triggers) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    response = await client.post("/hooks/git", data=io.BytesIO(big), headers={"X-Hub-Signature-256": sign(big)})
    assert response.status == 413

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while streaming
        for _ in range(17):
            yield b"x" * (64 << 10)

    response = await client.post("/hooks/git", data=chunked(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 413
    assert triggers.count == 0


async def test_github_ping_is_answered_without_a_fetch(client: TestClient, triggers: Triggers) -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    response = await client.post(
        "/hooks/git", data=body, headers={"X-Hub-Signature-256": sign(body), "X-GitHub-Event": "ping"}
    )
    assert response.status == 200
    assert triggers.count == 0
    unsigned = await client.post("/hooks/git", data=body, headers={"X-GitHub-Event": "ping"})
    assert unsigned.status == 401


async def test_get_explains_itself(client: TestClient) -> None:
    response = await client.get("/hooks/git")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert "X-Hub-Signature-256" in (await response.json())["hint"]


async def test_only_the_configured_methods_count(triggers: Triggers) -> None:
    token_only = await client_for(triggers, github_secret=None)
    try:
        response = await token_only.post("/hooks/git", data=PAYLOAD, headers={"X-Hub-Signature-256": sign(PAYLOAD)})
        assert response.status == 403
    finally:
        await token_only.close()
    unconfigured = await client_for(triggers, github_secret=None, token=None)
    try:
        response = await unconfigured.post("/hooks/git", data=b"", headers={"Authorization": "Bearer "})
        assert response.status == 403
    finally:
        await unconfigured.close()
    assert triggers.count == 0
