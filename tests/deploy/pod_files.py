"""Stand-ins for what Kubernetes mounts into a pgwarden pod: the Secrets' files and the writable directories."""

from __future__ import annotations

from pathlib import Path

import pyrage

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
