"""PKCE's S256 challenge is RFC 7636's, and the login server, the OIDC client and `pgwarden login` share it."""

from __future__ import annotations

from identity.pkce import s256_challenge


def test_s256_challenge_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_a_non_ascii_verifier_gets_a_challenge_instead_of_an_exception() -> None:
    # The login server hashes whatever verifier a client sends: a stray byte must compare unequal, not crash.
    assert s256_challenge("vérifier") != s256_challenge("verifier")
