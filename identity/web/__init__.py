"""The auth server: login pages and flows served on `pgwarden up --http-listen`.

flow.py holds the seam every login method plugs into (LoginFlow, LoginResult, AuthServer.finish_login);
each method (OIDC, GitHub, SAML, passkeys, TOTP, device) lives in a module of its own.
"""
