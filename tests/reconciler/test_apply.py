"""Apply planning: desired wins, foreign objects are kept, our vanished objects are pruned, empty is refused."""

from __future__ import annotations

import asyncio

import pytest

from proxy.snapshot import Group, Secret, SecretValue, Snapshot, User
from reconciler.apply import InMemoryTarget, changes, plan
from reconciler.status import ReconcileError


def snap(users: list[str], secrets: list[str] = ()) -> Snapshot:  # type: ignore[assignment]
    return Snapshot(users={u: User(name=u) for u in users},
                    secrets={s: Secret(name=s, value=SecretValue("v")) for s in secrets},
                    groups={"g": Group(name="g")})


def test_objects_we_applied_before_are_pruned_and_foreign_ones_kept() -> None:
    live = snap(["alice", "bob", "manual"])
    the_plan = plan(snap(["alice"]), live, ["User/alice", "User/bob", "Group/g"])
    assert sorted(the_plan.snapshot.users) == ["alice", "manual"]
    assert the_plan.pruned == ["User/bob"]
    assert the_plan.kept == ["User/manual"]
    assert "User/manual" not in the_plan.inventory and "User/alice" in the_plan.inventory


def test_empty_desired_state_is_refused_unless_allowed() -> None:
    with pytest.raises(ReconcileError, match="no objects") as err:
        plan(Snapshot(), snap(["alice"]), ["User/alice"])
    assert err.value.is_terminal
    assert plan(Snapshot(), snap(["alice"]), ["User/alice"], allow_empty=True).snapshot.users == {}


def test_swap_reports_generation() -> None:
    target = InMemoryTarget()
    the_plan = plan(snap(["alice"]), target.current(), [])
    assert asyncio.run(changes(target, the_plan)) == 2
    assert target.current() is the_plan.snapshot
