"""Apply a desired snapshot to the live proxy: keep what others applied, prune what we applied before.

`LiveTarget` is the seam (owned here, its user): the embedded proxy satisfies it in `pgwarden up`,
an in-memory one in tests. The swap itself is one reference assignment inside the proxy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from proxy.errors import SnapshotInvalid
from proxy.snapshot import Snapshot
from reconciler.errors import EmptyRevisionRefused, SnapshotRefused, TargetUnavailable

T = TypeVar("T")

KINDS = ("Service", "User", "Group", "Secret", "IdentityProvider", "Credential", "Policy")


class LiveTarget(Protocol):
    def current(self) -> Snapshot: ...

    async def swap(self, snapshot: Snapshot) -> int:
        """Make `snapshot` live atomically; returns its generation. Raises on refusal, changing nothing:
        `proxy.errors.SnapshotInvalid` when the snapshot itself cannot be compiled.

        A coroutine: the proxy compiles the snapshot off its event loop before the one-reference swap."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    snapshot: Snapshot  # what will be live
    inventory: list[str]  # "Kind/name" this source owns after the apply
    pruned: list[str]  # owned before, gone from the desired state
    kept: list[str]  # live objects another writer applied; never touched


def _names(snapshot: Snapshot) -> dict[str, dict[str, object]]:
    return {"Service": dict(snapshot.services), "User": dict(snapshot.users),
            "Group": dict(snapshot.groups), "Secret": dict(snapshot.secrets),
            "IdentityProvider": dict(snapshot.identity_providers), "Credential": dict(snapshot.credentials),
            "Policy": dict(snapshot.policies)}


def plan(desired: Snapshot, live: Snapshot, previous_inventory: list[str], *, allow_empty: bool = False) -> Plan:
    """Desired objects win; live objects not in our inventory are kept; ours that vanished are pruned."""
    desired_objects = _names(desired)
    if not allow_empty and not any(desired_objects.values()):
        raise EmptyRevisionRefused(
            "the revision has no objects: refusing to remove everything (set allowEmpty to allow it)")
    owned = set(previous_inventory)
    pruned: list[str] = []
    kept: list[str] = []

    def merge(kind: str, wanted: Mapping[str, T], running: Mapping[str, T]) -> dict[str, T]:
        merged = dict(wanted)
        for name, obj in running.items():
            if name in merged:
                continue
            key = f"{kind}/{name}"
            if key in owned:
                pruned.append(key)
            else:
                merged[name] = obj
                kept.append(key)
        return merged

    snapshot = replace(
        desired,
        services=merge("Service", desired.services, live.services),
        users=merge("User", desired.users, live.users),
        groups=merge("Group", desired.groups, live.groups),
        secrets=merge("Secret", desired.secrets, live.secrets),
        identity_providers=merge("IdentityProvider", desired.identity_providers, live.identity_providers),
        credentials=merge("Credential", desired.credentials, live.credentials),
        policies=merge("Policy", desired.policies, live.policies),
    )
    inventory = sorted(f"{kind}/{name}" for kind, objects in desired_objects.items() for name in objects)
    return Plan(snapshot=snapshot, inventory=inventory, pruned=sorted(pruned), kept=sorted(kept))


async def changes(target: LiveTarget, the_plan: Plan) -> int:
    """Swap the planned snapshot in and return the live generation.

    Raises SnapshotRefused (terminal) when the proxy cannot compile it, TargetUnavailable otherwise.
    """
    try:
        return await target.swap(the_plan.snapshot)
    except SnapshotInvalid as exc:  # the same snapshot would be refused again: wait for a new revision
        raise SnapshotRefused(f"the proxy refused the snapshot: {exc}") from exc
    except Exception as exc:  # a worker down, a socket timeout: the next attempt may succeed
        raise TargetUnavailable(f"the proxy refused the snapshot: {exc}") from exc


class InMemoryTarget:
    """A LiveTarget without a proxy, for tests and `--dry-run` style checks."""

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.snapshot = snapshot or Snapshot()
        self.generation = 1

    def current(self) -> Snapshot:
        return self.snapshot

    async def swap(self, snapshot: Snapshot) -> int:
        self.snapshot = snapshot
        self.generation += 1
        return self.generation
