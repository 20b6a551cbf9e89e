"""Workload sign-in in the manifests: check Credential documents and oidcIdentityToken user mappings; build
Credentials, keeping only a hash of each client secret.

Called from `references.references` and `build.build_snapshot`; like them, pure and tolerant of any shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from identity.workload_mapping import compile_claims_expression
from proxy.snapshot import Credential, Secret, UserType, hash_client_secret, parse_instant
from reconciler.conditions import condition_problems
from reconciler.errors import ConfigError, DanglingReference, SchemaViolation, format_path
from reconciler.load import Document

MIN_SECRET_BYTES = 24  # with a generated secret, >= 128 bits: what makes an unkeyed fast hash safe to keep
MAX_SESSION_TTL_S = 12 * 3600  # as long as a workload assertion's session (identity/web/exchange.py)
DEFAULT_SESSION_TTL_S = 3600
_TTL = re.compile(r"^([1-9][0-9]{0,5})(s|m|h)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600}


def credential_problems(
    doc: Document, documents: Sequence[Document], names: Mapping[str, set[str]]
) -> list[ConfigError]:
    """spec.user is an existing WORKLOAD User, spec.secret a Secret; sessionTTL and expiresAt make sense."""
    spec = doc.body.get("spec")
    if not isinstance(spec, dict):
        return []  # the schema reports it
    problems: list[ConfigError] = []
    user = spec.get("user")
    if isinstance(user, str):
        problems.extend(_workload_user_problems(doc, "spec.user", user, _user_types(documents), "a Credential"))
    secret = spec.get("secret", {}).get("fromSecret") if isinstance(spec.get("secret"), dict) else None
    if isinstance(secret, str) and secret not in names.get("Secret", set()):
        problems.append(DanglingReference.to("Secret", secret, names.get("Secret", set()),
                                             source=doc.source("spec.secret.fromSecret")))
    ttl = spec.get("sessionTTL")
    if isinstance(ttl, str) and _TTL.match(ttl) and parse_ttl_s(ttl) > MAX_SESSION_TTL_S:
        problems.append(SchemaViolation(f"must be at most {MAX_SESSION_TTL_S // 3600}h",
                                        source=doc.source("spec.sessionTTL")))
    if "expiresAt" in spec and parse_instant(spec["expiresAt"]) is None:
        problems.append(SchemaViolation("must be an RFC 3339 timestamp with a time zone, e.g. 2027-01-31T00:00:00Z",
                                        source=doc.source("spec.expiresAt")))
    return problems


def identity_token_user_problems(doc: Document, documents: Sequence[Document]) -> list[ConfigError]:
    """Each spec.oidcIdentityToken.users entry names a WORKLOAD User, and its CEL over `claims` compiles."""
    spec = doc.body.get("spec")
    token_spec = spec.get("oidcIdentityToken") if isinstance(spec, dict) else None
    entries = token_spec.get("users") if isinstance(token_spec, dict) else None
    if not isinstance(entries, list):
        return []
    types = _user_types(documents)
    problems: list[ConfigError] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        path: list[str | int] = ["spec", "oidcIdentityToken", "users", i]
        user = entry.get("user")
        if isinstance(user, str):
            problems.extend(_workload_user_problems(doc, format_path([*path, "user"]), user, types,
                                                    "a workload identity mapping"))
        problems.extend(condition_problems(doc, entry.get("condition"), [*path, "condition"],
                                           check=compile_claims_expression))
    return problems


def build_credential(doc: Document, secrets: Mapping[str, Secret], *, manifest: Mapping[str, Any]) -> Credential:
    """The Credential with its client secret hashed. Raises ConfigError for a missing or too short secret.

    `manifest` is the document's JSON-safe metadata + spec (build._manifest); it names the Secret, never holds it.
    """
    spec = doc.body["spec"]
    secret_name = spec["secret"]["fromSecret"]
    secret = secrets.get(secret_name)
    where = doc.source("spec.secret.fromSecret")
    if secret is None:
        raise DanglingReference(f"no Secret named {secret_name!r}", source=where)
    # Counted here, not in validate: only the build stage always sees the decrypted value (`pgwarden validate`
    # checks manifests without keys), so the loop reports it as BuildFailed.
    if len(secret.value.reveal().encode("utf-8")) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the client secret in Secret {secret_name!r} is shorter than {MIN_SECRET_BYTES} bytes",
            source=where, hint=f"generate one: openssl rand -hex 32 | pgwarden secret create {secret_name} "
                               f"-o secrets/{secret_name}.yaml",
        )
    expires_at = parse_instant(spec["expiresAt"]) if "expiresAt" in spec else None
    return Credential(
        name=doc.name, user=spec["user"], type=spec.get("type", "OAUTH2"),
        secret_hash=hash_client_secret(secret.value.reveal()),
        session_ttl_s=parse_ttl_s(spec["sessionTTL"]) if "sessionTTL" in spec else DEFAULT_SESSION_TTL_S,
        is_disabled=bool(spec.get("isDisabled", False)), expires_at=expires_at, manifest=manifest,
    )


def parse_ttl_s(text: str) -> int:
    """`90s`, `15m`, `1h` -> seconds. Raises ValueError otherwise."""
    match = _TTL.match(text)
    if match is None:
        raise ValueError("a duration like 15m or 1h")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _user_types(documents: Iterable[Document]) -> dict[str, str]:
    types: dict[str, str] = {}
    for doc in documents:
        if doc.kind == "User" and doc.name:
            spec = doc.body.get("spec")
            kind = spec.get("type", UserType.HUMAN.value) if isinstance(spec, dict) else UserType.HUMAN.value
            types[doc.name] = str(kind)
    return types


def _workload_user_problems(doc: Document, path: str, user: str, types: Mapping[str, str],
                            what: str) -> list[ConfigError]:
    if user not in types:
        return [DanglingReference.to("User", user, types, source=doc.source(path))]
    if types[user] != UserType.WORKLOAD.value:
        return [DanglingReference(f"User {user!r} is {types[user]}, but {what} may only name a WORKLOAD User",
                                  source=doc.source(path), hint=f"set spec.type: WORKLOAD on User {user!r}, "
                                                                "or name a workload")]
    return []
