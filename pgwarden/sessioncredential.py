"""The agent's hold on the saved login: the current access token, refreshed before it expires and saved back.

Refreshing swaps a token for a new one of the same Session (POST /v1/auth/refresh); once the cluster refuses
(revoked or expired Session) the credential is `ended` until the file changes, e.g. after `pgwarden login`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from pgwarden.credentials import (
    CredentialsError,
    load_credentials,
    save_credentials,
    seconds_left,
    token_expires_at,
    token_lifetime_s,
)

log = logging.getLogger("pgwarden.agent")

SESSION_ENDED = "your pgwarden session has ended: run pgwarden login"
REFRESH_MARGIN_MAX_S = 300.0  # refresh this long before expiry at most (a third of a short token's life)
RETRY_AFTER_FAILURE_S = 10.0
MAX_SLEEP_S = 3600.0


class SessionEnded(Exception):
    """The cluster refused the Session (revoked, expired); `reason` is its words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionCredential:
    """The saved login of one credentials file; `say` prints one line to the user (never the token)."""

    def __init__(self, credentials_file: Path, *, say: Callable[[str], None]) -> None:
        self.credentials_file = credentials_file
        self.say = say
        self.saved: dict[str, Any] = {}
        self._mtime = 0.0
        self._ended: str | None = None  # why the session ended, once we know
        self._lock = asyncio.Lock()
        self.http: aiohttp.ClientSession | None = None  # set by the owner once a loop runs

    @property
    def user(self) -> str:
        return str(self.saved.get("user", ""))

    def load(self, *, force: bool = False) -> None:
        """Re-read the credentials file when it changed (e.g. `pgwarden login` in another terminal)."""
        try:
            mtime = os.stat(self.credentials_file).st_mtime
        except OSError:
            mtime = 0.0
        if not force and mtime == self._mtime:
            return
        saved = load_credentials(self.credentials_file, allow_expired=True)
        if self.saved and saved.get("session") != self.saved.get("session"):
            self.say(f"using the new login of {saved.get('user')} (session {saved.get('session')})")
        if not self.saved or saved.get("session") != self.saved.get("session") or \
                token_expires_at(saved["token"]) > token_expires_at(self.saved.get("token", "")):
            self._ended = None
        self.saved, self._mtime = saved, mtime

    def refresh_due_in_s(self) -> float:
        token = self.saved["token"]
        left = seconds_left(token)
        if self._is_as_long_as_session(token):
            return left  # nothing to gain: a refreshed token cannot outlive its session
        return left - min(REFRESH_MARGIN_MAX_S, token_lifetime_s(token) / 3)

    def _is_as_long_as_session(self, token: str) -> bool:
        try:
            session_end = datetime.fromisoformat(str(self.saved.get("expiresAt") or "")).timestamp()
        except ValueError:
            return False
        return token_expires_at(token) >= session_end - 1

    async def _refresh(self) -> None:
        """Swap the token for a fresh one of the same Session and save it; mark the Session ended if refused."""
        assert self.http is not None
        token = self.saved["token"]
        url = str(self.saved["cluster"]).rstrip("/") + "/v1/auth/refresh"
        try:
            async with self.http.post(url, headers={"Authorization": f"Bearer {token}"}) as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.say(f"cannot refresh the access token at {self.saved['cluster']}: {type(exc).__name__}; will retry")
            return
        if status in (401, 403):
            self.session_ended(str(body.get("error", f"HTTP {status}")) if isinstance(body, dict) else "")
            return
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("token"), str):
            self.say(f"refreshing the access token failed with HTTP {status}; will retry")
            return
        exists = self.credentials_file.exists()
        current = load_credentials(self.credentials_file, allow_expired=True) if exists else {}
        if current and current.get("session") != self.saved.get("session"):
            self.load(force=True)  # a new login replaced ours meanwhile: keep it, drop the refresh
            return
        self.saved = {**self.saved, "token": body["token"],
                      "expiresAt": body.get("expiresAt", self.saved.get("expiresAt"))}
        save_credentials(self.credentials_file, self.saved)
        self._mtime = os.stat(self.credentials_file).st_mtime
        log.debug("access token refreshed; valid for %.0f s", seconds_left(body["token"]))

    def session_ended(self, reason: str) -> None:
        if self._ended is None:
            self.say(f"{SESSION_ENDED} ({reason})" if reason else SESSION_ENDED)
        self._ended = reason or "ended"

    async def keep_fresh(self) -> None:
        """Run forever: refresh each token a third of its life (at most 5 minutes) before it expires."""
        while True:
            due = self.refresh_due_in_s()
            if self._ended is not None or due > 0:
                await asyncio.sleep(RETRY_AFTER_FAILURE_S if self._ended is not None else min(due, MAX_SLEEP_S))
                with contextlib.suppress(CredentialsError):
                    self.load()
                continue
            async with self._lock:
                try:
                    if self._is_as_long_as_session(self.saved["token"]):
                        self.session_ended("the session expired")
                    else:
                        await self._refresh()
                except (OSError, CredentialsError) as exc:  # e.g. the credentials directory went away
                    self.say(f"cannot refresh the access token: {exc}; will retry")
            if self._ended is None and self.refresh_due_in_s() <= 0:
                await asyncio.sleep(RETRY_AFTER_FAILURE_S)

    async def current_token(self) -> str:
        """The token to present now: reloaded if the file changed, refreshed if it is due.

        Raises CredentialsError (no usable file) or SessionEnded.
        """
        async with self._lock:
            self.load()
            # Due already (the background refresh failed, or this machine slept through it): refresh now.
            if self._ended is None and self.refresh_due_in_s() <= 0 and \
                    not self._is_as_long_as_session(self.saved["token"]):
                await self._refresh()
            if self._ended is None and seconds_left(self.saved["token"]) <= 0:
                self.session_ended("the access token has expired")
            if self._ended is not None:
                raise SessionEnded(self._ended)
            return str(self.saved["token"])
