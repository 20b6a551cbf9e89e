"""Map a verified workload identity token to a WORKLOAD User by CEL over its claims.

`IdentityProvider.spec.oidcIdentityToken.users: [{user, condition}]`, checked in order after
`User.spec.authentication.identities` (an exact identity is the stronger statement); the first match wins.
Expressions see the token's claims as `claims` (and as `ctx.claims`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celpy.celparser import CELParseError

from proxy.identity.mapping import map_identity
from proxy.identity.oidc import IdentityError

# cel.py declares only `ctx` and `attrs`; its private parts let us add `claims` with cel.py's own parser, name
# checks and function table rather than a second CEL environment. (A public `variables=` on compile_expression
# would be the tidy seam.)
from proxy.policy.cel import (
    _ENV,
    _FUNCTIONS,
    MAX_EXPRESSION_CHARS,
    CelCompileError,
    CompiledCondition,
    CompiledExpression,
    ConditionError,
    _check_names,
    _parse_reason,
    to_cel,
)
from proxy.snapshot import Condition, IdentityProvider, User, condition_from_wire

CLAIMS_VARIABLE = "claims"
_CACHE_MAX = 1024
# Compiled by expression text, like cel.py's cache: a snapshot swap recompiles only new texts, a request none.
_COMPILED: dict[str, CompiledExpression] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimsRule:
    index: int  # position in spec.oidcIdentityToken.users, for messages
    user: str
    condition: CompiledCondition


def compile_claims_expression(expression: str) -> CompiledExpression:
    """Compile CEL over `claims` (raises CelCompileError, naming line and column, never a value)."""
    cached = _COMPILED.get(expression)
    if cached is not None:
        return cached
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CelCompileError(f"longer than {MAX_EXPRESSION_CHARS} characters", expression=expression)
    if not expression.strip():
        raise CelCompileError("empty expression", expression=expression)
    try:
        ast = _ENV.compile(expression)
        _check_names(ast, expression, frozenset({CLAIMS_VARIABLE}))
    except CELParseError as err:
        raise CelCompileError(_parse_reason(err), expression=expression, line=err.line, column=err.column) from err
    except RecursionError as err:
        raise CelCompileError("nested too deeply", expression=expression) from err
    compiled = CompiledExpression(expression, _ENV.program(ast, functions=_FUNCTIONS))
    if len(_COMPILED) >= _CACHE_MAX:
        del _COMPILED[next(iter(_COMPILED))]
    _COMPILED[expression] = compiled
    return compiled


def compile_claims_condition(c: Condition) -> CompiledCondition:
    """A condition tree (match | matchAny | not | all | any | none) whose expressions see `claims`."""
    if c.match is not None:
        return CompiledCondition("match", expression=compile_claims_expression(c.match))
    if c.match_any:
        return CompiledCondition("matchAny")
    if c.not_ is not None:
        return CompiledCondition("not", expression=compile_claims_expression(c.not_))
    for kind, children in (("all", c.all_of), ("any", c.any_of), ("none", c.none_of)):
        if children is not None:
            return CompiledCondition(kind, children=tuple(compile_claims_condition(child) for child in children))
    return CompiledCondition("never")


def claims_rules(provider: IdentityProvider) -> tuple[ClaimsRule, ...]:
    """The provider's `users` entries, compiled (cached by text, so only a new snapshot's new texts compile)."""
    spec = provider.manifest.get("spec", {}).get("oidcIdentityToken", {})
    entries: Sequence[Any] = spec.get("users") or ()
    return tuple(
        ClaimsRule(index=i, user=str(entry["user"]), condition=compile_claims_condition(
            condition_from_wire(entry["condition"])))
        for i, entry in enumerate(entries)
    )


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
