"""The routing snapshot: frozen values the reconciler builds and the proxy serves from.

A Snapshot holds plain data only (CEL as source text); `proxy.routing` compiles it once when it
is applied. `to_wire`/`from_wire` carry it over the admin API; secrets travel only when asked.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any
from urllib.parse import urlsplit

# Re-exported (`X as X`): configs name them, and proxy.pgwire may not import this module.
from proxy.pgwire.auth_mechanisms import DEFAULT_AUTH_MECHANISMS as DEFAULT_AUTH_MECHANISMS
from proxy.pgwire.auth_mechanisms import AuthMechanism as AuthMechanism


class SSLMode(IntEnum):
    """Upstream TLS, ordered by strength (libpq's sslmode, as asyncpg's connect_utils orders it)."""

    DISABLE = 0
    PREFER = 1
    REQUIRE = 2
    VERIFY_CA = 3
    VERIFY_FULL = 4


class AuthorizationMode(StrEnum):
    """When Policies are consulted: only at connect (NONE) or for every request (ALL)."""

    NONE = "NONE"
    ALL = "ALL"


class UserType(StrEnum):
    HUMAN = "HUMAN"
    WORKLOAD = "WORKLOAD"


class SecretValue:
    """A secret string whose repr and str never show it. Read it with `reveal()`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def fingerprint(self, key: bytes) -> str:
        """A keyed, truncated digest: equal values give equal fingerprints under one key."""
        digest = hmac.new(key, self._value.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"hmac-sha256:{digest[:16]}"

    def __repr__(self) -> str:
        return "SecretValue('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Secret:
    name: str
    value: SecretValue


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """One node of Octelium's condition tree: match | matchAny | not | all | any | none."""

    match: str | None = None
    match_any: bool = False
    not_: str | None = None
    all_of: tuple[Condition, ...] | None = None
    any_of: tuple[Condition, ...] | None = None
    none_of: tuple[Condition, ...] | None = None

    def expressions(self) -> list[str]:
        """Every CEL expression in this tree, for compiling and validating."""
        found = [e for e in (self.match, self.not_) if e is not None]
        for children in (self.all_of, self.any_of, self.none_of):
            for child in children or ():
                found.extend(child.expressions())
        return found


class PolicyEffect(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class PolicyEnforcement(StrEnum):
    """ENFORCE: the Policy's rules decide. AUDIT (shadow mode): evaluated, never blocking; what it would deny is
    logged and counted as `wouldDeny` (proxy/policy/engine.py says how it combines with ENFORCE Policies)."""

    ENFORCE = "ENFORCE"
    AUDIT = "AUDIT"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRule:
    """One rule of a Policy: when `condition` matches, `effect` decides (lower `priority` is tried first)."""

    name: str
    effect: PolicyEffect
    condition: Condition
    priority: int = 0  # -4..4


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """A named set of rules; `attrs` is visible to its rules' CEL as `attrs`."""

    name: str
    rules: tuple[PolicyRule, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)
    is_disabled: bool = False
    enforcement: PolicyEnforcement = PolicyEnforcement.ENFORCE


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorization:
    """`spec.authorization` of a Service, Group or User: Policies by name, and inline ones."""

    policies: tuple[str, ...] = ()
    inline_policies: tuple[Policy, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Upstream:
    url: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """Parse `postgres://host[:port]`; the port defaults to 5432."""
        parts = urlsplit(url)
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()  # never echo user:password@
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise ValueError(f"upstream url must look like postgres://host:port, got {shown!r}")
        if parts.username or parts.password:
            raise ValueError(f"upstream url {shown!r} must not carry credentials: use postgres.auth.password")
        try:
            port = parts.port or 5432
        except ValueError as exc:
            raise ValueError(f"upstream url {shown!r} has an invalid port") from exc
        return cls(url=url, host=parts.hostname, port=port)


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardRails:
    """`postgres.guardRails`: settings pgwarden fixes on the upstream session, which clients cannot change.

    Durations are in milliseconds (None: not locked). See proxy/guardrails.py for how they are applied.
    """

    read_only: bool = False
    statement_timeout_ms: int | None = None
    idle_in_transaction_timeout_ms: int | None = None
    lock_timeout_ms: int | None = None
    search_path: tuple[str, ...] | None = None
    max_connections_per_user: int | None = None

    @property
    def locks_settings(self) -> bool:
        """Any rail that fixes a PostgreSQL setting (these need the per-query gate, mode ALL)."""
        return (self.read_only or self.statement_timeout_ms is not None or self.lock_timeout_ms is not None
                or self.idle_in_transaction_timeout_ms is not None or self.search_path is not None)


NO_GUARD_RAILS = GuardRails()


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresSettings:
    """How the proxy logs in upstream. Empty user/database forward what the client asked for."""

    user: str = ""
    database: str = ""
    password_secret: str | None = None
    ssl_mode: SSLMode = SSLMode.PREFER
    ca_secret: str | None = None
    ca_file: str | None = None
    authorization_mode: AuthorizationMode = AuthorizationMode.NONE
    auth_mechanisms: tuple[AuthMechanism, ...] = DEFAULT_AUTH_MECHANISMS
    guard_rails: GuardRails = NO_GUARD_RAILS

    def __post_init__(self) -> None:
        # Also for snapshots that arrive over the admin API without the reconciler's validation: a locked
        # setting is kept locked only by the per-query gate.
        if self.guard_rails.locks_settings and self.authorization_mode != AuthorizationMode.ALL:
            raise ValueError("postgres.guardRails need postgres.authorization.mode ALL")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """One named upstream configuration, with its `parent` chain already merged in."""

    name: str
    upstream: Upstream
    postgres: PostgresSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingRule:
    condition: Condition
    config_name: str
    name: str = ""  # optional; access, diff, explain and the route's reason say it instead of the rule's number


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: str
    port: int = 5432
    is_disabled: bool = False
    configs: Mapping[str, ServiceConfig] = field(default_factory=dict)
    rules: tuple[RoutingRule, ...] = ()
    default_config: str | None = None
    manifest: Mapping[str, Any] = field(default_factory=dict)  # metadata + spec, as CEL sees ctx.service
    authorization: Authorization = field(default_factory=Authorization)


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    name: str
    type: UserType = UserType.HUMAN
    groups: tuple[str, ...] = ()
    email: str = ""
    is_disabled: bool = False
    manifest: Mapping[str, Any] = field(default_factory=dict)  # metadata + spec, as CEL sees ctx.user
    authorization: Authorization = field(default_factory=Authorization)


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    name: str
    manifest: Mapping[str, Any] = field(default_factory=dict)
    authorization: Authorization = field(default_factory=Authorization)


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityProvider:
    """Where humans and workloads prove who they are. `type` is oidc | github | saml | oidcIdentityToken."""

    name: str
    type: str
    display_name: str = ""
    is_disabled: bool = False
    manifest: Mapping[str, Any] = field(default_factory=dict)  # metadata + spec; secrets only by reference


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """An OAuth2 client of a WORKLOAD User (client credentials grant). `name` is the client_id.

    Holds only `hash_client_secret` of the secret, never the secret itself.
    """

    name: str
    user: str
    secret_hash: str
    type: str = "OAUTH2"
    session_ttl_s: int = 3600
    is_disabled: bool = False
    expires_at: datetime.datetime | None = None  # aware (UTC); None: never
    manifest: Mapping[str, Any] = field(default_factory=dict)  # metadata + spec; the secret only by reference


def hash_client_secret(secret: str) -> str:
    """What a Credential keeps of its client secret: `sha256:` and the hex SHA-256 of its UTF-8 bytes.

    Unkeyed and fast on purpose. Validation refuses secrets under 24 bytes and the README says to generate
    them (`openssl rand -hex 32`), so guessing a preimage is infeasible; a slow password KDF (bcrypt,
    argon2) would add nothing but ~100 ms of CPU per token request on an unauthenticated endpoint. A keyed
    hash would need a key shared by the pure build stage and every proxy replica, which neither has.
    """
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything the proxy needs to route and authorize. Swapped whole, never edited."""

    revision: str = ""
    source: str = ""
    services: Mapping[str, Service] = field(default_factory=dict)
    users: Mapping[str, User] = field(default_factory=dict)
    groups: Mapping[str, Group] = field(default_factory=dict)
    secrets: Mapping[str, Secret] = field(default_factory=dict)
    identity_providers: Mapping[str, IdentityProvider] = field(default_factory=dict)
    credentials: Mapping[str, Credential] = field(default_factory=dict)
    policies: Mapping[str, Policy] = field(default_factory=dict)


# --- wire form (admin API) -------------------------------------------------------------------


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
                   "condition": condition_to_wire(r.condition)} for r in p.rules],
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
                       condition=condition_from_wire(r["condition"]))
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
