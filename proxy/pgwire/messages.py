"""PostgreSQL protocol 3.0 messages: the ones we decode, and encoders for the ones we send.

Names follow the protocol documentation (chapter 55, "Message Formats"). Everything else is
framed and forwarded untouched by the frame walker (`walker.py`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from proxy.pgwire.errors import ProtocolViolation
from proxy.pgwire.message_types import BackendType, FrontendType

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Type bytes as plain ints (the way `bytes[i]` yields them, and fast in sets and comparisons), named
# from the per-direction enums in message_types.py.
QUERY = FrontendType.QUERY.value
PARSE = FrontendType.PARSE.value
BIND = FrontendType.BIND.value
EXECUTE = FrontendType.EXECUTE.value
DESCRIBE = FrontendType.DESCRIBE.value
CLOSE = FrontendType.CLOSE.value
SYNC = FrontendType.SYNC.value
FLUSH = FrontendType.FLUSH.value
FUNCTION_CALL = FrontendType.FUNCTION_CALL.value
COPY_DATA = FrontendType.COPY_DATA.value
COPY_DONE = FrontendType.COPY_DONE.value
COPY_FAIL = FrontendType.COPY_FAIL.value
TERMINATE = FrontendType.TERMINATE.value
PASSWORD = FrontendType.PASSWORD.value

AUTHENTICATION = BackendType.AUTHENTICATION.value
PARAMETER_STATUS = BackendType.PARAMETER_STATUS.value
BACKEND_KEY_DATA = BackendType.BACKEND_KEY_DATA.value
READY_FOR_QUERY = BackendType.READY_FOR_QUERY.value
ERROR_RESPONSE = BackendType.ERROR_RESPONSE.value
NOTICE_RESPONSE = BackendType.NOTICE_RESPONSE.value
COMMAND_COMPLETE = BackendType.COMMAND_COMPLETE.value
NEGOTIATE_PROTOCOL_VERSION = BackendType.NEGOTIATE_PROTOCOL_VERSION.value

# Authentication request codes (the int32 after 'R').
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol: int
    parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """The fields of an ErrorResponse or NoticeResponse we care about (by field code)."""

    severity: str
    code: str
    message: str
    detail: str | None = None
    hint: str | None = None


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def parse_startup_packet(body: bytes) -> StartupPacket:
    """Decode the untyped first packet (length already stripped). Raises ProtocolViolation."""
    if len(body) < 4:
        raise ProtocolViolation("startup packet too short")
    code = _I32.unpack_from(body, 0)[0]
    if code == SSL_REQUEST_CODE and len(body) == 4:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and len(body) == 4:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(body) != 12:
            raise ProtocolViolation("CancelRequest must be 16 bytes long")
        pid, key = struct.unpack_from("!ii", body, 4)
        return CancelRequest(pid, key)
    if code >> 16 != 3:
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 only"
        )
    return StartupMessage(code, _parse_parameters(body[4:]))


def _parse_parameters(raw: bytes) -> dict[str, str]:
    if not raw.endswith(b"\x00"):
        raise ProtocolViolation("startup packet parameters are not terminated")
    parts = raw[:-1].split(b"\x00")
    if parts[-1] != b"":
        raise ProtocolViolation("startup packet has a parameter name without a value")
    parts.pop()  # each name and value ends in NUL; the list itself ends in one more
    if len(parts) % 2:
        raise ProtocolViolation("startup packet has a parameter name without a value")
    params: dict[str, str] = {}
    for i in range(0, len(parts), 2):
        try:
            name, value = parts[i].decode("utf-8"), parts[i + 1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("startup packet parameters must be UTF-8") from exc
        if not name:
            raise ProtocolViolation("startup packet has an empty parameter name")
        params[name] = value
    return params


def parse_error_fields(body: bytes) -> ErrorFields:
    """Decode an ErrorResponse/NoticeResponse body. Unknown fields are ignored."""
    fields: dict[str, str] = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return ErrorFields(
        severity=fields.get("V", fields.get("S", "ERROR")),
        code=fields.get("C", "XX000"),
        message=fields.get("M", ""),
        detail=fields.get("D"),
        hint=fields.get("H"),
    )


def parse_cstring(body: bytes | memoryview, offset: int = 0) -> tuple[bytes, int]:
    """Return the NUL-terminated string at offset and the offset after its NUL."""
    raw = bytes(body)
    end = raw.find(b"\x00", offset)
    if end < 0:
        raise ProtocolViolation("string is not NUL-terminated")
    return raw[offset:end], end + 1


# --- encoders -------------------------------------------------------------------------------


def encode_message(type_byte: int, body: bytes = b"") -> bytes:
    return bytes((type_byte,)) + _I32.pack(len(body) + 4) + body


def encode_startup_message(parameters: dict[str, str], protocol: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(protocol)
    for name, value in parameters.items():
        body += name.encode() + b"\x00" + value.encode() + b"\x00"
    body += b"\x00"
    return _I32.pack(len(body) + 4) + body


def encode_ssl_request() -> bytes:
    return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


def encode_cancel_request(process_id: int, secret_key: int) -> bytes:
    return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, process_id, secret_key)


def encode_error_response(
    message: str,
    *,
    code: str,
    severity: str = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
    notice: bool = False,
) -> bytes:
    """ErrorResponse (or NoticeResponse) with S/V/C/M and optional D/H fields."""
    body = b"S" + severity.encode() + b"\x00V" + severity.encode() + b"\x00"
    body += b"C" + code.encode() + b"\x00M" + message.encode("utf-8") + b"\x00"
    if detail:
        body += b"D" + detail.encode("utf-8") + b"\x00"
    if hint:
        body += b"H" + hint.encode("utf-8") + b"\x00"
    return encode_message(NOTICE_RESPONSE if notice else ERROR_RESPONSE, body + b"\x00")


def encode_authentication(code: int, extra: bytes = b"") -> bytes:
    return encode_message(AUTHENTICATION, _I32.pack(code) + extra)


def encode_backend_key_data(process_id: int, secret_key: int) -> bytes:
    return encode_message(BACKEND_KEY_DATA, struct.pack("!ii", process_id, secret_key))


def encode_parameter_status(name: str, value: str) -> bytes:
    return encode_message(PARAMETER_STATUS, name.encode() + b"\x00" + value.encode() + b"\x00")


def encode_ready_for_query(status: bytes = b"I") -> bytes:
    return encode_message(READY_FOR_QUERY, status)


def encode_password_message(data: bytes) -> bytes:
    return encode_message(PASSWORD, data)


def encode_sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return encode_message(PASSWORD, mechanism.encode() + b"\x00" + _I32.pack(len(data)) + data)


def encode_terminate() -> bytes:
    return encode_message(TERMINATE)


def encode_query(sql: str) -> bytes:
    return encode_message(QUERY, sql.encode("utf-8") + b"\x00")
