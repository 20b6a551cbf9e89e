"""A login flow's data: what GET /login may ask for (a loopback redirect with a PKCE challenge, a local `next`
path, an AAL, a TTL), the LoginFlow that carries it, and the LoginResult a login method proves."""

from __future__ import annotations

import base64
import dataclasses
import enum
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from identity.errors import IdentityError
from identity.store.base import AssuranceLevel, AuthMethod

FLOW_TTL_S = 600
DEFAULT_SESSION_TTL_S = 8 * 3600
MAX_SESSION_TTL_S = 7 * 24 * 3600


class LoginRefused(IdentityError):
    """A login that cannot finish: the page shows `message` and `hint`; the log says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginResult:
    """What a login method proved: which User (already mapped and checked), how, and how strongly."""

    user: str
    idp: str  # the IdentityProvider's name, or "passkey" / "totp" for pgwarden's own authenticators
    method: AuthMethod
    aal: AssuranceLevel = AssuranceLevel.AAL1
    claims: Mapping[str, Any] = field(default_factory=dict)  # kept on the Session as attrs; never secrets


@dataclass(slots=True, kw_only=True)
class LoginFlow:
    id: str
    created: float  # wall clock (time.time()): replicas share it, unlike a monotonic clock
    redirect_uri: str = ""  # CLI loopback redirect
    state: str = ""  # the CLI's state, echoed back on the redirect
    code_challenge: str = ""  # the CLI's PKCE S256 challenge
    user_code: str = ""  # device flow: the user code this login approves
    next: str = ""  # browser-only flow: a local path to land on, with the web cookie set
    want_aal: AssuranceLevel = AssuranceLevel.AAL1
    ttl_s: int = DEFAULT_SESSION_TTL_S
    pending: LoginResult | None = None  # first factor done, second factor still to come
    data: dict[str, Any] = field(default_factory=dict)  # per-method scratch: OIDC nonce/verifier, SAML request id…
    is_done: bool = False  # finished or dropped: it does not go back to the state store

    def is_expired(self, now: float) -> bool:
        return now - self.created > FLOW_TTL_S

    def encode(self) -> bytes:
        """JSON of the flow and its scratch data (replicas share it through the state store, sealed)."""
        return json.dumps(_to_json(self), separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> LoginFlow:
        """The flow `encode` wrote. Builds only the types registered with `flow_data` (never a type named by the
        data itself), so even a store writer holding the state key can make no other object."""
        flow = _from_json(json.loads(data))
        if not isinstance(flow, LoginFlow):
            raise ValueError("not a login flow")
        return flow


# --- the flow's JSON: an allow-list of dataclasses and enums ------------------------------------------------

_T = TypeVar("_T")
_FLOW_TYPES: dict[str, type] = {}


def flow_data(cls: _T) -> _T:
    """Register a dataclass or enum that may travel in a LoginFlow (its fields, or `flow.data`)."""
    assert isinstance(cls, type) and (dataclasses.is_dataclass(cls) or issubclass(cls, enum.Enum)), cls
    _FLOW_TYPES[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _name(value: object) -> str:
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    if _FLOW_TYPES.get(name) is not type(value):
        raise TypeError(f"{name} may not travel in a login flow (register it with identity.web.login_flow.flow_data)")
    return name


def _to_json(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, enum.Enum):
        return {"$enum": _name(value), "value": value.value}
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {"$map": {str(k): _to_json(v) for k, v in value.items()}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$type": _name(value),
                "fields": {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    raise TypeError(f"{type(value).__qualname__} may not travel in a login flow")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "$map" in value:
        return {k: _from_json(v) for k, v in value["$map"].items()}
    if "$bytes" in value:
        return base64.b64decode(value["$bytes"], validate=True)
    tag = value.get("$type") or value.get("$enum")
    cls = _FLOW_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ValueError("a login flow names a type that may not travel in one")
    if "$enum" in value:
        return cls(value["value"])
    return cls(**{k: _from_json(v) for k, v in value["fields"].items()})


def is_loopback_redirect(uri: str) -> bool:
    """Only http://127.0.0.1|[::1]|localhost:PORT/… may receive a login code (RFC 8252 §7.3)."""
    try:
        parts = urlsplit(uri)
        if parts.scheme != "http" or parts.port is None or parts.query or parts.fragment:
            return False
        host = parts.hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def flow_fields_from_query(q: Mapping[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if q.get("redirect_uri"):
        if not is_loopback_redirect(q["redirect_uri"]):
            raise LoginRefused("redirect_uri must be a loopback http URL with a port (the pgwarden CLI's)")
        if q.get("code_challenge_method", "S256") != "S256" or len(q.get("code_challenge", "")) < 43:
            raise LoginRefused("a CLI login needs code_challenge (S256)")
        fields.update(redirect_uri=q["redirect_uri"], state=q.get("state", "")[:256],
                      code_challenge=q["code_challenge"])
    if q.get("next"):
        nxt = q["next"]
        # A local path only: "//host", or a backslash (browsers read it as "/"), would leave the site.
        if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt or not nxt.isprintable():
            raise LoginRefused("next must be a path on this server")
        fields["next"] = nxt
    if q.get("aal"):
        try:
            fields["want_aal"] = AssuranceLevel[q["aal"].upper()]
        except KeyError:
            raise LoginRefused("aal must be AAL1 or AAL2") from None
    if q.get("ttl"):
        try:
            fields["ttl_s"] = max(60, min(int(q["ttl"]), MAX_SESSION_TTL_S))
        except ValueError:
            raise LoginRefused("ttl must be a number of seconds") from None
    return fields


for _cls in (LoginFlow, LoginResult, AuthMethod, AssuranceLevel):
    flow_data(_cls)
