"""Client-side authentication answers: cleartext, MD5, and SCRAM's refusal of a forged server."""

from __future__ import annotations

import hashlib

import pytest

from proxy.pgwire import messages as m
from proxy.pgwire.auth import UpstreamAuthenticator, UpstreamAuthError, saslprep


def test_cleartext_sends_password() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw")
    assert auth.respond(m.AUTH_CLEARTEXT, b"") == m.encode_password_message(b"pw\x00")


def test_md5_follows_postgres_formula() -> None:
    auth = UpstreamAuthenticator(user="md5_user", password="secret")
    inner = hashlib.md5(b"secretmd5_user").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + b"salt").hexdigest()
    assert auth.respond(m.AUTH_MD5, b"salt") == m.encode_password_message(expected.encode() + b"\x00")


def test_scram_rejects_wrong_server_signature() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw")
    first = auth.respond(m.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    assert first is not None and b"n,,n=,r=" in first
    nonce = first.split(b"r=")[1].decode()
    auth.respond(m.AUTH_SASL_CONTINUE, f"r={nonce}xyz,s=c2FsdA==,i=4096".encode())
    with pytest.raises(UpstreamAuthError, match="server signature does not match"):
        auth.respond(m.AUTH_SASL_FINAL, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


def test_scram_refuses_foreign_nonce() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw")
    auth.respond(m.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    with pytest.raises(UpstreamAuthError, match="nonce"):
        auth.respond(m.AUTH_SASL_CONTINUE, b"r=other,s=c2FsdA==,i=4096")


def test_scram_plus_chosen_when_tls_and_offered() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw", tls_server_end_point=b"\x01" * 32)
    first = auth.respond(m.AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")
    assert auth.mechanism == "SCRAM-SHA-256-PLUS"
    assert first is not None and b"p=tls-server-end-point,," in first


def test_unsupported_method_is_a_clear_error() -> None:
    with pytest.raises(UpstreamAuthError, match="unsupported authentication method"):
        UpstreamAuthenticator(user="u", password="pw").respond(7, b"")  # GSSAPI


def test_saslprep_maps_non_ascii_spaces() -> None:
    assert saslprep("pass\u00a0word") == b"pass word"
    assert saslprep("plain") == b"plain"
