"""Connect-time routing: first matching rule wins, default config otherwise; ctx.session is visible to rules."""

from __future__ import annotations

from datetime import timedelta

from identity.store.base import AssuranceLevel, AuthMethod, IdentitySession, utc_now
from proxy.routing import ConnectRequest, LiveSnapshot
from proxy.snapshot import (
    Condition,
    PostgresSettings,
    RoutingRule,
    Service,
    ServiceConfig,
    Snapshot,
    Upstream,
    User,
)

UP = Upstream.from_url("postgres://127.0.0.1:5432")


def snapshot() -> Snapshot:
    configs = {name: ServiceConfig(name=name, upstream=UP, postgres=PostgresSettings(user=role))
               for name, role in (("default", "read_only"), ("prod-admin", "full_access"))}
    rule = RoutingRule(condition=Condition(match='ctx.session.status.authentication.info.aal == "AAL2"'),
                       config_name="prod-admin")
    return Snapshot(services={"db": Service(name="db", configs=configs, rules=(rule,), default_config="default")},
                    users={"alice": User(name="alice", manifest={"spec": {"groups": []}})})


def session(aal: AssuranceLevel) -> IdentitySession:
    now = utc_now()
    return IdentitySession(id="s1", user="alice", idp="corp", method=AuthMethod.PASSKEY, aal=aal,
                           created_at=now, expires_at=now + timedelta(hours=1), last_seen_at=now)


def test_rule_on_session_assurance_level() -> None:
    live = LiveSnapshot(snapshot(), generation=1)
    request = ConnectRequest(user="alice", database="")
    assert live.route("alice", "db", request, identity_session=session(AssuranceLevel.AAL2)).upstream_user == \
        "full_access"
    assert live.route("alice", "db", request, identity_session=session(AssuranceLevel.AAL1)).upstream_user == \
        "read_only"
    # No session in ctx: the rule reads a missing field, which is false, so the default config serves.
    assert live.route("alice", "db", request).upstream_user == "read_only"
