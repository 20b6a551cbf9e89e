"""`pgwarden cert`: a short-lived client certificate for the saved Session, usable as libpq sslcert/sslkey."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pgwarden.commands.token import parse_ttl
from pgwarden.credentials import (
    CredentialsError,
    default_credentials_path,
    load_credentials,
    proxy_endpoint,
    refusal_reason,
    session_ended,
)
from pgwarden.output import error
from proxy.filesafe import write_private

KEY_FILE = "pgwarden-client.key"
CERT_FILE = "pgwarden-client.crt"
CA_FILE = "pgwarden-proxy-ca.pem"

EPILOG = """\
example:
  pgwarden login --cluster http://127.0.0.1:8080
  pgwarden cert --service my-db --ttl 8h
  psql "host=127.0.0.1 port=6543 dbname=my-db user=alice sslmode=verify-full \\
        sslrootcert=~/.config/pgwarden/pgwarden-proxy-ca.pem \\
        sslcert=~/.config/pgwarden/pgwarden-client.crt sslkey=~/.config/pgwarden/pgwarden-client.key"

The private key is generated here and never leaves this machine (written 0600); the cluster signs only
its public key. The certificate names your user and Session: it stops working when the Session is
revoked or expires, and never outlives either it or --ttl. Anyone holding the key file connects as you.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cert", help="get a short-lived client certificate (libpq sslcert/sslkey)",
                              description="Create a key pair and have the cluster sign a client certificate "
                                          "bound to the saved Session.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where to write the key, certificate and proxy CA (default: next to the credentials)")
    p.add_argument("--ttl", type=parse_ttl, default=12 * 3600,
                   help="lifetime, e.g. 1h, 8h (default 12h; never past the session's expiry)")
    p.add_argument("--service", default="SERVICE", help="the service to print in the connection parameters")
    p.add_argument("--credentials", type=Path, default=None,
                   help=f"the saved login (default {default_credentials_path()})")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="libpq connection parameters (default), or JSON with the file paths and expiry")
    p.set_defaults(func=run_cert)


def _csr(key: ec.EllipticCurvePrivateKey, user: str) -> str:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def run_cert(args: argparse.Namespace) -> int:
    credentials_file = args.credentials or default_credentials_path()
    try:
        saved = load_credentials(credentials_file)
    except CredentialsError as exc:
        error(exc.message, hint=exc.hint)
        return 1
    key = ec.generate_private_key(ec.SECP256R1())

    async def request() -> tuple[int, Any, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            endpoint = await proxy_endpoint(saved, credentials_file, http)
            url = str(saved["cluster"]).rstrip("/") + "/v1/auth/cert"
            async with http.post(url, json={"csr": _csr(key, str(saved.get("user", ""))), "ttlSeconds": args.ttl},
                                 headers={"Authorization": f"Bearer {saved['token']}"}) as response:
                return response.status, await response.json(content_type=None), endpoint

    try:
        status, body, endpoint = asyncio.run(request())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        error(f"cannot reach {saved['cluster']}: {type(exc).__name__}", hint="is `pgwarden up` running?")
        return 2
    if status == 401:  # the session was revoked or expired: one line with the command to run
        refusal = str(body.get("error", "")) if isinstance(body, dict) else ""
        error(session_ended(saved, refusal_reason(refusal)).message)
        return 1
    if status != 200:
        message = body.get("error", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
        error(f"the cluster refused a certificate: {message}",
              hint=(body.get("hint") if isinstance(body, dict) else None) or "run pgwarden login")
        return 1
    out: Path = args.out or credentials_file.parent
    key_path, cert_path, ca_path = out / KEY_FILE, out / CERT_FILE, out / CA_FILE
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    write_private(cert_path, str(body["certificate"]))
    params = {"host": endpoint.host, "port": str(endpoint.port), "dbname": args.service, "user": body["user"]}
    if endpoint.ca_pem:
        write_private(ca_path, endpoint.ca_pem)
        params |= {"sslmode": "verify-full", "sslrootcert": str(ca_path)}
    else:
        params |= {"sslmode": "require"}  # no CA known: encrypted, but the proxy is not authenticated
    params |= {"sslcert": str(cert_path), "sslkey": str(key_path)}
    if args.output == "json":
        print(json.dumps({"params": params, "notAfter": body["notAfter"], "session": body["session"]}, indent=2))
    else:
        print(" ".join(f"{k}={v}" for k, v in params.items()))
        print(f"# valid until {body['notAfter']} (session {body['session']})")
    return 0
