"""Stand-ins for what Kubernetes mounts into a pgwarden pod: the Secrets' files and the writable directories."""

from __future__ import annotations

from pathlib import Path

import pyrage

from identity.certs import ClientCertificateAuthority
from identity.tokens import TokenAuthority
from runtime.datadir import fingerprint_key, state_key
from tests.deploy.rendered import PgwardenPod
from tests.support.pgcluster import issue_cert, make_test_ca


def lay_out(pod: PgwardenPod, pod_root: Path) -> dict[str, Path]:
    """Create every mounted file and directory under `pod_root`; returns mount path -> host directory.

    Secret volumes get their `items` (what the Deployment says the Secret holds): a TLS pair, an age key and
    a state URL (`sqlite`, so no store is needed).
    """
    volumes = {v["name"]: v for v in pod.pod_spec["volumes"]}
    mounted: dict[str, Path] = {}
    for mount in pod.container["volumeMounts"]:
        host = pod_root / mount["mountPath"].lstrip("/")
        if "subPath" in mount:  # one file of a Secret: the keys replicas share, made by pgwarden's own code
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes((_shared_keys(pod_root) / mount["subPath"]).read_bytes())
            continue
        host.mkdir(parents=True, exist_ok=True)
        mounted[mount["mountPath"]] = host
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        for item in secret.get("items") or [{"path": "tls.crt"}, {"path": "tls.key"}]:
            _write_secret_file(host, item["path"])
    return mounted


def _write_secret_file(directory: Path, name: str) -> None:
    if name in ("tls.crt", "tls.key"):
        if not (directory / "tls.crt").exists():
            ca = make_test_ca(directory / "ca")
            cert, key = issue_cert(ca, directory / "ca", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
            (directory / "tls.crt").write_bytes(cert.read_bytes())
            (directory / "tls.key").write_bytes(key.read_bytes())
            (directory / "tls.key").chmod(0o600)
        return
    path = directory / name
    if name.endswith("age.key"):
        path.write_text(str(pyrage.x25519.Identity.generate()) + "\n")
    else:
        path.write_text("sqlite\n")  # the state store URL: sqlite in the data directory
    path.chmod(0o600)


def _shared_keys(pod_root: Path) -> Path:
    """What `pgwarden proxy --data-dir DIR` creates on a first start, as docs/operations.md has it made once."""
    directory = pod_root.parent / "shared-keys"
    if not directory.exists():
        directory.mkdir(mode=0o700)
        TokenAuthority.load_or_create(directory)
        ClientCertificateAuthority.load_or_create(directory)
        state_key(directory)
        fingerprint_key(directory)
    return directory
