"""A small GitHub on 127.0.0.1 for login tests: OAuth authorize + access_token, REST /user and /user/emails.

Shaped like GitHub's documentation ("Authorizing OAuth apps", REST "Users" and "Emails"), served the way
GitHub Enterprise Server serves them (web at BASE, API at BASE/api/v3), so pgwarden reaches it through an
IdentityProvider's `enterprise.baseURL` and no real GitHub host is ever contacted.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

DOCS = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"


@dataclass(kw_only=True)
class GitHubUser:
    """A GitHub account. `emails` are (address, is_primary, is_verified); `public_email` is what /user shows."""

    id: int
    login: str
    name: str = ""
    public_email: str | None = None
    emails: list[tuple[str, bool, bool]] = field(default_factory=list)

    def profile(self) -> dict[str, Any]:
        return {"login": self.login, "id": self.id, "node_id": f"U_{self.id}", "type": "User", "site_admin": False,
                "name": self.name or None, "email": self.public_email, "company": None, "blog": "",
                "html_url": f"https://github.example/{self.login}", "created_at": "2020-01-01T00:00:00Z"}


@dataclass(kw_only=True)
class FakeGitHub:
    """The fake's state. Mutable on purpose: a test picks who signs in next (`next_user`) or whether they
    decline (`is_denying`), and reads which access tokens were handed out (`issued_tokens`)."""

    client_id: str
    client_secret: str
    users: dict[str, GitHubUser] = field(default_factory=dict)
    next_user: str = ""
    is_denying: bool = False
    token_format: str = "accept"  # "accept": JSON when asked, as GitHub does; "form": always form-encoded
    url: str = ""
    issued_tokens: list[str] = field(default_factory=list)
    _codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (login, redirect_uri)
    _tokens: dict[str, str] = field(default_factory=dict)  # access token -> login
    _runner: web.AppRunner | None = None

    def add(self, user: GitHubUser) -> GitHubUser:
        self.users[user.login] = user
        return user

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/login/oauth/authorize", self._authorize)
        app.router.add_post("/login/oauth/authorize", self._authorize)
        app.router.add_post("/login/oauth/access_token", self._access_token)
        app.router.add_get("/api/v3/user", self._user)
        app.router.add_get("/api/v3/user/emails", self._emails)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- OAuth web flow ----------------------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        if request.method == "POST":
            q.update({k: str(v) for k, v in (await request.post()).items()})
        if q.get("client_id") != self.client_id:
            return web.Response(status=404, text="Not Found: unknown OAuth application")
        redirect_uri, state = q.get("redirect_uri", ""), q.get("state", "")
        if self.is_denying or q.get("decision") == "deny":
            return _redirect(redirect_uri, error="access_denied", state=state,
                             error_description="The user has denied your application access.",
                             error_uri=DOCS)
        login = q.get("login") or self.next_user
        if login not in self.users:
            # No one preset: show the page a person would see, one button per account.
            buttons = "".join(f"<button name=login value='{escape(u)}'>Authorize as {escape(u)}</button>"
                              for u in self.users)
            hidden = "".join(f"<input type=hidden name='{escape(k)}' value='{escape(v)}'>"
                             for k, v in q.items() if k != "login")
            return web.Response(content_type="text/html", text=(
                f"<form method=post action='/login/oauth/authorize'>{hidden}{buttons}"
                "<button name=decision value=deny>Cancel</button></form>"))
        code = secrets.token_hex(10)
        self._codes[code] = (login, redirect_uri)
        return _redirect(redirect_uri, code=code, state=state)

    async def _access_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return self._token_answer(request, {"error": "incorrect_client_credentials", "error_description":
                                                "The client_id and/or client_secret passed are incorrect.",
                                                "error_uri": DOCS})
        grant = self._codes.pop(str(form.get("code", "")), None)  # codes are single use
        if grant is None:
            return self._token_answer(request, {"error": "bad_verification_code", "error_description":
                                                "The code passed is incorrect or expired.", "error_uri": DOCS})
        login, redirect_uri = grant
        if form.get("redirect_uri") and form.get("redirect_uri") != redirect_uri:
            return self._token_answer(request, {"error": "redirect_uri_mismatch", "error_description":
                                                "The redirect_uri MUST match the registered callback URL.",
                                                "error_uri": DOCS})
        token = "gho_" + secrets.token_urlsafe(27)
        self._tokens[token] = login
        self.issued_tokens.append(token)
        return self._token_answer(request, {"access_token": token, "scope": "read:user,user:email",
                                            "token_type": "bearer"})

    def _token_answer(self, request: web.Request, body: dict[str, str]) -> web.Response:
        # GitHub answers HTTP 200 even for errors, form-encoded unless the client asked for JSON.
        if self.token_format == "accept" and "application/json" in request.headers.get("Accept", ""):
            return web.json_response(body)
        return web.Response(text=urlencode(body), content_type="application/x-www-form-urlencoded")

    # --- REST API ------------------------------------------------------------------------------------------------

    def _caller(self, request: web.Request) -> GitHubUser | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        login = self._tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        return self.users.get(login) if login else None

    async def _user(self, request: web.Request) -> web.Response:
        user = self._caller(request)
        if user is None:
            return _bad_credentials()
        return web.json_response(user.profile())

    async def _emails(self, request: web.Request) -> web.Response:
        user = self._caller(request)
        if user is None:
            return _bad_credentials()
        return web.json_response([{"email": address, "primary": primary, "verified": verified,
                                   "visibility": "private" if primary else None}
                                  for address, primary, verified in user.emails])


def _redirect(redirect_uri: str, **params: str) -> web.Response:
    return web.Response(status=302, headers={"Location": f"{redirect_uri}?{urlencode(params)}"})


def _bad_credentials() -> web.Response:
    return web.json_response({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
                             status=401)
