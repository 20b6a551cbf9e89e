"""The client side of PostgreSQL authentication: SCRAM-SHA-256 and -PLUS; cleartext and MD5 when allowed.

`UpstreamAuthenticator.respond(code, payload)` takes one AuthenticationRequest and returns the
bytes to send back (or None when nothing is to be sent), as httpx's `auth_flow` does. No I/O.
SCRAM follows RFC 5802/7677 and PostgreSQL's `fe-auth-scram.c`.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import hmac
import secrets
import stringprep
import struct
import unicodedata
from collections.abc import Iterable

from proxy.errors import PgwardenError
from proxy.pgwire.auth_mechanisms import DEFAULT_AUTH_MECHANISMS, AuthMechanism
from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.messages import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    encode_password_message,
    encode_sasl_initial_response,
)


class UpstreamAuthError(PgwardenError):
    """The upstream asked for something we cannot do, or its SCRAM proof was wrong."""

    sqlstate = "28000"


@functools.lru_cache(maxsize=1024)
def _salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    # 4096 PBKDF2 rounds cost ~2 ms; reconnects to the same role reuse the result (memory only).
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations)


def saslprep(password: str) -> bytes:
    """RFC 4013 SASLprep; like libpq, fall back to the raw bytes when the password is not valid."""
    if password.isascii():
        return password.encode()
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in password if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    for ch in normalized:
        if (
            stringprep.in_table_c12(ch)
            or stringprep.in_table_c21_c22(ch)
            or stringprep.in_table_c3(ch)
            or stringprep.in_table_c4(ch)
            or stringprep.in_table_c5(ch)
            or stringprep.in_table_c6(ch)
            or stringprep.in_table_c7(ch)
            or stringprep.in_table_c8(ch)
            or stringprep.in_table_c9(ch)
            or stringprep.in_table_a1(ch)
        ):
            return password.encode()
    return normalized.encode()


_ALLOWED_WHERE = "(postgres.auth.mechanisms)"
_ASKED_FOR = {
    AuthMechanism.PASSWORD: "a cleartext password",
    AuthMechanism.MD5: "an MD5 password hash",
    AuthMechanism.TRUST: "nothing: it let us in without asking for the password the config holds",
}


class _State(enum.Enum):
    START = "start"
    SCRAM_FIRST_SENT = "scram-first-sent"
    SCRAM_FINAL_SENT = "scram-final-sent"
    SCRAM_VERIFIED = "scram-verified"
    PASSWORD_SENT = "password-sent"  # MD5 or cleartext, allowed by the config over verified TLS
    DONE = "done"


class UpstreamAuthenticator:
    """Answers the upstream's authentication requests for one login.

    The password leaves only by a mechanism the config names (`mechanisms`, default SCRAM-SHA-256 only);
    MD5, cleartext and trust additionally need `server_verified` (TLS that verified the server's
    certificate). AuthenticationOk ends the login only once the server has proved itself: after a valid
    SCRAM server signature, after an allowed MD5/cleartext reply over verified TLS, or straight away when
    there is no password at stake (none configured, or TRUST allowed).
    """

    def __init__(self, *, user: str, password: str | None, tls_server_end_point: bytes | None = None,
                 mechanisms: Iterable[AuthMechanism] = DEFAULT_AUTH_MECHANISMS,
                 server_verified: bool = False) -> None:
        self._user = user
        self._password = password
        self._cbind = tls_server_end_point  # hash of the server certificate, when TLS is on
        self._allowed = frozenset(mechanisms)
        self._server_verified = server_verified
        self._state = _State.START
        self._nonce = ""
        self._client_first_bare = ""
        self._gs2_header = ""
        self._expected_server_signature = b""
        self.mechanism = ""
        self.is_done = False

    def respond(self, code: int, payload: bytes) -> bytes | None:
        if code == AUTH_OK:
            self._accept_ok()
            return None
        if self._state is not _State.START and code in (AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL):
            raise ProtocolViolation(f"authentication request {code} after the exchange began", whose="upstream")
        if code == AUTH_CLEARTEXT:
            self._permit(AuthMechanism.PASSWORD)
            self.mechanism = "password"
            reply = encode_password_message(self._require_password() + b"\x00")
            self._state = _State.PASSWORD_SENT
            return reply
        if code == AUTH_MD5:
            self._permit(AuthMechanism.MD5)
            self.mechanism = "md5"
            if len(payload) != 4:
                raise ProtocolViolation("MD5 salt must be 4 bytes", whose="upstream")
            inner = hashlib.md5(self._require_password() + self._user.encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + payload).hexdigest()
            self._state = _State.PASSWORD_SENT
            return encode_password_message(b"md5" + outer.encode() + b"\x00")
        if code == AUTH_SASL:
            self._permit(AuthMechanism.SCRAM_SHA_256)
            reply = self._scram_first(payload)
            self._state = _State.SCRAM_FIRST_SENT
            return reply
        if code == AUTH_SASL_CONTINUE:
            if self._state is not _State.SCRAM_FIRST_SENT:
                raise ProtocolViolation("SASLContinue out of order", whose="upstream")
            reply = self._scram_final(payload)
            self._state = _State.SCRAM_FINAL_SENT
            return reply
        if code == AUTH_SASL_FINAL:
            if self._state is not _State.SCRAM_FINAL_SENT:
                raise ProtocolViolation("SASLFinal out of order", whose="upstream")
            self._scram_verify(payload)
            self._state = _State.SCRAM_VERIFIED
            return None
        raise UpstreamAuthError(f"upstream requested an unsupported authentication method (code {code})")

    def _permit(self, mechanism: AuthMechanism) -> None:
        """Refuse, before anything is sent, a mechanism the config does not allow on this connection."""
        allowed = ", ".join(m.value for m in AuthMechanism if m in self._allowed)
        asked = _ASKED_FOR.get(mechanism, mechanism.value)
        if mechanism not in self._allowed:
            raise UpstreamAuthError(f"it asked for {asked}; the config allows {allowed} only {_ALLOWED_WHERE}")
        if mechanism.needs_verified_tls and not self._server_verified:
            raise UpstreamAuthError(
                f"it asked for {asked}; the config allows {mechanism.value} only over TLS that verifies the "
                f"server (sslMode VERIFY_CA or VERIFY_FULL), and this connection's server is not verified"
            )

    def _accept_ok(self) -> None:
        state = self._state
        if state is _State.START and self._password is not None:
            self._permit(AuthMechanism.TRUST)  # a server that never asked has proved nothing
        elif state in (_State.SCRAM_FIRST_SENT, _State.SCRAM_FINAL_SENT):
            raise UpstreamAuthError(
                "it sent AuthenticationOk before SCRAM's server-final message, so it never proved it knows the "
                "password: not the real server?"
            )
        elif state is _State.DONE:
            raise ProtocolViolation("AuthenticationOk twice", whose="upstream")
        self._state = _State.DONE
        self.is_done = True

    def _require_password(self) -> bytes:
        if self._password is None:
            raise UpstreamAuthError("upstream requested a password but the config has none")
        return self._password.encode()

    def _scram_first(self, payload: bytes) -> bytes:
        mechanisms = [m.decode() for m in payload.split(b"\x00") if m]
        if self._cbind is not None and "SCRAM-SHA-256-PLUS" in mechanisms:
            self.mechanism = "SCRAM-SHA-256-PLUS"
            self._gs2_header = "p=tls-server-end-point,,"
        elif "SCRAM-SHA-256" in mechanisms:
            self.mechanism = "SCRAM-SHA-256"
            # 'y': we could bind but the server did not offer it (RFC 5802 section 6).
            self._gs2_header = "y,," if self._cbind is not None else "n,,"
        else:
            raise UpstreamAuthError(f"upstream offers no supported SASL mechanism: {', '.join(mechanisms)}")
        self._require_password()
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._client_first_bare = "n=,r=" + self._nonce  # PostgreSQL ignores the SCRAM user name
        data = (self._gs2_header + self._client_first_bare).encode()
        return encode_sasl_initial_response(self.mechanism, data)

    def _scram_final(self, payload: bytes) -> bytes:
        server_first = payload.decode("utf-8", "replace")
        attrs = dict(part.split("=", 1) for part in server_first.split(",") if "=" in part)
        try:
            nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        except (KeyError, ValueError) as exc:
            raise ProtocolViolation("malformed SCRAM server-first-message", whose="upstream") from exc
        if not nonce.startswith(self._nonce) or iterations < 1:
            raise UpstreamAuthError("upstream SCRAM nonce or iteration count is invalid")
        cbind_input = self._gs2_header.encode()
        if self.mechanism == "SCRAM-SHA-256-PLUS":
            assert self._cbind is not None
            cbind_input += self._cbind
        without_proof = "c=" + base64.b64encode(cbind_input).decode() + ",r=" + nonce
        auth_message = f"{self._client_first_bare},{server_first},{without_proof}".encode()
        salted = _salted_password(saslprep(self._password or ""), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._expected_server_signature = hmac.digest(server_key, auth_message, "sha256")
        final = without_proof + ",p=" + base64.b64encode(proof).decode()
        return encode_password_message(final.encode())

    def _scram_verify(self, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace")
        if text.startswith("e="):
            raise UpstreamAuthError(f"upstream SCRAM error: {text[2:]}")
        if not text.startswith("v="):
            raise ProtocolViolation("malformed SCRAM server-final-message", whose="upstream")
        try:
            signature = base64.b64decode(text[2:].split(",")[0])
        except ValueError as exc:
            raise ProtocolViolation("malformed SCRAM server signature", whose="upstream") from exc
        if not hmac.compare_digest(signature, self._expected_server_signature):
            raise UpstreamAuthError("upstream SCRAM server signature does not match: not the real server?")


def parse_authentication(body: bytes) -> tuple[int, bytes]:
    """Split an 'R' message body into (code, payload)."""
    if len(body) < 4:
        raise ProtocolViolation("authentication message too short", whose="upstream")
    return struct.unpack_from("!i", body)[0], body[4:]
