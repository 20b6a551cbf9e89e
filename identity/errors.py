"""Errors of a login through an identity provider (OIDC, GitHub, SAML) and of identity mapping.

PgwardenError                  proxy/errors.py (the whole tree is drawn there)
└── IdentityError              28000
    ├── ProviderUnavailable    unreachable, or answered something that is not OAuth/OIDC (transient)
    ├── ProviderMisconfigured  discovery contradicts our configuration: issuer, http URL, no S256, no usable alg
    ├── CallbackRejected       the redirect back does not belong to this request (state, iss, missing code)
    ├── AuthorizationDenied    the user or the provider said no (error=..., access_denied)
    ├── TokenRequestRefused    the token endpoint answered an OAuth error (invalid_grant, invalid_client, ...)
    ├── DeviceCodeExpired      the device code expired before the user approved it
    ├── TokenRejected          a JWT or userinfo failed a check: signature, alg, iss, aud, azp, exp, iat, nonce, sub
    │   └── UnknownKey         identity/providers/oidc/verification.py: signed by a `kid` the JWKS lacks (yet)
    ├── AmbiguousIdentity      identity/mapping.py: two or more Users claim the same external identity
    └── LoginRefused           identity/web/flow.py: a login that cannot finish; the page shows why

Messages name the provider and the check that failed, never a token or secret.
"""

from __future__ import annotations

from proxy.errors import PgwardenError


class IdentityError(PgwardenError):
    """A login through an identity provider failed; the message names the provider and the check."""

    sqlstate = "28000"


class ProviderUnavailable(IdentityError):
    """The provider could not be reached, or its answer was not the JSON the protocol requires."""


class ProviderMisconfigured(IdentityError):
    """The provider's discovery document contradicts what pgwarden requires or was configured with."""


class CallbackRejected(IdentityError):
    """The authorization response is not the answer to our request (state, iss or code is wrong or missing)."""


class AuthorizationDenied(IdentityError):
    """The user declined, or the provider refused to authorize."""


class TokenRequestRefused(IdentityError):
    """The token or device endpoint answered with an OAuth error."""


class DeviceCodeExpired(IdentityError):
    """The device code expired before the user finished at the verification URI."""


class TokenRejected(IdentityError):
    """An ID token, workload assertion or userinfo response failed a check."""


def fail(cls: type[IdentityError], provider: str, text: str, *, hint: str | None = None) -> IdentityError:
    """`cls` with a message that names the provider."""
    return cls(f"identity provider {provider!r}: {text}", hint=hint)
