"""Errors in PostgreSQL protocol bytes. pgwire imports nothing else of pgwarden but the root, proxy/errors.py.

PgwardenError              proxy/errors.py
└── ProtocolViolation      08P01; `whose` says which side sent the bytes
    └── MessageTooLarge    a message over the reader's limit; nothing more is buffered
"""

from __future__ import annotations

from proxy.errors import PgwardenError


class ProtocolViolation(PgwardenError):
    """Bytes that are not valid PostgreSQL protocol; `whose` says which side sent them."""

    sqlstate = "08P01"

    def __init__(self, message: str, *, whose: str = "client", detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.whose = whose


class MessageTooLarge(ProtocolViolation):
    """A message over the reader's limit, or more unread bytes than one such message (no more is buffered)."""
