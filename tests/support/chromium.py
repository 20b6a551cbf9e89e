"""Debian's headless Chromium driven over the DevTools protocol: pages, cookies and a virtual authenticator.

Just enough CDP for login tests: one browser per fixture, one target per `Page`, commands over the browser's
websocket with flattened sessions (Target.attachToTarget flatten=true). No browser download: Chromium must be
the Debian package (`.ci/run` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")


class CdpError(RuntimeError):
    """Chromium answered a DevTools command with an error."""


class Chromium:
    """A running headless Chromium and its DevTools websocket."""

    def __init__(self, process: subprocess.Popen[bytes], http: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse) -> None:
        self.process = process
        self._http = http
        self._ws = ws
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[tuple[str, str | None, asyncio.Queue[dict[str, Any]]]] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def launch(cls, user_data_dir: Path, timeout_s: float = 30.0) -> Chromium:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise RuntimeError("chromium is not installed (apt-get install -y --no-install-recommends chromium)")
        user_data_dir.mkdir(parents=True, exist_ok=True)
        with (user_data_dir / "chromium.log").open("wb") as log:  # the child keeps its own copy of the fd
            process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
                                       stdout=subprocess.DEVNULL, stderr=log)
        port_file = user_data_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"chromium did not start; see {user_data_dir / 'chromium.log'}")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        return cls(process, http, ws)

    async def send(self, method: str, session_id: str | None = None, **params: Any) -> dict[str, Any]:
        """One DevTools command; its `result`, or CdpError."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session_id:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = future
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        return dict(reply.get("result", {}))

    def listen(self, method: str, session_id: str | None) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._listeners.append((method, session_id, queue))
        return queue

    def unlisten(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._listeners = [entry for entry in self._listeners if entry[2] is not queue]

    async def new_page(self) -> Page:
        """A tab in its own browser context: no cookies or storage shared with other pages."""
        context = await self.send("Target.createBrowserContext")
        target = await self.send("Target.createTarget", url="about:blank",
                                 browserContextId=context["browserContextId"])
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = Page(self, target["targetId"], attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close")
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._ws.close()
        await self._http.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if "id" in message:
                future = self._waiting.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            for method, session_id, queue in self._listeners:
                if message.get("method") == method and session_id in (None, message.get("sessionId")):
                    queue.put_nowait(message.get("params", {}))


class Page:
    """One tab."""

    def __init__(self, browser: Chromium, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, self.session_id, **params)

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event of the page that ends up displayed (after redirects)."""
        loaded = self.browser.listen("Page.loadEventFired", self.session_id)
        try:
            reply = await self.send("Page.navigate", url=url)
            if reply.get("errorText"):
                raise CdpError(f"navigating to {url}: {reply['errorText']}")
            await asyncio.wait_for(loaded.get(), 30)
        finally:
            self.browser.unlisten(loaded)

    async def evaluate(self, expression: str) -> Any:
        """Run JavaScript as if from a user gesture (WebAuthn may want one); awaits promises."""
        reply = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                                returnByValue=True, userGesture=True)
        if "exceptionDetails" in reply:
            raise CdpError(f"{expression}: {reply['exceptionDetails'].get('exception', {}).get('description')}")
        return reply.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        """Poll a JavaScript expression until it is truthy (across navigations) and return its value."""
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(expression)
                if value:
                    return value
            except CdpError as exc:  # the page may be between documents
                last_error = str(exc)
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}; page: {await self.text()!r} {last_error}")

    async def text(self) -> str:
        with contextlib.suppress(CdpError):
            return str(await self.evaluate("document.body ? document.body.innerText : ''"))
        return ""

    async def url(self) -> str:
        return str(await self.evaluate("location.href"))

    async def set_cookie(self, name: str, value: str, url: str, path: str = "/") -> None:
        await self.send("Network.setCookie", name=name, value=value, url=url, path=path, httpOnly=True,
                        sameSite="Lax")

    async def cookies(self, url: str) -> dict[str, str]:
        reply = await self.send("Network.getCookies", urls=[url])
        return {c["name"]: c["value"] for c in reply.get("cookies", [])}

    async def clear_cookies(self) -> None:
        await self.send("Network.clearBrowserCookies")

    async def add_virtual_authenticator(self, *, is_user_verified: bool = True) -> str:
        """A CTAP2 platform authenticator with resident keys and user verification; returns its id."""
        await self.send("WebAuthn.enable", enableUI=False)
        reply = await self.send("WebAuthn.addVirtualAuthenticator", options={
            "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
            "isUserVerified": is_user_verified, "automaticPresenceSimulation": True,
        })
        return str(reply["authenticatorId"])

    async def remove_virtual_authenticator(self, authenticator_id: str) -> None:
        await self.send("WebAuthn.removeVirtualAuthenticator", authenticatorId=authenticator_id)

    async def set_user_verified(self, authenticator_id: str, is_user_verified: bool) -> None:
        await self.send("WebAuthn.setUserVerified", authenticatorId=authenticator_id,
                        isUserVerified=is_user_verified)

    async def credentials(self, authenticator_id: str) -> list[dict[str, Any]]:
        reply = await self.send("WebAuthn.getCredentials", authenticatorId=authenticator_id)
        return list(reply.get("credentials", []))

    async def close(self) -> None:
        with contextlib.suppress(CdpError):
            await self.browser.send("Target.closeTarget", targetId=self.target_id)
