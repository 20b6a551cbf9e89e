"""Map a verified workload identity token to a WORKLOAD User by CEL over its claims.

`IdentityProvider.spec.oidcIdentityToken.users: [{user, condition}]`, checked in order after
`User.spec.authentication.identities` (an exact identity is the stronger statement); the first match wins.
Expressions see the token's claims as `claims` (and as `ctx.claims`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from identity.errors import IdentityError
from identity.mapping import map_identity
from proxy.policy.cel import (
    CelCompileError,
    CompiledCondition,
    CompiledExpression,
    ConditionError,
    compile_condition,
    compile_expression,
    to_cel,
)
from proxy.policy.cel_cost import decision_budget
from proxy.snapshot import Condition, IdentityProvider, User
from proxy.snapshot_wire import condition_from_wire

CLAIMS_VARIABLE = "claims"
_CLAIMS = frozenset({CLAIMS_VARIABLE})


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimsRule:
    index: int  # position in spec.oidcIdentityToken.users, for messages
    user: str
    condition: CompiledCondition


def compile_claims_expression(expression: str) -> CompiledExpression:
    """Compile CEL over `claims` (raises CelCompileError, naming line and column, never a value); cached by text."""
    return compile_expression(expression, variables=_CLAIMS)


def compile_claims_condition(c: Condition) -> CompiledCondition:
    """A condition tree (match | matchAny | not | all | any | none) whose expressions see `claims`."""
    return compile_condition(c, variables=_CLAIMS)


def claims_rules(provider: IdentityProvider) -> tuple[ClaimsRule, ...]:
    """The provider's `users` entries, compiled (cached by text, so only a new snapshot's new texts compile)."""
    spec = provider.manifest.get("spec", {}).get("oidcIdentityToken", {})
    entries: Sequence[Any] = spec.get("users") or ()
    return tuple(
        ClaimsRule(index=i, user=str(entry["user"]), condition=compile_claims_condition(
            condition_from_wire(entry["condition"])))
        for i, entry in enumerate(entries)
    )


@decision_budget
def match_claims(provider: IdentityProvider, claims: Mapping[str, Any]) -> ClaimsRule | None:
    """The first `users` entry whose condition matches these verified claims, or None.

    Raises ConditionError when an expression fails for a reason other than a missing claim (deny, fail closed).
    """
    rules = claims_rules(provider)
    if not rules:
        return None
    value = to_cel(claims)
    activation = {CLAIMS_VARIABLE: value, "ctx": to_cel({CLAIMS_VARIABLE: claims})}
    for rule in rules:
        if rule.condition.evaluate(activation):
            return rule
    return None


def map_workload_user(provider: IdentityProvider, claims: Mapping[str, Any], users: Mapping[str, User]) -> str | None:
    """The User a verified workload token belongs to: identities[] first, then the provider's `users` rules.

    An exact identity binding is the more specific statement, so it wins over a pattern. Raises IdentityError
    (naming the rule, never a claim value) when a rule cannot be evaluated: fail closed.
    """
    spec = provider.manifest.get("spec", {}).get("oidcIdentityToken", {})
    bound = map_identity(claims, provider.name, str(spec.get("identifierClaim", "sub")), users)
    if bound is not None:
        return bound
    try:
        rule = match_claims(provider, claims)
    except (ConditionError, CelCompileError) as exc:
        reason = exc.reason if isinstance(exc, ConditionError) else str(exc)
        raise IdentityError(f"identity provider {provider.name!r}: a spec.oidcIdentityToken.users condition "
                            f"failed ({reason})", hint="fix the condition in the IdentityProvider manifest") from exc
    return rule.user if rule is not None else None


__all__ = ["ClaimsRule", "ConditionError", "CelCompileError", "claims_rules", "compile_claims_condition",
           "compile_claims_expression", "map_workload_user", "match_claims"]
