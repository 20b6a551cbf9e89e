"""Logins through identity providers: OpenID Connect (`oidc/`), GitHub (OAuth, `github`) and SAML (`saml`)."""
