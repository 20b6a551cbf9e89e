"""PKCE (RFC 7636): the S256 code challenge of a code verifier.

One function for the three places that need it: our OIDC client (identity/providers/oidc/flows.py), our login
server checking `pgwarden login` (identity/web/flow.py), and `pgwarden login` itself.
"""

from __future__ import annotations

import base64
import hashlib


def s256_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(verifier)) without padding (RFC 7636 §4.2, code_challenge_method=S256)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode("ascii")
