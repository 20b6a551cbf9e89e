"""Map an external identity (verified claims from an IdentityProvider) to a pgwarden User name.

First by `User.spec.authentication.identities[{identityProvider, identifier}]`; then, only where the provider
says the address is verified, by `User.spec.email`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from identity.errors import IdentityError
from proxy.snapshot import User

EMAIL_CLAIM = "email"


class AmbiguousIdentity(IdentityError):
    """Two or more Users claim the same external identity; refusing beats guessing which one logs in."""


def map_identity(
    claims: Mapping[str, Any],
    provider_name: str,
    identifier_claim: str,
    users: Mapping[str, User] | Iterable[User],
) -> str | None:
    """The name of the User these claims belong to, or None when no User matches.

    Raises AmbiguousIdentity when several Users match the same identity or email.
    """
    candidates = list(users.values()) if isinstance(users, Mapping) else list(users)
    identifier = _claim_text(claims, identifier_claim)
    # An email is only proof of identity when the provider checked it; otherwise anyone could type in
    # someone else's address at the IdP. That holds for identities[] entries keyed on email, too.
    if identifier is not None and (identifier_claim != EMAIL_CLAIM or is_email_verified(claims)):
        bound = [u.name for u in candidates if identifier in _identifiers(u, provider_name)]
        if bound:
            return _one(bound, provider_name, "identity")
    email = _claim_text(claims, EMAIL_CLAIM)
    if email is None or not is_email_verified(claims):
        return None
    # A User who bound an identity at this provider is reachable only through it: a second account there with
    # the same verified address must not log in as them.
    matches = [
        u.name
        for u in candidates
        if _user_email(u) == email.casefold() and not _identifiers(u, provider_name)
    ]
    return _one(matches, provider_name, "verified email") if matches else None


def is_email_verified(claims: Mapping[str, Any]) -> bool:
    """True only for `email_verified: true`. Some IdPs (AWS Cognito) send the string "true", so accept that too."""
    verified = claims.get("email_verified")
    return verified is True or (isinstance(verified, str) and verified.lower() == "true")


def _claim_text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    # GitHub's user id is a number; identifiers in manifests are strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None


def _identifiers(user: User, provider_name: str) -> set[str]:
    """The identifiers `user` lists for this provider, read defensively: the manifest is plain data."""
    spec = user.manifest.get("spec")
    auth = spec.get("authentication") if isinstance(spec, Mapping) else None
    entries = auth.get("identities") if isinstance(auth, Mapping) else None
    found = set()
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, Mapping) and entry.get("identityProvider") == provider_name:
            identifier = entry.get("identifier")
            if isinstance(identifier, str) and identifier:
                found.add(identifier)
    return found


def _user_email(user: User) -> str:
    spec = user.manifest.get("spec")
    email = user.email or (spec.get("email") if isinstance(spec, Mapping) else "") or ""
    # Compared case-insensitively: providers and manifests disagree on case, and hosts are case-insensitive anyway.
    return str(email).casefold()


def _one(names: list[str], provider_name: str, how: str) -> str:
    if len(names) == 1:
        return names[0]
    listed = ", ".join(sorted(names))
    raise AmbiguousIdentity(
        f"identity provider {provider_name!r}: the same {how} matches several Users ({listed})",
        hint="give each external identity to exactly one User in spec.authentication.identities",
    )
