"""What the reconciler tells `pgwarden status`: Flux-shaped conditions, the last attempts, the objects.

Typed errors map to a condition reason here, in one place. Nothing in a status ever holds a
secret value: error texts come from our own errors, which name places, never values.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from proxy.pgwire.errors import PgwardenError
from proxy.snapshot import Snapshot
from reconciler.errors import ConfigError, DecryptionFailed, ManifestErrors
from reconciler.source import UntrustedRevision

HISTORY = 5


class Reason(StrEnum):
    """Why a condition is what it is (Flux's vocabulary)."""

    PROGRESSING = "Progressing"
    RECONCILIATION_SUCCEEDED = "ReconciliationSucceeded"
    ARTIFACT_FAILED = "ArtifactFailed"
    VERIFICATION_FAILED = "VerificationFailed"
    VALIDATION_FAILED = "ValidationFailed"
    DECRYPTION_FAILED = "DecryptionFailed"
    BUILD_FAILED = "BuildFailed"
    APPLY_FAILED = "ApplyFailed"
    PRUNE_FAILED = "PruneFailed"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    SUSPENDED = "Suspended"


class ReconcileError(PgwardenError):
    """A stage failed. `terminal` errors wait for a new revision; others are retried with backoff."""

    def __init__(self, message: str, *, reason: Reason, terminal: bool, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.is_terminal = terminal
        self.errors = errors or [message]


def classify(exc: BaseException, *, stage: Reason) -> ReconcileError:
    """Map any stage failure to a ReconcileError: the one place that decides reason and retry."""
    if isinstance(exc, ReconcileError):
        return exc
    if isinstance(exc, UntrustedRevision):
        return ReconcileError(exc.message, reason=Reason.VERIFICATION_FAILED, terminal=True)
    if isinstance(exc, ManifestErrors):
        decryption = [e for e in exc.errors if isinstance(e, DecryptionFailed)]
        reason = Reason.DECRYPTION_FAILED if decryption else Reason.VALIDATION_FAILED
        lines = [str(e) for e in exc.errors]
        return ReconcileError(f"{len(lines)} problem(s) in the manifests", reason=reason, terminal=True, errors=lines)
    if isinstance(exc, ConfigError):
        return ReconcileError(str(exc), reason=Reason.VALIDATION_FAILED, terminal=True)
    message = exc.message if isinstance(exc, PgwardenError) else f"{type(exc).__name__}: {exc}"
    return ReconcileError(message, reason=stage, terminal=False)


@dataclass(slots=True, kw_only=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition_time: float = field(default_factory=time.time)


@dataclass(slots=True, kw_only=True)
class Attempt:
    revision: str
    started_at: float
    duration_s: float
    result: str  # "Succeeded" | "Failed"
    reason: str
    message: str
    errors: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # "changed Service/my-db"; never a value


@dataclass(slots=True, kw_only=True)
class Status:
    """Mutable by design: the reconcile loop updates it; `to_dict()` is what the API serves."""

    source: str = ""
    ref: str = ""
    path: str = "."
    suspended: bool = False
    last_applied_revision: str = ""
    last_attempted_revision: str = ""
    last_applied_at: float | None = None
    generation: int = 0
    next_retry_at: float | None = None
    conditions: dict[str, Condition] = field(default_factory=dict)
    history: deque[Attempt] = field(default_factory=lambda: deque(maxlen=HISTORY))
    objects: dict[str, list[str]] = field(default_factory=dict)
    health: dict[str, dict[str, str]] = field(default_factory=dict)  # service -> config -> "ok" | message
    inventory: list[str] = field(default_factory=list)  # "Kind/name" applied from this source
    counters: dict[str, int] = field(default_factory=lambda: {"succeeded": 0, "failed": 0})

    def set_condition(self, type_: str, status: str, reason: Reason, message: str) -> None:
        old = self.conditions.get(type_)
        changed = old is None or old.status != status
        self.conditions[type_] = Condition(
            type=type_, status=status, reason=reason.value, message=message,
            last_transition_time=time.time() if changed or old is None else old.last_transition_time,
        )

    def started(self, revision: str) -> None:
        self.last_attempted_revision = revision
        self.set_condition("Reconciling", "True", Reason.PROGRESSING, f"reconciling revision {revision}")

    def succeeded(self, revision: str, started: float, snapshot: Snapshot, generation: int,
                  inventory: list[str], changes: list[str] | None = None) -> None:
        self.last_applied_revision = revision
        self.last_applied_at = time.time()
        self.generation = generation
        self.next_retry_at = None
        self.inventory = inventory
        self.objects = {
            "Service": sorted(snapshot.services), "User": sorted(snapshot.users),
            "Group": sorted(snapshot.groups), "Secret": sorted(snapshot.secrets),
            "IdentityProvider": sorted(snapshot.identity_providers),
            "Credential": sorted(snapshot.credentials), "Policy": sorted(snapshot.policies),
        }
        message = f"applied revision {revision} (generation {generation})"
        self.set_condition("Ready", "True", Reason.RECONCILIATION_SUCCEEDED, message)
        self.conditions.pop("Reconciling", None)
        self.conditions.pop("Stalled", None)
        self.counters["succeeded"] += 1
        self.history.appendleft(Attempt(revision=revision, started_at=started, duration_s=time.time() - started,
                                        result="Succeeded", reason=Reason.RECONCILIATION_SUCCEEDED.value,
                                        message=message, changes=list(changes or [])))

    def failed(self, revision: str, started: float, error: ReconcileError, *, retry_at: float | None) -> None:
        message = f"revision {revision or '(unknown)'}: {error.message}"
        self.set_condition("Ready", "False", error.reason, message)
        if error.is_terminal:
            self.set_condition("Stalled", "True", error.reason, message + "; waiting for a new revision")
            self.conditions.pop("Reconciling", None)
        else:
            self.conditions.pop("Stalled", None)
            self.set_condition("Reconciling", "True", Reason.PROGRESSING,
                               f"retrying after {error.reason.value}: {error.message}")
        self.next_retry_at = retry_at
        self.counters["failed"] += 1
        self.history.appendleft(Attempt(revision=revision, started_at=started, duration_s=time.time() - started,
                                        result="Failed", reason=error.reason.value, message=error.message,
                                        errors=list(error.errors)))

    @property
    def is_ready(self) -> bool:
        ready = self.conditions.get("Ready")
        return ready is not None and ready.status == "True"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["conditions"] = [asdict(c) for c in self.conditions.values()]
        out["history"] = [asdict(a) for a in self.history]
        return out

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)

    @classmethod
    def load_inventory(cls, path: Path) -> list[str]:
        """The inventory a previous run saved, so prune survives restarts."""
        try:
            return list(json.loads(path.read_text()).get("inventory", []))
        except (OSError, ValueError):
            return []
