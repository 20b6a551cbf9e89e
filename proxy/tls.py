"""TLS for both sides: the listener's certificate (a local CA made on first start) and upstream contexts.

For local use the proxy creates `ca.pem` + `server.pem` in its data directory, so that
`sslmode=verify-full sslrootcert=<data-dir>/ca.pem` works against `localhost`.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.filesafe import write_private
from proxy.snapshot import SSLMode

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL x509_vfy.h; the ssl module has no name for it


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCertificate:
    cert_path: Path
    key_path: Path
    ca_path: Path | None  # set when we generated it


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgwarden local"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(common_name: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed P-256 CA valid for ten years, allowed to sign end-entity certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def ensure_local_certificate(data_dir: Path) -> ServerCertificate:
    """Create (once) a CA and a server certificate for localhost, this host name and loopback IPs."""
    ca_path, ca_key_path = data_dir / CA_CERT, data_dir / CA_KEY
    cert_path, key_path = data_dir / SERVER_CERT, data_dir / SERVER_KEY
    if cert_path.exists() and key_path.exists() and ca_path.exists():
        return ServerCertificate(cert_path=cert_path, key_path=key_path, ca_path=ca_path)
    now = datetime.datetime.now(datetime.UTC)
    ca_cert, ca_key = new_ca("pgwarden local CA", now)
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName("*.localhost")]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    server_cert = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(ca_key_path, _pem_key(ca_key))
    write_private(key_path, _pem_key(server_key))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return ServerCertificate(cert_path=cert_path, key_path=key_path, ca_path=ca_path)


def server_context(cert: ServerCertificate, *, client_ca: Path | None = None) -> ssl.SSLContext:
    """The listener's context; with `client_ca`, clients may present a certificate signed by it (mTLS identity)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert.cert_path, cert.key_path)
    if client_ca is not None:
        # Optional: token clients send none. A presented one must chain to the client CA only and carry the
        # clientAuth EKU (OpenSSL's ssl_client purpose), or the handshake fails. Validity dates are checked
        # after the handshake (identity/certs.py), because asyncio drops the TLS alert of a failed
        # handshake and the client would see only "server closed the connection"; a FATAL says "expired".
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME

    def remember_sni(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        # The session reads this after the handshake to pick a service by host name.
        sslobj.pgwarden_sni = server_name  # type: ignore[attr-defined]

    ctx.sni_callback = remember_sni
    return ctx


def upstream_context(mode: SSLMode, *, ca_pem: str | None) -> ssl.SSLContext:
    """libpq semantics: REQUIRE encrypts only; VERIFY_CA checks the chain; VERIFY_FULL the host too."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode >= SSLMode.VERIFY_CA:
        if ca_pem:
            ctx.load_verify_locations(cadata=ca_pem)
        else:
            ctx.load_default_certs()
        ctx.check_hostname = mode == SSLMode.VERIFY_FULL
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_server_end_point(der_cert: bytes) -> bytes:
    """RFC 5929 channel binding: the certificate hashed with its signature hash (SHA-256 at least)."""
    cert = x509.load_der_x509_certificate(der_cert)
    algorithm = cert.signature_hash_algorithm
    name = algorithm.name if algorithm is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, der_cert).digest()
