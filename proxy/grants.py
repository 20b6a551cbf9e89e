"""Grants with a validity window: Group memberships and Policy rules that hold only from/until an instant.

`effective` is the snapshot as it stands at one instant (a grant outside its window is simply absent), which
LiveSnapshot routes and decides from; `next_boundary` is when that changes next, for the proxy's timer.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from proxy.snapshot import Authorization, Policy, Snapshot, User, Validity, format_instant


class GrantKind(StrEnum):
    MEMBERSHIP = "membership"  # spec.groups entry {name, validFrom?, validUntil?} of a User
    POLICY_RULE = "policy rule"  # a rule with validFrom/validUntil in a Policy (named or inline)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """One windowed grant. `owner` names where an inline Policy lives (`User bob`); "" for a Policy document."""

    kind: GrantKind
    validity: Validity
    user: str = ""
    group: str = ""
    policy: str = ""
    rule: str = ""
    owner: str = ""

    @property
    def key(self) -> tuple[str, ...]:
        """Identifies the grant across snapshots (its window may change)."""
        return (self.kind.value, self.user, self.group, self.owner, self.policy, self.rule)

    def label(self) -> str:
        """`group "oncall" of user "bob"`, `rule "r" of policy "p"` (inline: `of User bob's inline policy "p"`)."""
        if self.kind == GrantKind.MEMBERSHIP:
            return f'group "{self.group}" of user "{self.user}"'
        where = f'{self.owner}\'s inline policy "{self.policy}"' if self.owner else f'policy "{self.policy}"'
        return f'rule "{self.rule}" of {where}'

    def window_words(self) -> str:
        """`until 2026-12-08T18:00:00Z`, `from … until …`, `from …`."""
        parts = []
        if self.validity.valid_from is not None:
            parts.append(f"from {format_instant(self.validity.valid_from)}")
        if self.validity.valid_until is not None:
            parts.append(f"until {format_instant(self.validity.valid_until)}")
        return " ".join(parts)

    def state_at(self, at: datetime.datetime) -> str:
        """`active`, `expired` or `not yet valid` at `at`."""
        v = self.validity
        if v.valid_until is not None and at >= v.valid_until:
            return "expired"
        if v.valid_from is not None and at < v.valid_from:
            return "not yet valid"
        return "active"


def windowed(snapshot: Snapshot) -> tuple[Grant, ...]:
    """Every grant of the snapshot that carries a window, memberships first, in name order."""
    found = [Grant(kind=GrantKind.MEMBERSHIP, validity=v, user=user.name, group=group)
             for user in snapshot.users.values() for group, v in user.group_windows.items()]
    found += _rule_grants(snapshot.policies.values(), owner="")
    for kind, owners in (("Service", snapshot.services), ("Group", snapshot.groups), ("User", snapshot.users)):
        for name, obj in owners.items():
            found += _rule_grants(obj.authorization.inline_policies, owner=f"{kind} {name}")
    return tuple(sorted(found, key=lambda g: g.key))


def _rule_grants(policies: Iterable[Policy], *, owner: str) -> list[Grant]:
    return [Grant(kind=GrantKind.POLICY_RULE, validity=r.validity, policy=p.name, rule=r.name, owner=owner)
            for p in policies for r in p.rules if r.validity is not None]


def next_boundary(grants: Sequence[Grant], after: datetime.datetime) -> datetime.datetime | None:
    """The first validFrom/validUntil later than `after`: when `effective` next gives a different answer."""
    bounds = [b for g in grants for b in (g.validity.valid_from, g.validity.valid_until) if b is not None and b > after]
    return min(bounds, default=None)


def expiring(grants: Sequence[Grant], at: datetime.datetime, within: datetime.timedelta) -> list[Grant]:
    """Grants active at `at` whose validUntil comes within `within`, soonest first."""
    soon = [g for g in grants if g.validity.valid_until is not None and g.validity.is_active(at)
            and g.validity.valid_until <= at + within]
    return sorted(soon, key=lambda g: (g.validity.valid_until, g.key))


def effective(snapshot: Snapshot, grants: Sequence[Grant], at: datetime.datetime) -> Snapshot:
    """The snapshot at `at`: memberships and rules outside their window removed. The same object when
    nothing is outside (the common case: no windows at all costs nothing)."""
    if all(g.validity.is_active(at) for g in grants):
        return snapshot
    users = dict(snapshot.users)
    for user in snapshot.users.values():
        if any(not v.is_active(at) for v in user.group_windows.values()):
            users[user.name] = _without_lapsed_groups(user, at)
    policies = {name: _active_rules(p, at) for name, p in snapshot.policies.items()}

    def inline(objects: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(objects)
        for name, obj in objects.items():
            a = obj.authorization
            if any(r.validity is not None for p in a.inline_policies for r in p.rules):
                out[name] = dataclasses.replace(obj, authorization=Authorization(
                    policies=a.policies, inline_policies=tuple(_active_rules(p, at) for p in a.inline_policies)))
        return out

    return dataclasses.replace(snapshot, users=inline(users), policies=policies, groups=inline(snapshot.groups),
                               services=inline(snapshot.services))


def _without_lapsed_groups(user: User, at: datetime.datetime) -> User:
    kept = tuple(g for g in user.groups if g not in user.group_windows or user.group_windows[g].is_active(at))
    manifest = dict(user.manifest)
    manifest["spec"] = {**dict(manifest.get("spec") or {}), "groups": list(kept)}  # ctx.user.spec.groups too
    return dataclasses.replace(user, groups=kept, manifest=manifest)


def _active_rules(policy: Policy, at: datetime.datetime) -> Policy:
    if all(r.validity is None or r.validity.is_active(at) for r in policy.rules):
        return policy
    return dataclasses.replace(policy, rules=tuple(r for r in policy.rules
                                                   if r.validity is None or r.validity.is_active(at)))


def crossed(before: Sequence[Grant], before_at: datetime.datetime, after: Sequence[Grant],
            after_at: datetime.datetime) -> list[Grant]:
    """Grants in both snapshots whose window, not a commit, changed whether they hold between the two instants
    (expired, or took effect), as they stand in `after`."""
    held = {g.key: g.validity.is_active(before_at) for g in before}
    return [g for g in after if g.key in held and held[g.key] != g.validity.is_active(after_at)]


def relevant(found: Sequence[Grant], snapshot: Snapshot, user: str, service: str) -> list[Grant]:
    """The windowed grants a User × Service pair may rest on: the user's memberships, and the windowed rules of
    every Policy attached to the service, the user or any Group the user is listed in (windowed or not)."""
    u, s = snapshot.users.get(user), snapshot.services.get(service)
    if u is None or s is None:
        return []
    owners = [s.authorization, u.authorization,
              *(snapshot.groups[g].authorization for g in u.groups if g in snapshot.groups)]
    named = {name for a in owners for name in a.policies}
    inline_owners = {f"Service {service}", f"User {user}", *(f"Group {g}" for g in u.groups)}
    # A membership can matter here only through a routing rule or an attached policy (either may read groups).
    reads_groups = bool(s.rules) or any(a.policies or a.inline_policies for a in owners)
    return [g for g in found if (g.kind == GrantKind.MEMBERSHIP and g.user == user and reads_groups)
            or (g.kind == GrantKind.POLICY_RULE and (g.owner in inline_owners if g.owner else g.policy in named))]
