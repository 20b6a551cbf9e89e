"""What identity asks of the process that serves it: the live snapshot, the session authority, the client CA,
and a way to end the database connections of revoked Sessions. The proxy server satisfies it; identity never
imports the proxy server.
"""

from __future__ import annotations

from typing import Protocol

from identity.certs import ClientCertificateAuthority
from identity.sessions import SessionAuthority
from proxy.snapshot import Snapshot


class LiveView(Protocol):
    """The snapshot in force now; read it once per request (a reload swaps the whole view)."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def view(self) -> Snapshot:
        """The snapshot with grants outside their validity window taken out (what routing decides from)."""
        ...


class IdentityHost(Protocol):
    """The seam between identity's web and API routes and the process that serves clients."""

    @property
    def live(self) -> LiveView: ...

    @property
    def identity(self) -> SessionAuthority: ...

    @property
    def client_ca(self) -> ClientCertificateAuthority | None: ...

    async def revoke_identity_sessions(self, session_ids: list[str], *, reason: str) -> int:
        """End every database connection opened with these identity Sessions; returns how many."""
        ...
