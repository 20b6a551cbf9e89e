"""The root error class and the protocol error, kept here so pgwire depends on nothing else."""

from __future__ import annotations


class PgwardenError(Exception):
    """Every error pgwarden raises on purpose. `sqlstate` is what a PostgreSQL client sees."""

    sqlstate = "XX000"

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint


class ProtocolViolation(PgwardenError):
    """Bytes that are not valid PostgreSQL protocol; `whose` says which side sent them."""

    sqlstate = "08P01"

    def __init__(self, message: str, *, whose: str = "client", detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.whose = whose


class MessageTooLarge(ProtocolViolation):
    """A message over the reader's limit, or more unread bytes than one such message (no more is buffered)."""
