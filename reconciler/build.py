"""Build the proxy's Snapshot from validated Documents: merge config parents, parse upstreams, keep manifests.

Pure: Documents in, a Snapshot out. Run `validate.validate_all` first; this stage trusts the shapes.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from proxy.guardrails import parse_duration_ms
from proxy.snapshot import (
    DEFAULT_AUTH_MECHANISMS,
    NO_GUARD_RAILS,
    AuthMechanism,
    AuthorizationMode,
    Credential,
    Group,
    GuardRails,
    IdentityProvider,
    Policy,
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
from proxy.snapshot_wire import authorization_from_wire, condition_from_wire, policy_from_spec
from reconciler.errors import ConfigError, DecryptionFailed, UnbuildableManifests
from reconciler.load import Document
from reconciler.workloads import build_credential

DEFAULT_CONFIG = "default"  # the name `spec.config` goes by, as in Octelium

# Mappings a child config replaces whole instead of merging into: "exactly one of" choices, where
# merging a parent's `file` with a child's `fromSecret` would leave both set.
_REPLACED_WHOLE = {("postgres", "tls", "ca")}


def build_snapshot(documents: Iterable[Document], *, revision: str, source: str,
                   builder: Builder | None = None) -> Snapshot:
    """The Snapshot for these documents. Raises UnbuildableManifests if a document cannot be built.

    Pass the same `builder` each time to reuse what unchanged documents built (the reconcile loop does).
    """
    built_once = (builder or Builder()).built_once
    services: dict[str, Service] = {}
    users: dict[str, User] = {}
    groups: dict[str, Group] = {}
    secrets: dict[str, Secret] = {}
    providers: dict[str, IdentityProvider] = {}
    policies: dict[str, Policy] = {}
    credential_docs: list[Document] = []  # built after the loop: a Credential hashes a Secret defined anywhere
    problems: list[ConfigError] = []
    for doc in documents:
        try:
            if doc.kind == "Service":
                services[doc.name] = built_once(_service, doc)
            elif doc.kind == "User":
                users[doc.name] = built_once(_user, doc)
            elif doc.kind == "Group":
                groups[doc.name] = Group(name=doc.name, manifest=_manifest(doc),
                                         authorization=authorization_from_wire(_jsonable(_spec(doc).get("authorization"))))
            elif doc.kind == "Policy":
                policies[doc.name] = policy_from_spec(doc.name, _jsonable(_spec(doc)))
            elif doc.kind == "Secret":
                secrets[doc.name] = _secret(doc)
            elif doc.kind == "IdentityProvider":
                providers[doc.name] = _identity_provider(doc)
            elif doc.kind == "Credential":
                credential_docs.append(doc)
        except ConfigError as exc:
            problems.append(exc)
        except (KeyError, TypeError, ValueError) as exc:
            # Validation should have caught this; name the place, and only the exception type
            # (its text could quote a value).
            detail = f" {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args else ""
            problems.append(ConfigError(f"cannot build {doc.kind}: {type(exc).__name__}{detail}", source=doc.source()))
    credentials: dict[str, Credential] = {}
    for doc in credential_docs:
        try:
            credentials[doc.name] = build_credential(doc, secrets, manifest=_manifest(doc))
        except ConfigError as exc:
            problems.append(exc)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(ConfigError(f"cannot build Credential: {type(exc).__name__}", source=doc.source()))
    if problems:
        raise UnbuildableManifests(problems)
    return Snapshot(revision=revision, source=source, services=services, users=users, groups=groups, secrets=secrets,
                    identity_providers=providers, credentials=credentials, policies=policies)


def _identity_provider(doc: Document) -> IdentityProvider:
    spec = doc.body.get("spec") or {}
    kind = next(t for t in ("oidc", "github", "saml", "oidcIdentityToken") if t in spec)
    return IdentityProvider(name=doc.name, type=kind, display_name=str(spec.get("displayName", "")),
                            is_disabled=bool(spec.get("isDisabled", False)), manifest=_manifest(doc))


def merged_configs(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each config of a Service spec with its `parent` chain merged in (child wins, field by field)."""
    raw: dict[str, Mapping[str, Any]] = {}
    if "config" in spec:
        raw[DEFAULT_CONFIG] = spec["config"]
    for config in spec.get("dynamicConfig", {}).get("configs", []):
        raw[config["name"]] = config
    resolved: dict[str, dict[str, Any]] = {}

    def resolve(name: str, visiting: frozenset[str]) -> dict[str, Any]:
        if name in resolved:
            return resolved[name]
        if name in visiting:
            raise ValueError(f"parent chain of config {name!r} loops")
        own = {k: v for k, v in raw[name].items() if k not in ("name", "parent")}
        parent = raw[name].get("parent")
        resolved[name] = _deep_merge(resolve(parent, visiting | {name}), own, ()) if parent else own
        return resolved[name]

    return {name: resolve(name, frozenset()) for name in raw}


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        here = (*path, key)
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and here not in _REPLACED_WHOLE:
            merged[key] = _deep_merge(merged[key], value, here)
        else:
            merged[key] = value  # scalars and lists: the child's value replaces the parent's
    return merged


def _service(doc: Document) -> Service:
    spec = doc.body["spec"]
    configs = {name: _service_config(name, config) for name, config in merged_configs(spec).items()}
    rules = tuple(
        RoutingRule(condition=condition_from_wire(rule["condition"]), config_name=rule["configName"],
                    name=rule.get("name", ""))
        for rule in spec.get("dynamicConfig", {}).get("rules", [])
    )
    return Service(
        name=doc.name,
        port=int(spec.get("port", 5432)),
        is_disabled=bool(spec.get("isDisabled", False)),
        configs=configs,
        rules=rules,
        default_config=DEFAULT_CONFIG if "config" in spec else None,
        manifest=_manifest(doc),
        authorization=authorization_from_wire(_jsonable(spec.get("authorization"))),
    )


def _spec(doc: Document) -> dict[str, Any]:
    spec = doc.body.get("spec")
    return spec if isinstance(spec, dict) else {}


def _service_config(name: str, config: Mapping[str, Any]) -> ServiceConfig:
    postgres = config.get("postgres", {})
    ca = postgres.get("tls", {}).get("ca", {})
    return ServiceConfig(
        name=name,
        upstream=Upstream.from_url(config["upstream"]["url"]),
        postgres=PostgresSettings(
            user=postgres.get("user", ""),
            database=postgres.get("database", ""),
            password_secret=postgres.get("auth", {}).get("password", {}).get("fromSecret"),
            ssl_mode=SSLMode[postgres.get("sslMode", "PREFER")],
            ca_secret=ca.get("fromSecret"),
            ca_file=ca.get("file"),
            authorization_mode=AuthorizationMode(postgres.get("authorization", {}).get("mode", "NONE")),
            auth_mechanisms=tuple(AuthMechanism(m) for m in postgres.get("auth", {}).get("mechanisms",
                                                                                      DEFAULT_AUTH_MECHANISMS)),
            guard_rails=_guard_rails(postgres.get("guardRails") or {}),
        ),
    )


def _guard_rails(rails: Mapping[str, Any]) -> GuardRails:
    """`postgres.guardRails` (validated, parents merged in): durations in milliseconds."""
    if not rails:
        return NO_GUARD_RAILS

    def ms(key: str) -> int | None:
        return parse_duration_ms(rails[key]) if key in rails else None

    path = rails.get("searchPath")
    return GuardRails(read_only=bool(rails.get("readOnly", False)), statement_timeout_ms=ms("statementTimeout"),
                      lock_timeout_ms=ms("lockTimeout"), idle_in_transaction_timeout_ms=ms("idleInTransactionTimeout"),
                      search_path=None if path is None else tuple(path),
                      max_connections_per_user=rails.get("maxConnectionsPerUser"))


def _user(doc: Document) -> User:
    manifest = _manifest(doc)
    spec = manifest["spec"]
    # Filled in so CEL sees what the proxy uses: `!ctx.user.spec.groups.hasAny([...])` is then true
    # for a User without groups, instead of false because the field is missing.
    spec.setdefault("type", UserType.HUMAN.value)
    # A membership is a Group name or `{name, validFrom?, validUntil?}`: CEL sees names only (the windows
    # decide which names a LiveSnapshot shows, proxy/grants.py), so `hasAny([...])` reads as before.
    entries = spec.get("groups") or []
    spec["groups"] = [entry["name"] if isinstance(entry, Mapping) else entry for entry in entries]
    windows = {entry["name"]: Validity.from_wire(entry) for entry in entries if isinstance(entry, Mapping)}
    return User(
        name=doc.name,
        type=UserType(spec["type"]),
        groups=tuple(spec["groups"]),
        email=spec.get("email", ""),
        is_disabled=bool(spec.get("isDisabled", False)),
        manifest=manifest,
        authorization=authorization_from_wire(_jsonable(spec.get("authorization"))),
        group_windows={name: v for name, v in windows.items() if v is not None},
    )


T = TypeVar("T")


class Builder:
    """Remembers what each body object built, so the next cycle's 10,000 unchanged Users cost nothing
    (the load stage's Parser hands back the same bodies, which nothing mutates). Mutable on purpose;
    owned by the reconcile loop."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._built: dict[tuple[str, int], tuple[dict[str, Any], Any]] = {}  # (kind, id(body)) -> (body, built)
        self._max_entries = max_entries

    def built_once(self, build: Callable[[Document], T], doc: Document) -> T:
        """`build(doc)`, once per body object. Only for builds that read nothing but the body; the body
        is held, so its id() is not reused meanwhile."""
        key = (doc.kind, id(doc.body))
        seen = self._built.get(key)
        if seen is not None and seen[0] is doc.body:
            return seen[1]
        built = build(doc)
        if len(self._built) >= self._max_entries:  # stale bodies are let go all at once
            self._built.clear()
        self._built[key] = (doc.body, built)
        return built


def _secret(doc: Document) -> Secret:
    if "sops" in doc.body:
        raise DecryptionFailed("Secret is still sops-encrypted; decrypt it before building", source=doc.source("sops"))
    return Secret(name=doc.name, value=SecretValue(doc.body["data"]["value"]))


def _manifest(doc: Document) -> dict[str, Any]:
    """metadata + spec as CEL's ctx.* sees them, JSON-safe (YAML timestamps become RFC 3339 strings)."""
    return {"metadata": _jsonable(doc.body.get("metadata", {})), "spec": _jsonable(doc.body.get("spec", {}))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime.date):  # datetime too: protojson renders timestamps as strings
        return value.isoformat()
    return value
