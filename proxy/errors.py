"""Errors the proxy raises on purpose, each carrying the SQLSTATE a client will see.

PgwardenError
├── ProtocolViolation       08P01 (defined in proxy.pgwire.errors, re-exported here)
├── AuthenticationFailed    28000 / 28P01
├── UnknownService          3D000
├── AccessDenied            42501; names the policy rule that decided
├── UpstreamUnavailable     08006
├── AdminShutdown           57P01; the proxy is draining (SIGTERM) and ends the session
└── SnapshotRejected        the admin API refused a snapshot; nothing changed
    ├── SnapshotInvalid     it cannot be compiled: the same snapshot is always refused
    ├── WorkerUnreachable   a worker could not be asked: a retry may succeed
    └── SnapshotSuperseded  a newer reload went live while this one compiled; it is dropped
"""

from __future__ import annotations

from proxy.pgwire.errors import PgwardenError, ProtocolViolation

__all__ = [
    "AccessDenied",
    "AdminShutdown",
    "AuthenticationFailed",
    "PgwardenError",
    "ProtocolViolation",
    "SnapshotInvalid",
    "SnapshotRejected",
    "SnapshotSuperseded",
    "UnknownService",
    "UpstreamUnavailable",
    "WorkerUnreachable",
]


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


class AdminShutdown(PgwardenError):
    """The proxy is shutting down (drained after SIGTERM); the client should reconnect, to another replica."""

    sqlstate = "57P01"


class SnapshotRejected(PgwardenError):
    """A snapshot could not be applied; the previous one stays live."""

    sqlstate = "XX000"


class SnapshotInvalid(SnapshotRejected):
    """The snapshot cannot be compiled (a rule, a policy); applying it again would fail the same way."""


class WorkerUnreachable(SnapshotRejected):
    """A worker process could not be reached or did not answer; a later apply may succeed."""


class SnapshotSuperseded(SnapshotRejected):
    """A reload asked for later went live while this one compiled: swapping it in now would go back in time."""
