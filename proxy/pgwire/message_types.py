"""PostgreSQL message type bytes, one enum per direction (protocol docs, "Message Formats").

A type byte means different things each way: 'S' is Sync from the client and ParameterStatus from the
server, 'D' is Describe and DataRow, 'C' is Close and CommandComplete. Keep the direction in the name.
"""

from __future__ import annotations

from enum import IntEnum


class FrontendType(IntEnum):
    """Type bytes of messages a client sends (after the untyped startup packet)."""

    BIND = ord("B")
    CLOSE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    FLUSH = ord("H")
    FUNCTION_CALL = ord("F")
    PARSE = ord("P")
    PASSWORD = ord("p")  # PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse share it
    QUERY = ord("Q")
    SYNC = ord("S")
    TERMINATE = ord("X")


class BackendType(IntEnum):
    """Type bytes of messages a server sends."""

    AUTHENTICATION = ord("R")
    BACKEND_KEY_DATA = ord("K")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    COMMAND_COMPLETE = ord("C")
    COPY_BOTH_RESPONSE = ord("W")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_IN_RESPONSE = ord("G")
    COPY_OUT_RESPONSE = ord("H")
    DATA_ROW = ord("D")
    EMPTY_QUERY_RESPONSE = ord("I")
    ERROR_RESPONSE = ord("E")
    FUNCTION_CALL_RESPONSE = ord("V")
    NEGOTIATE_PROTOCOL_VERSION = ord("v")
    NO_DATA = ord("n")
    NOTICE_RESPONSE = ord("N")
    NOTIFICATION_RESPONSE = ord("A")
    PARAMETER_DESCRIPTION = ord("t")
    PARAMETER_STATUS = ord("S")
    PARSE_COMPLETE = ord("1")
    PORTAL_SUSPENDED = ord("s")
    READY_FOR_QUERY = ord("Z")
    ROW_DESCRIPTION = ord("T")


def describe_type(type_byte: int, *, is_frontend: bool) -> str:
    """`'S' (Sync)` or `'S' (ParameterStatus)`: the byte, and its message name in that direction."""
    enum = FrontendType if is_frontend else BackendType
    try:
        name = enum(type_byte).name.title().replace("_", "")
    except ValueError:
        name = "unknown"
    return f"{chr(type_byte)!r} ({name})"
