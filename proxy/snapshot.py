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


def parse_instant(value: Any) -> datetime.datetime | None:
    """An aware UTC datetime from a YAML timestamp or an RFC 3339 string; None if neither or it has no zone."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime.datetime) or value.tzinfo is None:
        return None
    return value.astimezone(datetime.UTC)


def format_instant(at: datetime.datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as manifests and messages show a grant's boundary."""
    return at.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class Validity:
    """When a grant holds: from `valid_from` (inclusive) until `valid_until` (exclusive); None is unbounded."""

    valid_from: datetime.datetime | None = None
    valid_until: datetime.datetime | None = None

    def is_active(self, at: datetime.datetime) -> bool:
        return ((self.valid_from is None or at >= self.valid_from)
                and (self.valid_until is None or at < self.valid_until))

    def to_wire(self) -> dict[str, str]:
        """`validFrom`/`validUntil` as the manifest spells them (only the bounds that are set)."""
        out = {}
        if self.valid_from is not None:
            out["validFrom"] = format_instant(self.valid_from)
        if self.valid_until is not None:
            out["validUntil"] = format_instant(self.valid_until)
        return out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Validity | None:
        """From a mapping with `validFrom`/`validUntil` (validated); None when it has neither."""
        if d.get("validFrom") is None and d.get("validUntil") is None:
            return None
        bounds = {}
        for key, attr in (("validFrom", "valid_from"), ("validUntil", "valid_until")):
            if d.get(key) is not None:
                bounds[attr] = parse_instant(d[key])
                if bounds[attr] is None:
                    raise ValueError(f"{key} must be an RFC 3339 timestamp with a time zone")
        return cls(**bounds)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRule:
    """One rule of a Policy: when `condition` matches, `effect` decides (lower `priority` is tried first).

    A rule with a `validity` window exists only inside it (proxy/grants.py).
    """

    name: str
    effect: PolicyEffect
    condition: Condition
    priority: int = 0  # -4..4
    validity: Validity | None = None


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
    # The memberships of `groups` that hold only within a window (`{name, validFrom?, validUntil?}` entries).
    group_windows: Mapping[str, Validity] = field(default_factory=dict)


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
