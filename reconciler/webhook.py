"""The webhook receiver: an authenticated POST only schedules a fetch. The payload is never parsed or trusted.

Accepts GitHub's `X-Hub-Signature-256` (HMAC-SHA256 of the raw body) or a shared token, like Flux's Receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("pgwarden.webhook")

MAX_BODY_BYTES = 1 << 20  # GitHub caps payloads at 25 MB, but we read the body only to check its HMAC
_CHUNK_BYTES = 64 << 10


def add_webhook_routes(
    app: web.Application,
    *,
    on_trigger: Callable[[], None],
    github_secret: str | None,
    token: str | None,
    path: str = "/hooks/git",
) -> None:
    """Mount POST `path` (202 and `on_trigger()` when authenticated) and a GET that explains it (405)."""
    secret = github_secret.encode() if github_secret else None
    expected_token = token.encode() if token else None

    async def receive(request: web.Request) -> web.Response:
        if secret is None and expected_token is None:
            return _error(403, "webhook disabled: no GitHub secret or token is configured")
        body = await _read_limited(request)
        if body is None:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        refusal = _authenticate(request, body, secret, expected_token)
        if refusal is not None:
            status, message = refusal
            log.warning("webhook from %s refused: %s", request.remote, message)
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return _error(status, message, headers=headers)
        if request.headers.get("X-GitHub-Event") == "ping":
            return web.json_response({"status": "pong"})
        on_trigger()
        log.info("webhook from %s: fetch scheduled", request.remote)
        return web.json_response({"status": "fetch scheduled"}, status=202)

    async def explain(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "error": "method not allowed",
                "hint": "POST here with X-Hub-Signature-256 (GitHub) or Authorization: Bearer <token>",
            },
            status=405,
            headers={"Allow": "POST"},
        )

    app.router.add_post(path, receive)
    app.router.add_get(path, explain, allow_head=False)


async def _read_limited(request: web.Request) -> bytes | None:
    """The raw body, or None when it is over MAX_BODY_BYTES (checked as it streams, chunked or not)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _authenticate(
    request: web.Request, body: bytes, secret: bytes | None, token: bytes | None
) -> tuple[int, str] | None:
    """None when a configured method matches; else 401 (no credential offered) or 403 (a wrong one)."""
    offered = False
    signature = request.headers.get("X-Hub-Signature-256")
    if signature is not None:
        offered = True
        if secret is not None:
            expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
            if hmac.compare_digest(expected, signature.strip().lower().encode()):
                return None
    for presented in _presented_tokens(request):
        offered = True
        if token is not None and hmac.compare_digest(token, presented.encode()):
            return None
    if not offered:
        return 401, "no X-Hub-Signature-256, bearer token or X-Pgwarden-Token"
    return 403, "signature or token does not match"


def _presented_tokens(request: web.Request) -> list[str]:
    tokens: list[str] = []
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        tokens.append(value.strip())
    if header := request.headers.get("X-Pgwarden-Token"):
        tokens.append(header.strip())
    return tokens


def _error(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
