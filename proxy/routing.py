"""The live routing table: a Snapshot with its CEL compiled, and the connect-time decision.

`LiveSnapshot.route()` picks the Service config for an identity: rules in order, first match
wins, else the default config, else refusal. Compilation happens once per applied snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from identity.store.base import IdentitySession
from proxy.errors import AccessDenied, AuthenticationFailed, UnknownService
from proxy.policy.cel import CompiledCondition, ConditionError, compile_condition, to_cel
from proxy.policy.cel_cost import decision_budget
from proxy.policy.engine import DEFAULT_DENY, NO_POLICY, ConnectionPolicy, Decision, PolicySet
from proxy.snapshot import Service, ServiceConfig, Snapshot, User


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRequest:
    """What the client asked for in its StartupMessage (before any override)."""

    user: str
    database: str
    application_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """The decision: which config serves this session, and why."""

    service: Service
    config: ServiceConfig
    reason: str  # e.g. "rule 1 (configName full-access)" or "default config"
    upstream_user: str
    upstream_database: str
    decision: Decision = NO_POLICY  # the connect-time Policy decision (policy and rule for the access log)

    @property
    def target(self) -> tuple[str, str, str, str]:
        """What a session is bound to; a reload that changes it ends the session."""
        return (self.config.name, self.config.upstream.url, self.upstream_user, self.upstream_database)


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    index: int
    condition: CompiledCondition
    config_name: str
    label: str  # the rule's name, else its 1-based number


class LiveSnapshot:
    """An applied Snapshot: immutable, compiled, and numbered by generation."""

    def __init__(self, snapshot: Snapshot, generation: int) -> None:
        self.snapshot = snapshot
        self.generation = generation
        self._rules: dict[str, tuple[_CompiledRule, ...]] = {
            name: tuple(
                _CompiledRule(i + 1, compile_condition(rule.condition), rule.config_name, rule.name or str(i + 1))
                for i, rule in enumerate(service.rules)
            )
            for name, service in snapshot.services.items()
        }
        self.policies = PolicySet(snapshot)  # compiles every Policy: a bad one rejects the snapshot

    def user(self, name: str) -> User:
        """The enabled User with this name, or AuthenticationFailed."""
        user = self.snapshot.users.get(name)
        if user is None:
            raise AuthenticationFailed(f'user "{name}" does not exist', hint="ask an administrator to add you")
        if user.is_disabled:
            raise AuthenticationFailed(f'user "{name}" is disabled')
        return user

    def service(self, name: str) -> Service:
        service = self.snapshot.services.get(name)
        if service is None:
            known = ", ".join(sorted(self.snapshot.services)) or "none"
            raise UnknownService(
                f'service "{name}" does not exist',
                hint=f"name a service as the database (dbname=SERVICE or SERVICE/DATABASE); known: {known}",
            )
        if service.is_disabled:
            raise UnknownService(f'service "{name}" is disabled')
        return service

    def activation(
        self, user: User, service: Service, request: ConnectRequest, identity_session: IdentitySession | None = None
    ) -> dict[str, Any]:
        """The CEL `ctx` for a connect decision, shaped like Octelium's (camelCase, no empties)."""
        return {"ctx": to_cel(self.context(user, service, request, identity_session))}

    def context(
        self, user: User, service: Service, request: ConnectRequest | None,
        identity_session: IdentitySession | None = None,
    ) -> dict[str, Any]:
        """The plain-Python `ctx` of a session: user, groups, service, session and the connect request."""
        groups = [
            {"metadata": {"name": g}, **dict(self.snapshot.groups[g].manifest)}
            for g in user.groups
            if g in self.snapshot.groups
        ]
        ctx: dict[str, Any] = {
            "user": _with_name(user.manifest, user.name),
            "groups": groups,
            "service": _with_name(service.manifest, service.name),
        }
        if request is not None:
            connect = {"user": request.user, "database": request.database}
            if request.application_name:
                connect["applicationName"] = request.application_name
            ctx["request"] = {"postgres": {"connect": connect}}
        if identity_session is not None:
            ctx["session"] = identity_session.to_cel()
        return ctx

    def decide_connect(
        self, user: User, service: Service, request: ConnectRequest, identity_session: IdentitySession | None = None
    ) -> Decision:
        """The attached Policies' decision on opening this session (allowed when none is attached).

        A reload recheck calls this (through `route`) with the new snapshot to re-decide a live session.
        """
        if not self.policies.has_policies(user, service):
            return NO_POLICY
        book = self.policies.book(user, service)
        # AUDIT Policies alone: decided as with none attached (allowed), their would-be DENY only noted.
        default = DEFAULT_DENY if self.policies.enforces(user, service) else NO_POLICY
        return self.policies.decide(book, self.context(user, service, request, identity_session), default)

    def connection_policy(
        self, user: User, service: Service, identity_session: IdentitySession | None = None,
        *, config: ServiceConfig | None = None, request: ConnectRequest | None = None,
    ) -> ConnectionPolicy | None:
        """The ConnectionPolicy that decides each request of one client connection, or None when mode is not ALL.

        Pass the session's `config` (route.config): its mode decides. Without it, any config of the
        Service in mode ALL turns checks on (the safe side). `request` is accepted for symmetry with `route`
        but not put in ctx: each request's ctx holds that request only (connect was decided at connect).
        """
        ctx = self.context(user, service, None, identity_session)
        return self.policies.connection_policy(user, service, ctx, self.generation, config=config)

    @decision_budget
    def route(
        self, user_name: str, service_name: str, request: ConnectRequest,
        *, identity_session: IdentitySession | None = None,
    ) -> Route:
        """Decide the config for a new session. Raises AuthenticationFailed/UnknownService/AccessDenied."""
        user = self.user(user_name)
        service = self.service(service_name)
        decision = self.decide_connect(user, service, request, identity_session)
        if not decision.allowed:
            raise _denied(service, decision)
        rules = self._rules.get(service.name, ())
        chosen: str | None = None
        reason = "default config"
        if rules:
            activation = self.activation(user, service, request, identity_session)
            for rule in rules:
                try:
                    matched = rule.condition.evaluate(activation)
                except ConditionError as exc:
                    # Fail closed: a rule we cannot evaluate must not silently fall through.
                    raise AccessDenied(
                        f'access to service "{service.name}" denied: routing rule {rule.label} failed to evaluate',
                        detail=str(exc),
                    ) from exc
                if matched:
                    chosen, reason = rule.config_name, f"rule {rule.label} (configName {rule.config_name})"
                    break
        if chosen is None:
            chosen = service.default_config
        if chosen is None or chosen not in service.configs:
            raise AccessDenied(
                f'access to service "{service.name}" denied: no routing rule matched user "{user.name}"',
                hint="the service has no default config; ask an administrator to add a rule for you",
            )
        config = service.configs[chosen]
        if decision.policy:
            reason = f"{reason}; {decision.reason}"
        if (shadow := decision.would_deny) is not None:
            reason = f'{reason}; AUDIT policy "{shadow.policy}" rule "{shadow.rule}" would deny'
        return Route(
            service=service,
            config=config,
            reason=reason,
            upstream_user=config.postgres.user or request.user,
            upstream_database=config.postgres.database or request.database,
            decision=decision,
        )


def _denied(service: Service, decision: Decision) -> AccessDenied:
    """The refusal for a connect-time Policy DENY: it names the policy and rule that decided."""
    if decision.policy:
        return AccessDenied(
            f'access to service "{service.name}" {decision.reason}',
            hint="ask an administrator to change the policy if you need this access",
        )
    return AccessDenied(
        f'access to service "{service.name}" denied: no policy rule allows this connection (denied by default)',
        hint="the policies attached to you and this service need an ALLOW rule that matches the connection",
    )


def _with_name(manifest: Mapping[str, Any], name: str) -> dict[str, Any]:
    out = dict(manifest)
    metadata = dict(out.get("metadata") or {})
    metadata.setdefault("name", name)
    out["metadata"] = metadata
    out.setdefault("spec", {})
    return out
