"""`pgwarden cert`: short-lived client certificates bound to a Session, used by real psql as sslcert/sslkey."""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from identity.web.exchange import add_exchange_routes
from tests.support.pgcluster import free_port
from tests.support.proxy_harness import ProxyHarness

PGWARDEN = [sys.executable, "-m", "pgwarden"]


@pytest.fixture(scope="module")
def cluster(proxy: ProxyHarness) -> Iterator[str]:
    """The auth HTTP routes (`pgwarden up`'s --http-listen) on the proxy's loop; yields the cluster URL."""
    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        add_exchange_routes(app, proxy.running.server)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, port

    runner, port = proxy.run(start())
    yield f"http://127.0.0.1:{port}"
    proxy.run(runner.cleanup())


def login(proxy: ProxyHarness, cluster: str, tmp_path: Path, user: str) -> tuple[Any, str, Path]:
    """A saved login as `pgwarden login` leaves it; returns (session, token, credentials file)."""
    session, token = proxy.issue(user, 600)
    assert proxy.running.ca_path is not None
    path = tmp_path / "config" / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "token": token, "user": user, "session": session.id, "expiresAt": session.expires_at.isoformat(),
        "cluster": cluster, "proxyHost": "127.0.0.1", "proxyPort": proxy.port,
        "caCertificate": proxy.running.ca_path.read_text()}))
    path.chmod(0o600)
    return session, token, path


def cert(credentials: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run([*PGWARDEN, "cert", "--credentials", str(credentials), "--out", str(out),
                           "--service", "my-db", "-o", "json", *args], capture_output=True, text=True, timeout=60)
    return done, (json.loads(done.stdout) if done.returncode == 0 else {})


def psql(params: dict[str, str], sql: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    conninfo = " ".join(f"{k}={v}" for k, v in params.items())
    return subprocess.run(["psql", conninfo, "-X", "-At", "-c", sql], capture_output=True, text=True, timeout=60,
                          env=env)


def test_psql_with_a_client_certificate_needs_no_password(proxy: ProxyHarness, cluster: str, tmp_path: Path) -> None:
    session, token, credentials = login(proxy, cluster, tmp_path, "bob")
    done, issued = cert(credentials, tmp_path / "certs")
    assert done.returncode == 0, done.stderr
    params = issued["params"]
    assert params["sslmode"] == "verify-full" and params["user"] == "bob" and params["dbname"] == "my-db"
    assert Path(params["sslkey"]).stat().st_mode & 0o077 == 0
    certificate = x509.load_pem_x509_certificate(Path(params["sslcert"]).read_bytes())
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bob"
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:pgwarden:session:{session.id}"]
    assert certificate.not_valid_after_utc <= session.expires_at
    out = psql(params, "SELECT current_user")
    assert out.returncode == 0 and out.stdout.strip() == "read_only", out.stderr
    # its connections are indexed by the identity Session like token ones
    with psycopg.connect(" ".join(f"{k}={v}" for k, v in params.items())) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
        assert any(s["identitySession"] == session.id for s in proxy.running.server.session_list())
    # without a certificate, the token as password works as before
    with psycopg.connect(proxy.dsn("bob", token=token)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("read_only",)
    assert token not in done.stdout + done.stderr


def test_revoking_the_session_ends_certificate_connections_and_refuses_the_certificate(
        proxy: ProxyHarness, cluster: str, tmp_path: Path) -> None:
    session, _, credentials = login(proxy, cluster, tmp_path, "alice")
    done, issued = cert(credentials, tmp_path / "certs")
    assert done.returncode == 0, done.stderr
    conninfo = " ".join(f"{k}={v}" for k, v in issued["params"].items())
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("full_access",)
        out = subprocess.run([*PGWARDEN, "sessions", "revoke", session.id, "--admin-socket",
                              str(proxy.running.admin_socket)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "ended 1 database connection" in out.stdout, out.stdout + out.stderr
        proxy.wait_for(lambda: not any(s["identitySession"] == session.id
                                       for s in proxy.running.server.session_list()))
        with pytest.raises(psycopg.Error, match="session revoked"):
            conn.execute("SELECT 1")
    refused = psql(issued["params"], "SELECT 1")
    assert refused.returncode != 0 and "session of this client certificate is revoked" in refused.stderr
    again, _ = cert(credentials, tmp_path / "certs2")
    assert again.returncode == 1 and "revoked" in again.stderr


def test_an_expired_certificate_is_refused(proxy: ProxyHarness, cluster: str, tmp_path: Path) -> None:
    _, _, credentials = login(proxy, cluster, tmp_path, "bob")
    done, issued = cert(credentials, tmp_path / "certs", "--ttl", "1s")
    assert done.returncode == 0, done.stderr
    not_after = datetime.datetime.fromisoformat(issued["notAfter"]).timestamp()
    while time.time() < not_after + 1.5:
        time.sleep(0.2)
    refused = psql(issued["params"], "SELECT 1")
    assert refused.returncode != 0 and "FATAL:  the client certificate expired at" in refused.stderr, refused.stderr
    assert "pgwarden cert" in refused.stderr


def test_a_certificate_from_a_foreign_ca_is_refused(proxy: ProxyHarness, cluster: str, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    session, _, credentials = login(proxy, cluster, tmp_path, "bob")
    done, issued = cert(credentials, tmp_path / "certs")
    assert done.returncode == 0, done.stderr
    # Same user and session names, signed by a CA the proxy does not trust.
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgwarden client CA")])
    forged = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")])).issuer_name(ca_name)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
              .add_extension(x509.SubjectAlternativeName(
                  [x509.UniformResourceIdentifier(f"urn:pgwarden:session:{session.id}")]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "forged.crt", tmp_path / "forged.key"
    cert_path.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    with caplog.at_level(logging.INFO, logger="pgwarden.session"):
        refused = psql({**issued["params"], "sslcert": str(cert_path), "sslkey": str(key_path)}, "SELECT 1")
        proxy.wait_for(lambda: "TLS handshake refused" in caplog.text)
    # The TLS handshake fails (asyncio drops the alert, so psql reports a closed connection); the proxy
    # logs why. No session is created and nothing reaches the database.
    assert refused.returncode != 0 and "SELECT 1" not in refused.stdout
    assert "client certificate refused: unable to get local issuer certificate" in caplog.text


def test_cert_refuses_a_bad_csr_and_a_missing_login(proxy: ProxyHarness, cluster: str, tmp_path: Path) -> None:
    _, token, _ = login(proxy, cluster, tmp_path, "bob")
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{cluster}/v1/auth/cert", data=json.dumps({"csr": "not a csr"}).encode(),
                                     method="POST", headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400 and "csr is not a PEM certificate signing request" in err.value.read().decode()
    missing = subprocess.run([*PGWARDEN, "cert", "--credentials", str(tmp_path / "none.json")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "not logged in" in missing.stderr and "pgwarden login" in missing.stderr
