"""The saved login (credentials.json, 0600) and the cluster facts the agent and `pgwarden cert` need from it.

`pgwarden login` saves {token, user, session, expiresAt, cluster, …cluster info}. The cluster info names the
proxy's address and CA; its exact keys are read tolerantly (see `proxy_endpoint`), and what is missing is
asked of GET {cluster}/v1/auth/cluster, then falls back to the proxy's defaults (127.0.0.1:6543, the
default data directory's ca.pem).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import platformdirs

from proxy.filesafe import write_private
from runtime.datadir import default_data_dir

DEFAULT_PROXY_PORT = 6543
LOGIN_HINT = "run pgwarden login --cluster URL"


class CredentialsError(Exception):
    """The saved login is missing, unreadable or ended; the message says which and never holds the token."""

    def __init__(self, message: str, hint: str | None = LOGIN_HINT) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def session_ended(saved: dict[str, Any], why: str) -> CredentialsError:
    """The one line for a saved login that no longer works: why, and the exact command that makes a new one."""
    cluster = saved.get("cluster") or "URL"
    return CredentialsError(f"your pgwarden session has ended ({why}): run pgwarden login --cluster {cluster}",
                            hint=None)


def refusal_reason(refusal: str) -> str:
    """The cluster's words for a refused token ("the session of this access token is revoked"), said shortly."""
    for word, said in (("revoked", "it was revoked"), ("expired", "it expired")):
        if word in refusal:
            return said
    return refusal


def check_not_expired(saved: dict[str, Any]) -> None:
    """Raise `session_ended` when the saved token has run out (no agent kept it fresh): no need to ask anyone."""
    expires = token_expires_at(str(saved["token"]))
    if expires and expires <= time.time():
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
        raise session_ended(saved, f"the saved access token expired at {when}")


def default_credentials_path() -> Path:
    return Path(platformdirs.user_config_dir("pgwarden")) / "credentials.json"


def load_credentials(path: Path, *, allow_expired: bool = False) -> dict[str, Any]:
    """The saved login; unless `allow_expired` (the agent, which refreshes), one whose token ran out is refused."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CredentialsError(f"not logged in: no saved credentials at {path}") from exc
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read the saved credentials at {path}: {type(exc).__name__}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not data.get("cluster"):
        raise CredentialsError(f"{path}: no token or cluster URL saved (an older or partial login)")
    if not allow_expired:
        check_not_expired(data)
    return data


def save_credentials(path: Path, data: dict[str, Any]) -> None:
    write_private(path, json.dumps(data, indent=2))


def _claim(token: str, name: str) -> float:
    """A time claim of an access token, read without verifying it (the proxy verifies; we only schedule)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims[name])
    except (IndexError, ValueError, KeyError, TypeError):
        return 0.0


def token_expires_at(token: str) -> float:
    return _claim(token, "exp")


def token_lifetime_s(token: str) -> float:
    return _claim(token, "exp") - _claim(token, "iat")


def seconds_left(token: str) -> float:
    return token_expires_at(token) - time.time()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyEndpoint:
    """Where the proxy listens and the CA that signed its certificate (PEM), as the CLI learned them."""

    host: str
    port: int
    ca_pem: str | None
    ca_source: str  # where the CA came from, for error messages


_HOST_KEYS = ("proxyHost", "proxy_host", "host")
_PORT_KEYS = ("proxyPort", "proxy_port", "port")
_CA_PEM_KEYS = ("caPEM", "caPem", "ca_pem", "caCertificate", "ca_certificate", "proxyCA", "ca")
_CA_FILE_KEYS = ("caFile", "ca_file", "caPath", "ca_path", "sslrootcert")


def _candidates(info: dict[str, Any]) -> list[dict[str, Any]]:
    """The dicts that may hold cluster facts: the top level and a nested proxy/cluster info object."""
    found = [info]
    for key in ("proxy", "clusterInfo", "cluster_info", "clusterinfo"):
        if isinstance(info.get(key), dict):
            found.append(info[key])
    return found


def _pick(info: dict[str, Any]) -> tuple[str | None, int | None, str | None, str | None]:
    host: str | None = None
    port: int | None = None
    pem: str | None = None
    file: str | None = None
    for d in _candidates(info):
        proxy = d.get("proxy")
        if isinstance(proxy, str) and ":" in proxy:  # "HOST:PORT"
            h, _, p = proxy.rpartition(":")
            host = host or h.strip("[]")
            if p.isdigit():
                port = port or int(p)
        host = host or next((str(d[k]) for k in _HOST_KEYS if isinstance(d.get(k), str) and d[k]), None)
        port = port or next((int(d[k]) for k in _PORT_KEYS if str(d.get(k, "")).isdigit()), None)
        pem = pem or next((str(d[k]) for k in _CA_PEM_KEYS if str(d.get(k, "")).lstrip().startswith("-----BEGIN")),
                          None)
        file = file or next((str(d[k]) for k in _CA_FILE_KEYS if isinstance(d.get(k), str) and d[k]), None)
    return host, port, pem, file


async def fetch_cluster_info(cluster: str, http: aiohttp.ClientSession) -> dict[str, Any]:
    """GET {cluster}/v1/auth/cluster, or {} when the cluster does not serve it (older `pgwarden up`)."""
    try:
        async with http.get(cluster.rstrip("/") + "/v1/auth/cluster") as response:
            if response.status != 200:
                return {}
            body = await response.json(content_type=None)
            return body if isinstance(body, dict) else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}


async def proxy_endpoint(saved: dict[str, Any], credentials_file: Path, http: aiohttp.ClientSession, *,
                         host: str | None = None, port: int | None = None, ca_file: Path | None = None
                         ) -> ProxyEndpoint:
    """Options first, then the saved cluster info, then GET /v1/auth/cluster, then the defaults."""
    s_host, s_port, s_pem, s_file = _pick(saved)
    if not (s_host and s_port and (s_pem or s_file)) and not (host and port and ca_file):
        f_host, f_port, f_pem, f_file = _pick(await fetch_cluster_info(str(saved["cluster"]), http))
        s_host, s_port, s_pem, s_file = s_host or f_host, s_port or f_port, s_pem or f_pem, s_file or f_file
    cluster_host = urlsplit(str(saved["cluster"])).hostname
    final_host = host or s_host or cluster_host or "127.0.0.1"
    final_port = port or s_port or DEFAULT_PROXY_PORT
    if ca_file is not None:
        return ProxyEndpoint(host=final_host, port=final_port, ca_pem=_read_ca(ca_file), ca_source=str(ca_file))
    if s_pem:
        return ProxyEndpoint(host=final_host, port=final_port, ca_pem=s_pem, ca_source="the cluster info")
    for candidate in ([Path(s_file)] if s_file else []) + [credentials_file.with_name("ca.pem"),
                                                           default_data_dir() / "ca.pem"]:
        if candidate.is_file():
            return ProxyEndpoint(host=final_host, port=final_port, ca_pem=_read_ca(candidate),
                                 ca_source=str(candidate))
    return ProxyEndpoint(host=final_host, port=final_port, ca_pem=None, ca_source="the system trust store")


def _read_ca(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise CredentialsError(f"cannot read the proxy CA certificate {path}: {exc.strerror}",
                               hint="pass --ca FILE (the proxy's ca.pem)") from exc
