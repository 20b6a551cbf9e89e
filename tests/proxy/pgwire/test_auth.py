"""Client-side authentication answers: SCRAM only by default, its refusal of a forged server, and cleartext
and MD5 only when the config names them and TLS verified the server."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from proxy.pgwire import messages as m
from proxy.pgwire.auth import UpstreamAuthenticator, UpstreamAuthError, saslprep
from proxy.pgwire.auth_mechanisms import AuthMechanism
from proxy.pgwire.errors import ProtocolViolation

VERIFIED_LEGACY: dict[str, Any] = {
    "mechanisms": (AuthMechanism.SCRAM_SHA_256, AuthMechanism.MD5, AuthMechanism.PASSWORD), "server_verified": True,
}


def test_cleartext_sends_password_when_named_and_server_verified() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw", **VERIFIED_LEGACY)
    assert auth.respond(m.AUTH_CLEARTEXT, b"") == m.encode_password_message(b"pw\x00")
    auth.respond(m.AUTH_OK, b"")
    assert auth.is_done


def test_md5_follows_postgres_formula_when_named_and_server_verified() -> None:
    auth = UpstreamAuthenticator(user="md5_user", password="secret", **VERIFIED_LEGACY)
    inner = hashlib.md5(b"secretmd5_user").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + b"salt").hexdigest()
    assert auth.respond(m.AUTH_MD5, b"salt") == m.encode_password_message(expected.encode() + b"\x00")


@pytest.mark.parametrize("code, payload, asked", [(m.AUTH_CLEARTEXT, b"", "a cleartext password"),
                                                  (m.AUTH_MD5, b"salt", "an MD5 password hash")])
def test_legacy_mechanisms_refused_by_default(code: int, payload: bytes, asked: str) -> None:
    auth = UpstreamAuthenticator(user="u", password="hunter2-secret", server_verified=True)
    with pytest.raises(UpstreamAuthError) as err:
        auth.respond(code, payload)
    assert err.value.message == f"it asked for {asked}; the config allows SCRAM_SHA_256 only (postgres.auth.mechanisms)"
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("code, payload", [(m.AUTH_CLEARTEXT, b""), (m.AUTH_MD5, b"salt")])
def test_legacy_mechanisms_refused_without_verified_tls_even_when_named(code: int, payload: bytes) -> None:
    auth = UpstreamAuthenticator(user="u", password="pw", mechanisms=VERIFIED_LEGACY["mechanisms"],
                                 server_verified=False)
    with pytest.raises(UpstreamAuthError, match="only over TLS that verifies the server"):
        auth.respond(code, payload)


def test_authentication_ok_without_any_exchange_refused_when_a_password_is_configured() -> None:
    with pytest.raises(UpstreamAuthError, match="without asking for the password"):
        UpstreamAuthenticator(user="u", password="pw").respond(m.AUTH_OK, b"")
    trusting = UpstreamAuthenticator(user="u", password="pw", mechanisms=(AuthMechanism.TRUST,), server_verified=True)
    trusting.respond(m.AUTH_OK, b"")
    assert trusting.is_done


def test_authentication_ok_without_any_exchange_accepted_when_no_password_is_configured() -> None:
    auth = UpstreamAuthenticator(user="u", password=None)
    auth.respond(m.AUTH_OK, b"")
    assert auth.is_done


def _server_final(client_final: bytes, first_reply: bytes, server_first: str, password: str) -> bytes:
    """What a real server holding `password` answers, computed independently of the client code."""
    client_first_bare = first_reply[first_reply.index(b"n=,r="):].decode()
    without_proof = client_final[5:].decode().rsplit(",p=", 1)[0]
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    return b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))


def test_scram_login_completes_only_after_a_valid_server_signature() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw")
    first = auth.respond(m.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    assert first is not None
    nonce = first.split(b"r=")[1].decode()
    server_first = f"r={nonce}xyz,s=c2FsdA==,i=4096"
    final = auth.respond(m.AUTH_SASL_CONTINUE, server_first.encode())
    assert final is not None
    auth.respond(m.AUTH_SASL_FINAL, _server_final(final, first, server_first, "pw"))
    auth.respond(m.AUTH_OK, b"")
    assert auth.is_done and auth.mechanism == "SCRAM-SHA-256"


def test_scram_refuses_authentication_ok_before_server_final() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw")
    first = auth.respond(m.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    assert first is not None
    nonce = first.split(b"r=")[1].decode()
    auth.respond(m.AUTH_SASL_CONTINUE, f"r={nonce}xyz,s=c2FsdA==,i=4096".encode())
    with pytest.raises(UpstreamAuthError, match="before SCRAM's server-final message"):
        auth.respond(m.AUTH_OK, b"")
    assert not auth.is_done


def test_scram_final_out_of_order_is_a_protocol_violation() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw")
    auth.respond(m.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    with pytest.raises(ProtocolViolation):
        auth.respond(m.AUTH_SASL_FINAL, b"v=AAAA")


def test_no_second_request_after_the_exchange_began() -> None:
    auth = UpstreamAuthenticator(user="u", password="pw", **VERIFIED_LEGACY)
    auth.respond(m.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")
    with pytest.raises(ProtocolViolation):
        auth.respond(m.AUTH_CLEARTEXT, b"")


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
