"""Start the npm identity peers (oidc-provider, oauth2-mock-server, saml-idp) for tests, and stop them by PID.

Each runs from the repository's `node_modules` (`npm ci` at the root), binds 127.0.0.1 and is ready once its
discovery or metadata URL answers. `follow_login` plays the user at oidc-provider's devInteractions pages.
"""

from __future__ import annotations

import atexit
import datetime
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.pgcluster import free_port

REPO = Path(__file__).resolve().parents[2]
NODE_MODULES = REPO / "node_modules"
PEERS_DIR = REPO / "tests" / "peers"

# The clients and accounts tests/peers/oidc_provider.mjs defines.
OIDC_CLIENT_ID = "pgwarden"
OIDC_CLIENT_SECRET = "pgwarden-peer-secret"
OIDC_SHORT_DEVICE_CLIENT_ID = "pgwarden-short-device"  # its device codes expire after 1 s
WORKLOAD_AUDIENCE = "pgwarden"
SAML_IDP_ISSUER = "urn:pgwarden:test-idp"

_READY_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0
_FREE_PORT_ATTEMPTS = 3
_NPM_PACKAGES = ("oidc-provider", "oauth2-mock-server", "saml-idp")


class PeerError(RuntimeError):
    """A peer could not be started: node_modules missing, or the process died or never became ready."""

    def __init__(self, message: str, *, is_port_taken: bool = False) -> None:
        super().__init__(message)
        self.is_port_taken = is_port_taken


@dataclass(kw_only=True)
class Peer:
    """One running peer process. Mutable on purpose: `stop()` marks it stopped and is safe to call twice."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    workdir: Path | None = None
    is_stopped: bool = field(default=False, init=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """What the peer printed so far (stdout and stderr), for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM this peer's PID (then SIGKILL), reap it and remove its files."""
        if self.is_stopped:
            return
        self.is_stopped = True
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log_path.unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_oidc_provider(port: int | None = None, redirect_uris: Sequence[str] = ()) -> Peer:
    """oidc-provider at http://localhost:PORT with clients `pgwarden` and `pgwarden-short-device`."""
    uris = ",".join(redirect_uris) or "http://localhost:8765/callback"
    return _launch("oidc-provider", port, lambda p: [str(PEERS_DIR / "oidc_provider.mjs"), str(p), uris],
                   ready_path="/.well-known/openid-configuration")


def start_workload_issuer(port: int | None = None, audience: str = WORKLOAD_AUDIENCE) -> Peer:
    """oauth2-mock-server at http://localhost:PORT minting GitHub-Actions-shaped tokens for `audience`."""
    return _launch("oauth2-mock-server", port, lambda p: [str(PEERS_DIR / "workload_issuer.mjs"), str(p), audience],
                   ready_path="/.well-known/openid-configuration")


def start_saml_idp(port: int | None, acs_url: str, audience: str) -> Peer:
    """saml-idp at http://localhost:PORT (issuer urn:pgwarden:test-idp) with a fresh self-signed key."""
    _require_node()  # before making a key that would go unused
    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-saml-idp-"))
    cert, key = _write_signing_pair(workdir)

    def args(p: int) -> list[str]:
        return [
            str(NODE_MODULES / "saml-idp" / "bin" / "run.js"),
            "--host", "127.0.0.1", "--port", str(p),
            "--issuer", SAML_IDP_ISSUER, "--acsUrl", acs_url, "--audience", audience,
            "--cert", str(cert), "--key", str(key),
            # saml-idp resolves a relative --configFile against its own cwd; it must be absolute.
            "--configFile", str(NODE_MODULES / "saml-idp" / "config.js"),
        ]

    try:
        return _launch("saml-idp", port, args, ready_path="/metadata", workdir=workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _launch(
    name: str, port: int | None, args: Callable[[int], list[str]], *, ready_path: str, workdir: Path | None = None
) -> Peer:
    """Start on `port`, or on a free port; a free port can be taken by someone else meanwhile, so retry those."""
    node = _require_node()
    attempts = 1 if port else _FREE_PORT_ATTEMPTS
    for attempt in range(attempts):
        chosen = port or free_port()
        url = f"http://localhost:{chosen}"
        try:
            return _start(node, name, args(chosen), url, ready_url=url + ready_path, workdir=workdir)
        except PeerError as exc:
            if not exc.is_port_taken or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _start(node: str, name: str, args: list[str], url: str, *, ready_url: str, workdir: Path | None) -> Peer:
    fd, log_name = tempfile.mkstemp(prefix=f"pgwarden-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen([node, *args], cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    peer = Peer(name=name, url=url, process=process, log_path=Path(log_name), workdir=workdir)
    # A test run that dies early still stops its peers; fixtures stop them sooner.
    atexit.register(peer.stop)
    try:
        _wait_ready(peer, ready_url)
    except BaseException:
        peer.workdir = None  # the caller may retry with the same key files
        peer.stop()
        raise
    return peer


def _require_node() -> str:
    missing = [pkg for pkg in _NPM_PACKAGES if not (NODE_MODULES / pkg / "package.json").is_file()]
    if missing:
        raise PeerError(
            f"npm packages not installed in {NODE_MODULES} ({', '.join(missing)}): run `npm ci` in {REPO} "
            "(package.json and package-lock.json pin the test peers)"
        )
    node = shutil.which("node")
    if node is None:
        raise PeerError("`node` is not on PATH: install Node.js 20 (apt-get install nodejs npm), then run `npm ci`")
    return node


def _wait_ready(peer: Peer, ready_url: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            log = peer.log()
            raise PeerError(
                f"{peer.name} exited with code {peer.process.returncode} before it was ready:\n{log}",
                is_port_taken="EADDRINUSE" in log,
            )
        try:
            with urllib.request.urlopen(ready_url, timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise PeerError(f"{peer.name} did not answer {ready_url} within {_READY_TIMEOUT_S:.0f} s:\n{peer.log()}")


def _write_signing_pair(directory: Path) -> tuple[Path, Path]:
    """A throwaway RSA key and self-signed certificate for the SAML IdP's signatures."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgwarden-test-idp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "idp-public-cert.pem", directory / "idp-private-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# --- playing the user at oidc-provider's devInteractions pages ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginOutcome:
    """Where a login ended: the redirect to the client (`url`), or a final page without a form (`html`)."""

    url: str
    html: str = ""


async def follow_login(
    browser: aiohttp.ClientSession, url: str, *, login: str, redirect_prefix: str | None = None,
    is_abort: bool = False, max_steps: int = 20,
) -> LoginOutcome:
    """Follow redirects by hand and submit each form as a user would: the device confirmation (or its abort),
    the login (`login`, any password; at the demo's provider, `login` as the subject), then consent. Stops at a
    redirect to `redirect_prefix` or a page without a form ("Sign-in Success")."""
    method, data, has_aborted = "GET", None, False
    for _ in range(max_steps):
        async with browser.request(method, url, data=data, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308):
                location = urljoin(url, response.headers["Location"])
                if redirect_prefix is not None and location.startswith(redirect_prefix):
                    return LoginOutcome(url=location)
                method, data, url = "GET", None, location
                continue
            html = await response.text()
            if response.status != 200:
                raise AssertionError(f"{method} {url} answered {response.status}: {_page_text(html)}")
        forms = _Forms.parse(html)
        if not forms or has_aborted:  # after an abort the provider shows the code input form again
            return LoginOutcome(url=url, html=html)
        action, fields = forms[0]
        if fields.get("prompt") == "login":
            fields.update(login=login, password="any password works with devInteractions")
        if fields.get("sub") == "":  # the demo's Python provider (pgwarden/demo_idp.py) asks whom to sign in as
            fields["sub"] = login
        if "confirm" in fields and is_abort:
            fields["abort"] = "yes"  # the "[ Abort ]" button submits the confirm form with abort=yes
            has_aborted = True
        method, data, url = "POST", fields, urljoin(url, action)
    raise AssertionError(f"login did not finish within {max_steps} steps; last URL {url}")


class _Forms(HTMLParser):
    """Each <form>'s action and its <input name=value> fields, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self._current: dict[str, str] | None = None

    @classmethod
    def parse(cls, html: str) -> list[tuple[str, dict[str, str]]]:
        parser = cls()
        parser.feed(html)
        parser.close()
        return parser.forms

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = {}
            self.forms.append((attributes.get("action", ""), self._current))
        elif tag == "input" and self._current is not None and attributes.get("name"):
            self._current[attributes["name"]] = attributes.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _page_text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()[:300]
