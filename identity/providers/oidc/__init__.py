"""OpenID Connect relying party, one module per seam: `discovery` (metadata, JWKS), `flows` (authorization code
+ PKCE, device grant, userinfo), `verification` (ID-token checks), `workload` (workload JWTs), `http`, `login`
(the browser login on the auth server). This package names the public API in one place.
"""

from identity.errors import (
    AuthorizationDenied,
    CallbackRejected,
    DeviceCodeExpired,
    IdentityError,
    ProviderMisconfigured,
    ProviderUnavailable,
    TokenRejected,
    TokenRequestRefused,
)
from identity.providers.oidc.discovery import (
    SIGNING_ALGORITHMS,
    ProviderMetadata,
    clear_caches,
    discover,
    fetch_jwks,
    load_key_set,
)
from identity.providers.oidc.flows import (
    DEVICE_CODE_GRANT,
    AuthorizationRequest,
    DeviceAuthorization,
    TokenResponse,
    exchange_code,
    poll_device_token,
    start_device_authorization,
    userinfo,
)
from identity.providers.oidc.http import read_bounded
from identity.providers.oidc.verification import merged_claims, verify_id_token
from identity.providers.oidc.workload import verify_workload_assertion

__all__ = [
    "DEVICE_CODE_GRANT", "SIGNING_ALGORITHMS", "AuthorizationDenied", "AuthorizationRequest", "CallbackRejected",
    "DeviceAuthorization", "DeviceCodeExpired", "IdentityError", "ProviderMetadata", "ProviderMisconfigured",
    "ProviderUnavailable", "TokenRejected", "TokenRequestRefused", "TokenResponse", "clear_caches", "discover",
    "exchange_code", "fetch_jwks", "load_key_set", "merged_claims", "poll_device_token", "read_bounded",
    "start_device_authorization", "userinfo", "verify_id_token", "verify_workload_assertion",
]
