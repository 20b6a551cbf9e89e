"""Short-lived client certificates (mTLS identity) bound to a Session: issue them, and map one back.

A separate client CA (`client-ca.pem`, key 0600) in the data directory signs them, not the local CA
that signs the listener's certificate: the listener trusts exactly this CA for client identity, so
no server certificate (nor one from an operator's own --tls-cert CA) can ever log in as a user.
A certificate names its user (subject CN) and its Session (SAN URI urn:pgwarden:session:SID); the
TLS handshake checks signature, validity and the clientAuth EKU, and the login checks the Session.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from identity.sessions import Identity
from identity.store.base import IdentitySession, IdentityStore, utc_now
from identity.tokens import TokenClaims
from proxy.errors import AuthenticationFailed
from proxy.filesafe import write_private
from proxy.tls import new_ca

CLIENT_CA_CERT = "client-ca.pem"
CLIENT_CA_KEY = "client-ca-key.pem"
SESSION_URI_PREFIX = "urn:pgwarden:session:"
MAX_CERT_TTL_S = 7 * 24 * 3600
CLOCK_SKEW = datetime.timedelta(minutes=1)


class CertificateRequestInvalid(AuthenticationFailed):
    """A CSR we will not sign: unparsable, badly signed, or a weak key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    cert_pem: str
    not_after: datetime.datetime
    serial: int


class ClientCertificateAuthority:
    """Signs client certificates for Sessions with the data directory's client CA."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path) -> None:
        self.cert = cert
        self._key = key
        self.cert_path = cert_path

    @property
    def ca_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load_or_create(cls, data_dir: Path) -> ClientCertificateAuthority:
        cert_path, key_path = data_dir / CLIENT_CA_CERT, data_dir / CLIENT_CA_KEY
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: not an EC private key")
            return cls(x509.load_pem_x509_certificate(cert_path.read_bytes()), key, cert_path)
        now = datetime.datetime.now(datetime.UTC)
        cert, key = new_ca("pgwarden client CA", now)
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, cert_path)

    def issue(self, csr_pem: str, session: IdentitySession, *, ttl_s: int,
              now: datetime.datetime | None = None) -> IssuedCertificate:
        """Sign the CSR's public key for `session`: CN = user, SAN URI = the session, never past its expiry."""
        now = now or utc_now()
        public_key = _checked_public_key(csr_pem)
        not_after = min(now + datetime.timedelta(seconds=min(ttl_s, MAX_CERT_TTL_S)), session.expires_at)
        if not_after <= now:
            raise CertificateRequestInvalid("the session has already expired", hint="log in again: pgwarden login")
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, session.user)]))
            .issuer_name(self.cert.subject).public_key(public_key).serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(SESSION_URI_PREFIX + session.id)]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                                 not_after=not_after, serial=serial)


def _checked_public_key(csr_pem: str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise CertificateRequestInvalid("csr is not a PEM certificate signing request") from exc
    if not csr.is_signature_valid:
        raise CertificateRequestInvalid("csr signature does not match its public key")
    try:
        key = csr.public_key()
    except (ValueError, InvalidSignature) as exc:
        raise CertificateRequestInvalid("csr public key cannot be read") from exc
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 256:
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    raise CertificateRequestInvalid("csr key must be EC P-256 or stronger, or RSA of 2048 bits or more")


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateSubject:
    user: str
    session_id: str
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime


def certificate_subject(der_cert: bytes) -> CertificateSubject:
    """Who and which Session a client certificate names, and when it is valid."""
    cert = x509.load_der_x509_certificate(der_cert)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    user = str(names[0].value) if names else ""
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    sid = next((u[len(SESSION_URI_PREFIX):] for u in uris if u.startswith(SESSION_URI_PREFIX)), "")
    return CertificateSubject(user=user, session_id=sid, serial=cert.serial_number,
                              not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)


async def verify_client_certificate(der_cert: bytes, store: IdentityStore) -> Identity:
    """The Identity of a certificate the TLS handshake already verified against the client CA.

    The handshake proved the chain and clientAuth EKU; this checks the dates (see proxy/tls.py for why
    here) and the Session it names.
    """
    subject = certificate_subject(der_cert)
    user, sid, now = subject.user, subject.session_id, utc_now()
    if now >= subject.not_after:
        raise AuthenticationFailed(f"the client certificate expired at {subject.not_after.isoformat()}",
                                   hint="get a new one: pgwarden cert")
    if now < subject.not_before:
        raise AuthenticationFailed(f"the client certificate is not valid before {subject.not_before.isoformat()}",
                                   hint="check this machine's clock")
    if not user or not sid:
        raise AuthenticationFailed("the client certificate names no pgwarden user and session",
                                   hint="get one with: pgwarden cert")
    session = await store.get_session(sid)
    if session is None or session.user != user:
        raise AuthenticationFailed("the session of this client certificate does not exist",
                                   hint="log in again (pgwarden login), then pgwarden cert")
    state = session.state(now)
    if state != "ACTIVE":
        raise AuthenticationFailed(f"the session of this client certificate is {state.lower()}",
                                   hint="log in again (pgwarden login), then pgwarden cert")
    claims = TokenClaims(user=user, token_id=f"cert:{subject.serial:x}",
                         expires_at=int(subject.not_after.timestamp()), session_id=sid)
    return Identity(claims=claims, session=session)
