"""The snapshot's wire form: the JSON the admin API takes and gives (PUT/GET /v1/state) and the workers
receive. Secrets leave only with `include_secrets`, to a worker's admin socket."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from proxy.pgwire.auth_mechanisms import DEFAULT_AUTH_MECHANISMS, AuthMechanism
from proxy.snapshot import (
    NO_GUARD_RAILS,
    Authorization,
    AuthorizationMode,
    Condition,
    Credential,
    Group,
    GuardRails,
    IdentityProvider,
    Policy,
    PolicyEffect,
    PolicyEnforcement,
    PolicyRule,
    PostgresSettings,
    RoutingRule,
    Secret,
    SecretValue,
    Service,
    ServiceConfig,
    Snapshot,
    SSLMode,
    Upstream,
    User,
    UserType,
    Validity,
)


def condition_to_wire(c: Condition) -> dict[str, Any]:
    if c.match is not None:
        return {"match": c.match}
    if c.match_any:
        return {"matchAny": True}
    if c.not_ is not None:
        return {"not": c.not_}
    for key, children in (("all", c.all_of), ("any", c.any_of), ("none", c.none_of)):
        if children is not None:
            return {key: {"of": [condition_to_wire(child) for child in children]}}
    return {}


def condition_from_wire(d: Mapping[str, Any]) -> Condition:
    def children(key: str) -> tuple[Condition, ...] | None:
        if key not in d:
            return None
        return tuple(condition_from_wire(x) for x in d[key].get("of", []))

    return Condition(
        match=d.get("match"),
        match_any=bool(d.get("matchAny", False)),
        not_=d.get("not"),
        all_of=children("all"),
        any_of=children("any"),
        none_of=children("none"),
    )


def policy_spec_to_wire(p: Policy) -> dict[str, Any]:
    """A Policy's spec as the manifest spells it (the wire form is the manifest form)."""
    return {
        "rules": [{"name": r.name, "effect": r.effect.value, "priority": r.priority,
                   "condition": condition_to_wire(r.condition), **(r.validity.to_wire() if r.validity else {})}
                  for r in p.rules],
        "attrs": dict(p.attrs),
        "isDisabled": p.is_disabled,
        "enforcement": p.enforcement.value,
    }


def policy_from_spec(name: str, spec: Mapping[str, Any]) -> Policy:
    """A Policy from its manifest `spec` (validated) or its wire form."""
    return Policy(
        name=name,
        rules=tuple(
            PolicyRule(name=str(r["name"]), effect=PolicyEffect(r["effect"]), priority=int(r.get("priority", 0)),
                       condition=condition_from_wire(r["condition"]), validity=Validity.from_wire(r))
            for r in spec.get("rules", [])
        ),
        attrs=dict(spec.get("attrs") or {}),
        is_disabled=bool(spec.get("isDisabled", False)),
        enforcement=PolicyEnforcement(spec.get("enforcement", "ENFORCE")),
    )


def authorization_to_wire(a: Authorization) -> dict[str, Any]:
    return {"policies": list(a.policies),
            "inlinePolicies": [{"name": p.name, "spec": policy_spec_to_wire(p)} for p in a.inline_policies]}


def authorization_from_wire(d: Mapping[str, Any] | None) -> Authorization:
    """From `spec.authorization` of a manifest, or its wire form; None gives no policies."""
    d = d or {}
    return Authorization(
        policies=tuple(str(n) for n in d.get("policies", [])),
        inline_policies=tuple(policy_from_spec(str(p["name"]), p.get("spec") or {})
                              for p in d.get("inlinePolicies", [])),
    )


def _config_to_wire(c: ServiceConfig) -> dict[str, Any]:
    p = c.postgres
    rails = {"guardRails": _rails_to_wire(p.guard_rails)} if p.guard_rails != NO_GUARD_RAILS else {}
    return {
        "name": c.name,
        "upstream": {"url": c.upstream.url},
        "postgres": {
            "user": p.user,
            "database": p.database,
            "passwordSecret": p.password_secret,
            "sslMode": p.ssl_mode.name,
            "caSecret": p.ca_secret,
            "caFile": p.ca_file,
            "authorizationMode": p.authorization_mode.value,
            "authMechanisms": [m.value for m in p.auth_mechanisms],
            **rails,
        },
    }


def _rails_to_wire(r: GuardRails) -> dict[str, Any]:
    out: dict[str, Any] = {"readOnly": r.read_only} if r.read_only else {}
    for key, value in (("statementTimeoutMs", r.statement_timeout_ms), ("lockTimeoutMs", r.lock_timeout_ms),
                       ("idleInTransactionTimeoutMs", r.idle_in_transaction_timeout_ms),
                       ("maxConnectionsPerUser", r.max_connections_per_user)):
        if value is not None:
            out[key] = value
    if r.search_path is not None:
        out["searchPath"] = list(r.search_path)
    return out


def _rails_from_wire(d: Mapping[str, Any] | None) -> GuardRails:
    if not d:
        return NO_GUARD_RAILS

    def ms(key: str) -> int | None:
        return None if d.get(key) is None else int(d[key])

    path = d.get("searchPath")
    return GuardRails(read_only=bool(d.get("readOnly", False)), statement_timeout_ms=ms("statementTimeoutMs"),
                      lock_timeout_ms=ms("lockTimeoutMs"),
                      idle_in_transaction_timeout_ms=ms("idleInTransactionTimeoutMs"),
                      search_path=None if path is None else tuple(str(n) for n in path),
                      max_connections_per_user=ms("maxConnectionsPerUser"))


def _config_from_wire(d: Mapping[str, Any]) -> ServiceConfig:
    p = d["postgres"]
    return ServiceConfig(
        name=d["name"],
        upstream=Upstream.from_url(d["upstream"]["url"]),
        postgres=PostgresSettings(
            user=p.get("user", ""),
            database=p.get("database", ""),
            password_secret=p.get("passwordSecret"),
            ssl_mode=SSLMode[p.get("sslMode", "PREFER")],
            ca_secret=p.get("caSecret"),
            ca_file=p.get("caFile"),
            authorization_mode=AuthorizationMode(p.get("authorizationMode", "NONE")),
            auth_mechanisms=tuple(AuthMechanism(m) for m in p.get("authMechanisms", DEFAULT_AUTH_MECHANISMS)),
            guard_rails=_rails_from_wire(p.get("guardRails")),
        ),
    )


def to_wire(snapshot: Snapshot, *, fingerprint_key: bytes, include_secrets: bool = False) -> dict[str, Any]:
    """Render for JSON. Secrets appear as fingerprints unless `include_secrets` (PUT bodies only)."""
    secrets: dict[str, Any] = {}
    for name, s in snapshot.secrets.items():
        entry: dict[str, Any] = {"fingerprint": s.value.fingerprint(fingerprint_key)}
        if include_secrets:
            entry["value"] = s.value.reveal()
        secrets[name] = entry
    return {
        "revision": snapshot.revision,
        "source": snapshot.source,
        "services": {
            name: {
                "port": s.port,
                "isDisabled": s.is_disabled,
                "defaultConfig": s.default_config,
                "configs": [_config_to_wire(c) for c in s.configs.values()],
                "rules": [
                    {"condition": condition_to_wire(r.condition), "configName": r.config_name,
                     **({"name": r.name} if r.name else {})} for r in s.rules
                ],
                "manifest": dict(s.manifest),
                "authorization": authorization_to_wire(s.authorization),
            }
            for name, s in snapshot.services.items()
        },
        "users": {
            name: {
                "type": u.type.value,
                "groups": list(u.groups),
                "email": u.email,
                "isDisabled": u.is_disabled,
                "manifest": dict(u.manifest),
                "authorization": authorization_to_wire(u.authorization),
                **({"groupWindows": {g: v.to_wire() for g, v in u.group_windows.items()}} if u.group_windows else {}),
            }
            for name, u in snapshot.users.items()
        },
        "groups": {name: {"manifest": dict(g.manifest), "authorization": authorization_to_wire(g.authorization)}
                   for name, g in snapshot.groups.items()},
        "policies": {name: policy_spec_to_wire(p) for name, p in snapshot.policies.items()},
        "identityProviders": {
            name: {"type": p.type, "displayName": p.display_name, "isDisabled": p.is_disabled,
                   "manifest": dict(p.manifest)}
            for name, p in snapshot.identity_providers.items()
        },
        "credentials": {name: _credential_to_wire(c, fingerprint_key, include_secrets)
                        for name, c in snapshot.credentials.items()},
        "secrets": secrets,
    }


def _credential_to_wire(c: Credential, fingerprint_key: bytes, include_secrets: bool) -> dict[str, Any]:
    # The hash of a 24-byte+ secret is not secret-equivalent, but GET /v1/state and diffs need only know that it
    # changed: show a keyed fingerprint of it, the hash itself only in PUT bodies.
    secret = {"secretHash": c.secret_hash} if include_secrets else {
        "secretFingerprint": SecretValue(c.secret_hash).fingerprint(fingerprint_key)}
    return {"user": c.user, "type": c.type, "sessionTTLSeconds": c.session_ttl_s, "isDisabled": c.is_disabled,
            "expiresAt": c.expires_at.isoformat() if c.expires_at else None, **secret, "manifest": dict(c.manifest)}


def _credential_from_wire(name: str, d: Mapping[str, Any]) -> Credential:
    if "secretHash" not in d:
        raise ValueError(f"credentials.{name}: a snapshot to apply must carry secretHash")
    expires = d.get("expiresAt")
    return Credential(name=name, user=str(d["user"]), secret_hash=str(d["secretHash"]),
                      type=str(d.get("type", "OAUTH2")), session_ttl_s=int(d.get("sessionTTLSeconds", 3600)),
                      is_disabled=bool(d.get("isDisabled", False)),
                      expires_at=datetime.datetime.fromisoformat(expires) if expires else None,
                      manifest=d.get("manifest", {}))


def _windows_from_wire(d: Mapping[str, Any] | None) -> dict[str, Validity]:
    windows = {str(group): Validity.from_wire(bounds) for group, bounds in (d or {}).items()}
    return {group: v for group, v in windows.items() if v is not None}


def from_wire(d: Mapping[str, Any]) -> Snapshot:
    """Rebuild a Snapshot from `to_wire(..., include_secrets=True)` output.

    Raises KeyError/ValueError/TypeError on malformed input; the admin API turns those into 400s.
    """
    secrets = {}
    for name, s in d.get("secrets", {}).items():
        if "value" not in s:
            raise ValueError(f"secrets.{name}: a snapshot to apply must carry secret values")
        secrets[name] = Secret(name=name, value=SecretValue(str(s["value"])))
    return Snapshot(
        revision=str(d.get("revision", "")),
        source=str(d.get("source", "")),
        services={
            name: Service(
                name=name,
                port=int(s.get("port", 5432)),
                is_disabled=bool(s.get("isDisabled", False)),
                default_config=s.get("defaultConfig"),
                configs={c["name"]: _config_from_wire(c) for c in s.get("configs", [])},
                rules=tuple(
                    RoutingRule(condition=condition_from_wire(r["condition"]), config_name=r["configName"],
                                name=r.get("name", ""))
                    for r in s.get("rules", [])
                ),
                manifest=s.get("manifest", {}),
                authorization=authorization_from_wire(s.get("authorization")),
            )
            for name, s in d.get("services", {}).items()
        },
        users={
            name: User(
                name=name,
                type=UserType(u.get("type", "HUMAN")),
                groups=tuple(u.get("groups", ())),
                email=u.get("email", ""),
                is_disabled=bool(u.get("isDisabled", False)),
                manifest=u.get("manifest", {}),
                authorization=authorization_from_wire(u.get("authorization")),
                group_windows=_windows_from_wire(u.get("groupWindows")),
            )
            for name, u in d.get("users", {}).items()
        },
        groups={name: Group(name=name, manifest=g.get("manifest", {}),
                            authorization=authorization_from_wire(g.get("authorization")))
                for name, g in d.get("groups", {}).items()},
        policies={name: policy_from_spec(name, p) for name, p in d.get("policies", {}).items()},
        identity_providers={
            name: IdentityProvider(name=name, type=str(p["type"]), display_name=str(p.get("displayName", "")),
                                   is_disabled=bool(p.get("isDisabled", False)), manifest=p.get("manifest", {}))
            for name, p in d.get("identityProviders", {}).items()
        },
        credentials={name: _credential_from_wire(name, c) for name, c in d.get("credentials", {}).items()},
        secrets=secrets,
    )
