"""HTTP for the identity providers: bounded JSON answers, https-only URLs, one timeout. No tokens in errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from identity.errors import ProviderMisconfigured, ProviderUnavailable, TokenRejected, fail

MAX_RESPONSE_BYTES = 1 << 20
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
TIMEOUT = aiohttp.ClientTimeout(total=10)


@asynccontextmanager
async def http_client(session: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    """`session`, or a new one closed on exit."""
    if session is not None:
        yield session
        return
    async with aiohttp.ClientSession(timeout=TIMEOUT) as own:
        yield own


def check_url(url: object, provider: str, what: str) -> str:
    """https, or http to a loopback host (tests, local IdPs); anything else could leak codes and tokens."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.hostname:
        raise fail(ProviderMisconfigured, provider, f"{what} is missing or not an absolute URL")
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        raise fail(ProviderMisconfigured, provider, f"{what} must use https")
    return str(url)


async def get_json(
    http: aiohttp.ClientSession, url: str, provider: str, what: str, *, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    try:
        async with http.get(url, headers=headers, timeout=TIMEOUT) as response:
            if response.status == 401 and what == "userinfo":
                raise fail(TokenRejected, provider, "userinfo refused the access token (401)")
            if response.status != 200:
                raise fail(ProviderUnavailable, provider, f"{what} answered HTTP {response.status}")
            return await read_json(response, provider, what)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise fail(ProviderUnavailable, provider, f"{what} could not be fetched ({type(exc).__name__})",
                   hint="check that the provider is reachable from the proxy") from exc


async def read_bounded(response: aiohttp.ClientResponse, limit_bytes: int) -> bytes:
    """The body, or just past `limit_bytes` of it (content.read(n) alone returns only what has arrived)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit_bytes:
            break
    return bytes(body)


async def read_json(response: aiohttp.ClientResponse, provider: str, what: str) -> dict[str, Any]:
    raw = await read_bounded(response, MAX_RESPONSE_BYTES)
    if len(raw) > MAX_RESPONSE_BYTES:
        raise fail(ProviderUnavailable, provider, f"{what} answer is larger than {MAX_RESPONSE_BYTES} bytes")
    if response.content_type == "application/jwt":
        raise fail(ProviderMisconfigured, provider, f"{what} answers with a signed JWT, which is not supported",
                   hint="configure the client at the provider for plain JSON userinfo")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise fail(ProviderUnavailable, provider, f"{what} answer is not JSON") from exc
    if not isinstance(body, dict):
        raise fail(ProviderUnavailable, provider, f"{what} answer is not a JSON object")
    return body


def oauth_error(body: Mapping[str, Any]) -> str:
    """RFC 6749 §5.2 `error` (a restricted ASCII code) and a bounded, printable `error_description`."""
    code = str(body.get("error", "no error code"))
    code = code if code.replace("_", "").isalnum() and len(code) <= 64 else "an unrecognised error"
    description = body.get("error_description")
    if isinstance(description, str) and description:
        printable = "".join(ch for ch in description[:200] if ch.isprintable())
        return f"{code} ({printable})"
    return code
