"""Every reference in the manifests names something that exists: fromSecret, configName, parent, group and
identity provider; no parent loops, and one identity belongs to one User."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from proxy.snapshot import Upstream
from reconciler import workloads
from reconciler.body_lookup import as_list, as_str, get, service_configs
from reconciler.errors import ConfigError, DanglingReference, DuplicateName, SchemaViolation
from reconciler.json_schema import SchemaVerdicts, schema_valid
from reconciler.load import Document


def references(documents: Sequence[Document], *, verdicts: SchemaVerdicts | None = None
               ) -> list[ConfigError]:
    """Every fromSecret, configName, parent and group names something that exists; no parent loops.

    Documents that failed their schema are checked too, as far as their shape allows.
    """
    names = _names_by_kind(documents)
    valid = {id(doc) for doc in schema_valid(documents, verdicts or SchemaVerdicts())}
    claimed: dict[tuple[str, str], str] = {}  # (identityProvider, identifier) -> User
    problems: list[ConfigError] = []
    for doc in documents:
        if doc.kind == "Service":
            problems.extend(_service_references(doc, names, is_valid=id(doc) in valid))
        elif doc.kind == "User":
            for i, entry in enumerate(as_list(get(doc.body, "spec", "groups"))):
                group, path = (entry, f"spec.groups[{i}]") if isinstance(entry, str) else \
                    (get(entry, "name"), f"spec.groups[{i}].name")  # a windowed membership
                if isinstance(group, str) and group not in names["Group"]:
                    problems.append(DanglingReference.to("Group", group, names["Group"], source=doc.source(path)))
            problems.extend(_identity_references(doc, names, claimed))
        elif doc.kind == "IdentityProvider":
            for method in IDENTITY_PROVIDER_TYPES:
                secret = as_str(get(doc.body, "spec", method, "clientSecret", "fromSecret"))
                if secret is not None and secret not in names["Secret"]:
                    path = f"spec.{method}.clientSecret.fromSecret"
                    problems.append(DanglingReference.to("Secret", secret, names["Secret"], source=doc.source(path)))
            problems.extend(workloads.identity_token_user_problems(doc, documents))
        elif doc.kind == "Credential":
            problems.extend(workloads.credential_problems(doc, documents, names))
    return problems


IDENTITY_PROVIDER_TYPES = ("oidc", "github", "saml", "oidcIdentityToken")


def _identity_references(
    doc: Document, names: Mapping[str, set[str]], claimed: dict[tuple[str, str], str]
) -> list[ConfigError]:
    """Each identity names an existing IdentityProvider and belongs to one User only."""
    problems: list[ConfigError] = []
    known = names.get("IdentityProvider", set())
    for i, identity in enumerate(as_list(get(doc.body, "spec", "authentication", "identities"))):
        provider = as_str(get(identity, "identityProvider"))
        identifier = as_str(get(identity, "identifier"))
        path = f"spec.authentication.identities[{i}]"
        if provider is not None and provider not in known:
            problems.append(DanglingReference.to("IdentityProvider", provider, known,
                                                 source=doc.source(f"{path}.identityProvider")))
        if provider is None or identifier is None:
            continue
        owner = claimed.setdefault((provider, identifier), doc.name)
        if owner != doc.name:
            problems.append(DuplicateName(
                f"this {provider} identity already belongs to User {owner!r}: one identity maps to one User",
                source=doc.source(f"{path}.identifier"),
            ))
    return problems



def _names_by_kind(documents: Iterable[Document]) -> dict[str, set[str]]:
    # From every document, valid or not, so one typo does not cascade into "no such Secret" errors.
    names: dict[str, set[str]] = {"Secret": set(), "Group": set(), "User": set(), "Service": set(),
                                  "IdentityProvider": set()}
    for doc in documents:
        if doc.kind and doc.name:
            names.setdefault(doc.kind, set()).add(doc.name)
    return names



def _service_references(doc: Document, names: Mapping[str, set[str]], *, is_valid: bool) -> list[ConfigError]:
    spec = get(doc.body, "spec")
    configs: dict[str, dict[str, Any]] = {}
    problems: list[ConfigError] = []
    for name, config, path in service_configs(spec):
        if name in configs:
            problems.append(DuplicateName(f"config {name!r} is defined twice in this Service", source=doc.source(path)))
            continue
        configs[name] = config
    if is_valid and not configs:
        problems.append(
            SchemaViolation("needs `config` or at least one dynamicConfig.configs entry", source=doc.source("spec"))
        )
    for name, config, path in service_configs(spec):
        for ref_path, secret in _secret_refs(config):
            if secret not in names["Secret"]:
                problems.append(DanglingReference.to("Secret", secret, names["Secret"],
                                                     source=doc.source(f"{path}.{ref_path}")))
        parent = as_str(config.get("parent"))
        if parent is not None and parent not in configs:
            problems.append(DanglingReference.to("config", parent, configs, source=doc.source(f"{path}.parent")))
        if is_valid:  # otherwise the schema errors already say what is wrong with the upstream
            problems.extend(_upstream_problems(doc, name, path, configs))
    problems.extend(_parent_cycles(doc, configs))
    for i, rule in enumerate(as_list(get(spec, "dynamicConfig", "rules"))):
        config_name = as_str(get(rule, "configName"))
        if config_name is not None and config_name not in configs:
            path = f"spec.dynamicConfig.rules[{i}].configName"
            problems.append(DanglingReference.to("config", config_name, configs, source=doc.source(path)))
    return problems


def _secret_refs(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(path within the config, Secret name) for each `fromSecret` in one config."""
    refs = [
        ("postgres.auth.password.fromSecret", get(config, "postgres", "auth", "password", "fromSecret")),
        ("postgres.tls.ca.fromSecret", get(config, "postgres", "tls", "ca", "fromSecret")),
    ]
    return [(path, name) for path, name in refs if isinstance(name, str)]


def _upstream_problems(doc: Document, name: str, path: str, configs: Mapping[str, Any]) -> list[ConfigError]:
    """The config, or the nearest ancestor that sets one, has an upstream URL that parses."""
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current in configs and current not in seen:
        seen.add(current)
        url = as_str(get(configs[current], "upstream", "url"))
        if url is not None:
            if current != name:
                return []  # checked at the config that sets it
            try:
                Upstream.from_url(url)
            except ValueError:
                where = doc.source(f"{path}.upstream.url")
                return [SchemaViolation("not a valid postgres://host:port URL", source=where)]
            return []
        current = as_str(configs[current].get("parent"))
    if current is not None:
        return []  # a dangling parent or a loop: reported on its own
    return [SchemaViolation("upstream.url is required (here or in a parent config)", source=doc.source(path))]


def _parent_cycles(doc: Document, configs: Mapping[str, Any]) -> list[ConfigError]:
    problems: list[ConfigError] = []
    reported: set[frozenset[str]] = set()
    paths = {name: path for name, _, path in reversed(service_configs(get(doc.body, "spec")))}
    for start in configs:
        chain = [start]
        parent = as_str(configs[start].get("parent"))
        while parent is not None and parent in configs and parent not in chain:
            chain.append(parent)
            parent = as_str(configs[parent].get("parent"))
        if parent is not None and parent in chain:
            loop = chain[chain.index(parent) :]
            if frozenset(loop) not in reported:
                reported.add(frozenset(loop))
                message = f"parent chain loops: {' -> '.join([*loop, loop[0]])}"
                problems.append(DanglingReference(message, source=doc.source(f"{paths[loop[0]]}.parent")))
    return problems
