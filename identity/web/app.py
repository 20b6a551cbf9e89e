"""Assemble the auth server: one AuthServer with every login method registered, ready to add its routes.

Each login method adds one line to `_register_methods`; `pgwarden up` calls `build_auth_server` and then
`auth.add_routes(app)` on its --http-listen application.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from identity.host import IdentityHost
from identity.providers.github import GitHubLogin
from identity.providers.oidc.login import OidcLogin
from identity.providers.saml import SamlLogin
from identity.web.account import Account
from identity.web.device import DeviceAuthorization
from identity.web.flow import AuthServer
from identity.web.passkeys import PasskeyMethod
from identity.web.totp import TotpMethod


def build_auth_server(host: IdentityHost, *, public_url: str,
                      cluster_info: Callable[[], dict[str, Any]] | None = None) -> AuthServer:
    """An AuthServer for `host` whose pages and redirects use `public_url` (what browsers reach)."""
    auth = AuthServer(host, public_url=public_url, cluster_info=cluster_info)
    _register_methods(auth)
    return auth


LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})
BROWSER_PATHS = ("/login", "/device", "/account")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def canonical_login_host(public_url: str) -> Middleware:
    """Send a browser that opened the pages at http://127.0.0.1:PORT to the public http://localhost:PORT.

    Cookies are per host name: a flow cookie set on 127.0.0.1 never reaches the provider's callback on localhost
    (nor do passkeys work on an IP address). Only loopback aliases of the public host are redirected, so a reverse
    proxy that rewrites Host can never cause a redirect loop.
    """
    public = urlsplit(public_url)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method == "GET" and request.path.startswith(BROWSER_PATHS) and public.hostname == "localhost"
                and request.url.host in LOOPBACK_ADDRESSES and request.url.port == (public.port or 80)):
            raise web.HTTPFound(f"{public.scheme}://{public.netloc}{request.path_qs}")
        return await handler(request)

    return middleware


def _register_methods(auth: AuthServer) -> None:
    # One line per method: IdentityProvider types (oidc, github, saml) are started from the login page;
    # pgwarden's own pages (device, passkeys, TOTP, /account) only add their routes.
    auth.register(OidcLogin())
    auth.register(GitHubLogin())
    auth.register(SamlLogin())
    auth.add_pages(DeviceAuthorization())
    account = Account(auth)  # /account: passkeys and TOTP add their sections to it
    auth.add_pages(PasskeyMethod(auth, account))
    auth.add_pages(TotpMethod(auth, account))
    auth.add_pages(account)
