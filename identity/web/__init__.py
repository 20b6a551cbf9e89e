"""The auth server: login pages and flows served on `pgwarden up --http-listen`.

flow.py holds the seam every login method plugs into (LoginFlow, LoginResult, AuthServer.finish_login);
each method lives in a module of its own (passkeys, TOTP, device here; OIDC, GitHub and SAML in
identity/providers/). exchange.py, client_credentials.py and renewal.py serve the token, refresh and certificate
endpoints. Every route is bound to an `identity.host.IdentityHost`, never to the proxy server.
"""
