"""The tests' PostgreSQL: a `pgwarden.pgcluster.Cluster` on a free port with TLS from a test CA and seeded roles.

Modelled on asyncpg's `_testbase` TempCluster with `port='dynamic'`; see `TempCluster` for what it seeds.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self
from urllib.parse import quote, urlencode

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pgwarden import pgcluster
from pgwarden.demo import DEMO_OIDC_PORT, DEMO_PG_PORT
from pgwarden.demo_help import DEMO_AGENT_PORT
from pgwarden.pgcluster import Cluster, ClusterError, HostRule, ServerTls, is_port_free

__all__ = ["DEMO_PORTS", "SEEDED_ROLES", "ClusterError", "TempCluster", "free_port", "issue_cert", "make_test_ca",
           "reap_orphans", "wait_for_demo_ports"]

SEEDED_ROLES = ("full_access", "read_only", "md5_user", "plain_user", "pgwarden_admin")
_DIR_PREFIX = "pgwarden-pg-"
_OWNER_FILE = "owner.pid"  # the test process that owns a cluster; see reap_orphans()
_ORPHAN_MIN_AGE_S = 60
# `pgwarden up --demo` listens on fixed ports, which lie inside the kernel's ephemeral range (32768-60999): a test
# peer on a port the kernel picked, or a client connection's local port, can hold one when a demo test starts.
DEMO_PORTS = (DEMO_PG_PORT, DEMO_OIDC_PORT, DEMO_AGENT_PORT)


def free_port(host: str = "127.0.0.1") -> int:
    """pgwarden.pgcluster.free_port, never one of DEMO_PORTS."""
    while (port := pgcluster.free_port(host)) in DEMO_PORTS:
        pass
    return port


def wait_for_demo_ports(timeout_s: float = 30.0) -> None:
    """Before a demo test: wait until nothing holds the demo's fixed ports (a client connection that
    borrowed one as its local port ends soon); fail naming the port if something keeps it."""
    deadline = time.monotonic() + timeout_s
    while (taken := [p for p in DEMO_PORTS if not is_port_free("127.0.0.1", p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not taken, f"port(s) {taken} on 127.0.0.1 stayed in use for {timeout_s:.0f} s: the demo needs them"


# --- test CA -------------------------------------------------------------------------------------------------


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # PostgreSQL refuses a key file that group or others can read.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)


def make_test_ca(directory: Path) -> tuple[Path, Path]:
    """Create a self-signed test CA in `directory`; return (ca_cert_path, ca_key_path)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgwarden test CA")])
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


def issue_cert(
    ca: tuple[Path, Path],
    directory: Path,
    *,
    dns_names: Iterable[str],
    ip_addresses: Iterable[str] = (),
    name: str | None = None,
) -> tuple[Path, Path]:
    """Issue a leaf certificate (server and client auth) signed by `ca`; return (cert_path, key_path).

    `ca` is what `make_test_ca` returns. Files are named `<name>.pem` / `<name>.key`; `name` defaults to the
    first SAN, so issue certificates with different SANs into one directory without clashes.
    """
    ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
    ca_key = serialization.load_pem_private_key(ca[1].read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    dns_names, ip_addresses = list(dns_names), list(ip_addresses)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if not sans:
        raise ValueError("issue_cert needs at least one DNS name or IP address")
    stem = name or re.sub(r"[^A-Za-z0-9.-]", "_", (dns_names + ip_addresses)[0])
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


# --- the cluster -------------------------------------------------------------------------------------------

# Each login method the proxy speaks upstream, by role; everyone else uses SCRAM.
_HOST_RULES = (
    HostRule(user="md5_user", method="md5"),
    HostRule(user="plain_user", method="password"),
    HostRule(user="all", method="scram-sha-256"),
)
_SETTINGS = {
    "max_connections": "300",
    # JIT and autovacuum make timing-sensitive tests flaky (asyncpg's _testbase turns JIT off for the same reason).
    "autovacuum": "off",
    "jit": "off",
}

_SEED_SQL = """\
CREATE DATABASE my_db OWNER postgres;
CREATE DATABASE other_db OWNER postgres;
\\connect my_db
CREATE TABLE items (id serial PRIMARY KEY, name text);
INSERT INTO items (name) VALUES ('alpha'), ('beta'), ('gamma');
CREATE ROLE full_access LOGIN PASSWORD '{full_access}';
GRANT ALL PRIVILEGES ON DATABASE my_db TO full_access;
GRANT ALL PRIVILEGES ON SCHEMA public TO full_access;
GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO full_access;
GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public TO full_access;
CREATE ROLE read_only LOGIN PASSWORD '{read_only}';
CREATE ROLE plain_user LOGIN PASSWORD '{plain_user}';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD '{md5_user}';
RESET password_encryption;
GRANT CONNECT ON DATABASE my_db TO read_only, md5_user, plain_user;
GRANT USAGE ON SCHEMA public TO read_only, md5_user, plain_user;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO read_only, md5_user, plain_user;
CREATE ROLE pgwarden_admin LOGIN SUPERUSER PASSWORD '{pgwarden_admin}';
"""


def _is_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans(temp_root: Path | None = None) -> None:
    """Stop and delete clusters whose test process died without cleaning up (SIGKILL, a CI time-out)."""
    for base in Path(temp_root or tempfile.gettempdir()).glob(f"{_DIR_PREFIX}*"):
        owner_file = base / _OWNER_FILE
        try:
            owner = int(owner_file.read_text())
            age_s = time.time() - owner_file.stat().st_mtime
        except (OSError, ValueError):
            continue  # not ours, or another run is between mkdtemp and writing the file
        if age_s < _ORPHAN_MIN_AGE_S or _is_process_alive(owner):
            continue
        try:
            postmaster = int((base / "data" / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown, as `pg_ctl stop -m immediate`
            deadline = time.monotonic() + 5
            while _is_process_alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(base, ignore_errors=True)


class TempCluster:
    """A PostgreSQL cluster in its own temp dir on a free 127.0.0.1 (and ::1) port; `stop()` deletes everything.

    Seeds databases `my_db` (table `items`) and `other_db`, and roles `full_access` (ALL on my_db),
    `read_only` (SELECT), `md5_user` (MD5-stored password, md5 auth), `plain_user` (password auth) and the
    superuser `pgwarden_admin`, each with a fresh random password in `passwords`. `postgres` has no password
    and logs in only over the unix socket. The server speaks TLS with a certificate from a fresh test CA
    (`ca_cert_path`). Mutable: it tracks a running server.
    """

    host = Cluster.host

    def __init__(self, *, bindir: Path | None = None) -> None:
        self.passwords = {role: secrets.token_urlsafe(24) for role in SEEDED_ROLES}
        base = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        (base / _OWNER_FILE).write_text(str(os.getpid()))
        tls = base / "tls"
        self.ca_cert_path, self.ca_key_path = tls / "ca.pem", tls / "ca.key"
        self.server_cert_path, self.server_key_path = tls / "server.pem", tls / "server.key"
        self.cluster = Cluster(base, bindir=bindir, host_rules=_HOST_RULES, settings=_SETTINGS, is_dual_stack=True,
                               tls=ServerTls(cert_path=self.server_cert_path, key_path=self.server_key_path,
                                             ca_path=self.ca_cert_path))
        atexit.register(self.stop)

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def datadir(self) -> Path:
        return self.cluster.datadir

    @property
    def socket_dir(self) -> Path:
        return self.cluster.socket_dir

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Create, configure, start and seed the cluster; on any failure clean up and re-raise."""
        reap_orphans()
        try:
            make_test_ca(self.ca_cert_path.parent)
            # SAN is DNS localhost only, so verify-full to 127.0.0.1 fails on the host name (a test relies on it).
            issue_cert((self.ca_cert_path, self.ca_key_path), self.ca_cert_path.parent, dns_names=["localhost"],
                       name="server")
            self.cluster.init()
            self.cluster.start()
            self.psql(_SEED_SQL.format(**self.passwords), database="postgres")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (immediate: the data is thrown away) and remove the temp dir. Idempotent."""
        self.cluster.destroy()
        atexit.unregister(self.stop)

    def halt(self) -> None:
        """Stop the server as an outage would (fast shutdown: sessions get FATAL 57P01), keeping the data."""
        self.cluster.stop(mode="fast")

    def resume(self) -> None:
        """Start a halted server again on the same port."""
        self.cluster.start()

    def dsn(self, role: str, database: str = "my_db", **params: str | int) -> str:
        """A libpq URI for `role` over TCP, password included (`postgres` gets the unix socket instead)."""
        query = urlencode({k: str(v) for k, v in params.items()})
        if role == "postgres":
            sock = urlencode({"host": str(self.socket_dir), "port": str(self.port)})
            return f"postgresql://postgres@/{quote(database)}?{sock}" + (f"&{query}" if query else "")
        userinfo = f"{quote(role, safe='')}:{quote(self.passwords[role], safe='')}"
        base = f"postgresql://{userinfo}@{self.host}:{self.port}/{quote(database)}"
        return base + (f"?{query}" if query else "")

    def psql(self, sql: str, *, role: str = "postgres", database: str = "my_db") -> str:
        """Run `sql` with psql as `role` and return its unaligned stdout; raise ClusterError."""
        password = None if role == "postgres" else self.passwords[role]
        return self.cluster.psql(sql, database=database, user=role, password=password)
