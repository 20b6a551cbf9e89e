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

from proxy.errors import PgwardenError
from proxy.snapshot import Snapshot
from reconciler.errors import (
    EmptyRevisionRefused,
    ManifestErrors,
    ReconcileError,
    SnapshotRefused,
    TargetUnavailable,
    UnbuildableManifests,
    UndecryptableSecrets,
    UnreadableManifests,
)
from reconciler.source import SourceError, UntrustedRevision

__all__ = ["Attempt", "Condition", "ConditionStatus", "ConditionType", "Failure", "Reason", "ReconcileError", "Result",
           "Status", "classify"]

HISTORY = 5


class Reason(StrEnum):
    """Why a condition is what it is (Flux's vocabulary)."""

    PROGRESSING = "Progressing"
    RECONCILIATION_SUCCEEDED = "ReconciliationSucceeded"
    RECONCILIATION_FAILED = "ReconciliationFailed"  # an error no stage names: a bug, retried
    ARTIFACT_FAILED = "ArtifactFailed"
    VERIFICATION_FAILED = "VerificationFailed"
    VALIDATION_FAILED = "ValidationFailed"
    DECRYPTION_FAILED = "DecryptionFailed"
    BUILD_FAILED = "BuildFailed"
    EMPTY_REVISION_REFUSED = "EmptyRevisionRefused"
    APPLY_FAILED = "ApplyFailed"
    PRUNE_FAILED = "PruneFailed"
    HEALTH_CHECK_FAILED = "HealthCheckFailed"
    SUSPENDED = "Suspended"


class ConditionType(StrEnum):
    """The conditions a status carries (Flux's kstatus shape, plus Healthy and Suspended)."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    HEALTHY = "Healthy"
    SUSPENDED = "Suspended"


class ConditionStatus(StrEnum):
    """A condition's status, as Kubernetes spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Result(StrEnum):
    """How one reconcile attempt ended."""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# Most specific class first: the first match decides the reason.
_REASONS: tuple[tuple[type[ReconcileError], Reason], ...] = (
    (UntrustedRevision, Reason.VERIFICATION_FAILED),
    (SourceError, Reason.ARTIFACT_FAILED),
    (UnreadableManifests, Reason.VALIDATION_FAILED),
    (UndecryptableSecrets, Reason.DECRYPTION_FAILED),
    (UnbuildableManifests, Reason.BUILD_FAILED),
    (ManifestErrors, Reason.VALIDATION_FAILED),  # InvalidManifests, and review's mix of checks
    (EmptyRevisionRefused, Reason.EMPTY_REVISION_REFUSED),
    (SnapshotRefused, Reason.APPLY_FAILED),
    (TargetUnavailable, Reason.APPLY_FAILED),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """A failed cycle as status records it: its reason, whether it is terminal, what to show."""

    reason: Reason
    is_terminal: bool
    message: str
    errors: list[str]


def classify(exc: BaseException) -> Failure:
    """Map any stage failure to its reason and retry policy: the one place that decides them."""
    if isinstance(exc, ReconcileError):
        reason = next((r for cls, r in _REASONS if isinstance(exc, cls)), Reason.RECONCILIATION_FAILED)
        return Failure(reason=reason, is_terminal=exc.is_terminal, message=exc.message, errors=exc.errors_text)
    # Not one of ours: a bug or a library error no stage translated. Retried; its text names no value
    # (stages translate anything that could quote a manifest).
    message = exc.message if isinstance(exc, PgwardenError) else f"{type(exc).__name__}: {exc}"
    return Failure(reason=Reason.RECONCILIATION_FAILED, is_terminal=False, message=message, errors=[message])


@dataclass(slots=True, kw_only=True)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str
    last_transition_time: float = field(default_factory=time.time)


@dataclass(slots=True, kw_only=True)
class Attempt:
    revision: str
    started_at: float
    duration_s: float
    result: Result
    reason: Reason
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
    conditions: dict[ConditionType, Condition] = field(default_factory=dict)
    history: deque[Attempt] = field(default_factory=lambda: deque(maxlen=HISTORY))
    objects: dict[str, list[str]] = field(default_factory=dict)
    health: dict[str, dict[str, str]] = field(default_factory=dict)  # service -> config -> "ok" | message
    inventory: list[str] = field(default_factory=list)  # "Kind/name" applied from this source
    counters: dict[str, int] = field(default_factory=lambda: {"succeeded": 0, "failed": 0})

    def set_condition(self, type_: ConditionType, status: ConditionStatus, reason: Reason, message: str) -> None:
        old = self.conditions.get(type_)
        changed = old is None or old.status != status
        self.conditions[type_] = Condition(
            type=type_, status=status, reason=reason, message=message,
            last_transition_time=time.time() if changed or old is None else old.last_transition_time,
        )

    def started(self, revision: str) -> None:
        self.last_attempted_revision = revision
        self.set_condition(ConditionType.RECONCILING, ConditionStatus.TRUE, Reason.PROGRESSING,
                           f"reconciling revision {revision}")

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
        self.set_condition(ConditionType.READY, ConditionStatus.TRUE, Reason.RECONCILIATION_SUCCEEDED, message)
        self.conditions.pop(ConditionType.RECONCILING, None)
        self.conditions.pop(ConditionType.STALLED, None)
        self.counters["succeeded"] += 1
        self.history.appendleft(Attempt(revision=revision, started_at=started, duration_s=time.time() - started,
                                        result=Result.SUCCEEDED, reason=Reason.RECONCILIATION_SUCCEEDED,
                                        message=message, changes=list(changes or [])))

    def failed(self, revision: str, started: float, error: Failure, *, retry_at: float | None) -> None:
        message = f"revision {revision or '(unknown)'}: {error.message}"
        self.set_condition(ConditionType.READY, ConditionStatus.FALSE, error.reason, message)
        if error.is_terminal:
            self.set_condition(ConditionType.STALLED, ConditionStatus.TRUE, error.reason,
                               message + "; waiting for a new revision")
            self.conditions.pop(ConditionType.RECONCILING, None)
        else:
            self.conditions.pop(ConditionType.STALLED, None)
            self.set_condition(ConditionType.RECONCILING, ConditionStatus.TRUE, Reason.PROGRESSING,
                               f"retrying after {error.reason.value}: {error.message}")
        self.next_retry_at = retry_at
        self.counters["failed"] += 1
        self.history.appendleft(Attempt(revision=revision, started_at=started, duration_s=time.time() - started,
                                        result=Result.FAILED, reason=error.reason, message=error.message,
                                        errors=list(error.errors)))

    @property
    def is_ready(self) -> bool:
        ready = self.conditions.get(ConditionType.READY)
        return ready is not None and ready.status == ConditionStatus.TRUE

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
