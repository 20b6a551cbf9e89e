"""Errors the proxy raises on purpose, each carrying the SQLSTATE a client will see.

PgwardenError
├── ProtocolViolation       08P01 (defined in proxy.pgwire.errors, re-exported here)
├── AuthenticationFailed    28000 / 28P01
├── UnknownService          3D000
├── AccessDenied            42501; names the policy rule that decided
├── UpstreamUnavailable     08006
└── SnapshotRejected        the admin API refused a snapshot; nothing changed
    ├── SnapshotInvalid     it cannot be compiled: the same snapshot is always refused
    ├── WorkerUnreachable   a worker could not be asked: a retry may succeed
    └── SnapshotSuperseded  a newer reload went live while this one compiled; it is dropped
"""

from __future__ import annotations


class PgwardenError(Exception):
    """Every error pgwarden raises on purpose. `sqlstate` is what a PostgreSQL client sees."""

    sqlstate = "XX000"

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint


class AuthenticationFailed(PgwardenError):
    """The client's credential was missing, wrong, expired or not allowed here."""

    sqlstate = "28000"


class UnknownService(PgwardenError):
    """The client asked for a service the live snapshot does not have."""

    sqlstate = "3D000"


class AccessDenied(PgwardenError):
    """A rule or policy refused the request."""

    sqlstate = "42501"


class UpstreamUnavailable(PgwardenError):
    """The real database could not be reached or refused our login."""

    sqlstate = "08006"


class SnapshotRejected(PgwardenError):
    """A snapshot could not be applied; the previous one stays live."""

    sqlstate = "XX000"


class SnapshotInvalid(SnapshotRejected):
    """The snapshot cannot be compiled (a rule, a policy); applying it again would fail the same way."""


class WorkerUnreachable(SnapshotRejected):
    """A worker process could not be reached or did not answer; a later apply may succeed."""


class SnapshotSuperseded(SnapshotRejected):
    """A reload asked for later went live while this one compiled: swapping it in now would go back in time."""
