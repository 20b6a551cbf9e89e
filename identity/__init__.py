"""Who a client is: tokens, identity sessions, client certificates and claim mapping.

`store/` keeps identity Sessions, device codes, passkeys and TOTP (SQLite or PostgreSQL); `providers/` logs users
in through OIDC, GitHub and SAML; `web/` serves the login pages and the token, refresh and certificate endpoints.
Identity is given the live snapshot and a session authority (`host.IdentityHost`), never the proxy server.
"""
