"""deploy/kubernetes/ renders with the real kubectl, validates against the Kubernetes schemas, and still means
what `pgwarden up` accepts: an option renamed in the CLI, or a port or path changed on one side only, fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from identity.certs import CLIENT_CA_CERT, CLIENT_CA_KEY
from identity.tokens import KEY_FILE
from runtime.datadir import FINGERPRINT_KEY, STATE_KEY
from tests.deploy.pod_files import lay_out
from tests.deploy.rendered import KUBERNETES, OVERLAYS, ROOT, PgwardenPod, dest_of, one, render

# The oldest Kubernetes minor still commonly run, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
TREES = [KUBERNETES / "base", *OVERLAYS]


def test_there_are_a_small_and_a_production_overlay() -> None:
    assert {p.name for p in OVERLAYS} >= {"small", "production"}


@pytest.fixture(scope="module", params=TREES, ids=lambda p: str(p.relative_to(KUBERNETES)))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schema(rendered: list[dict[str, Any]], version: str) -> None:
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == ["Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "Service", "ServiceAccount"]
    for obj in rendered:
        try:  # strict: a misspelt field (livenesProbe) is an error, not silently ignored
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: {exc}")


def test_the_arguments_are_options_of_pgwarden_up(rendered: list[dict[str, Any]], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pod = PgwardenPod.of(rendered)
    assert "command" not in pod.container, "the image's ENTRYPOINT (pgwarden) must run: give args only"
    assert pod.args[0] == "up"
    lay_out(pod, tmp_path)
    try:
        args = pod.parse(tmp_path)
    except SystemExit:
        pytest.fail(f"`pgwarden {' '.join(pod.args)}` is refused by pgwarden's parser:\n{capsys.readouterr().err}")
    assert args.command == "up"
    assert args.access_log == "-", "the access log goes to stdout, where the cluster's log collector reads it"


def test_every_file_an_argument_names_is_mounted_and_secrets_are_read_only(rendered: list[dict[str, Any]]) -> None:
    pod = PgwardenPod.of(rendered)
    mounts = {m["mountPath"]: m for m in pod.container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod.pod_spec["volumes"]}
    for option in ("--tls-cert", "--tls-key", "--age-key-file", "--state-file"):
        path = Path(pod.option(option) or "")
        assert str(path).startswith("/"), f"{option} is not set to an absolute path"
        mount = mounts.get(str(path.parent))
        assert mount is not None, f"{option} {path}: no volume is mounted at {path.parent}"
        assert mount.get("readOnly") is True, f"{option}: {path.parent} must be mounted read-only"
        secret = volumes[mount["name"]].get("secret")
        assert secret is not None, f"{option}: {path.parent} must come from a Secret"
        items = [item["path"] for item in secret.get("items", [])]
        assert not items or path.name in items, f"{option}: the Secret's items {items} hold no {path.name}"
        assert secret["defaultMode"] & 0o007 == 0, f"{option}: other users can read {path}"
    data_dir = pod.option("--data-dir")
    assert data_dir in mounts and "emptyDir" in volumes[mounts[data_dir]["name"]], "--data-dir needs a writable volume"


def test_the_keys_replicas_share_come_from_one_secret(rendered: list[dict[str, Any]]) -> None:
    # Each pod's data directory is its own emptyDir: a key pgwarden generated there would differ per replica,
    # and a token issued by one would be refused by the next.
    pod = PgwardenPod.of(rendered)
    data_dir = pod.option("--data-dir")
    volumes = {v["name"]: v for v in pod.pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in pod.container["volumeMounts"]}
    secrets = set()
    for name in (KEY_FILE, STATE_KEY, FINGERPRINT_KEY, CLIENT_CA_CERT, CLIENT_CA_KEY):
        mount = mounts.get(f"{data_dir}/{name}")
        assert mount is not None and mount["subPath"] == name and mount["readOnly"] is True, f"{name} is not mounted"
        secrets.add(volumes[mount["name"]]["secret"]["secretName"])
    assert len(secrets) == 1


def test_ports_probes_and_services_match_the_listen_options(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    pod = PgwardenPod.of(rendered)
    lay_out(pod, tmp_path)
    args = pod.parse(tmp_path)
    listen_host, listen_port = args.listen
    http_host, http_port = args.http_listen
    assert (listen_host, http_host) == ("0.0.0.0", "0.0.0.0"), "a pod must listen beyond its loopback"
    cancel_host, cancel_port = args.cancel_listen
    assert cancel_host == "0.0.0.0", "other replicas forward cancel requests to this pod's address"
    assert {p["name"]: p["containerPort"] for p in pod.container["ports"]} == {
        "postgres": listen_port, "http": http_port, "cancel": int(cancel_port)}
    probes = {name: pod.container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/livez" and probes["readinessProbe"]["path"] == "/readyz"
    for name, probe in probes.items():
        assert pod.port_named(probe["port"]) == http_port, f"{name} must ask the --http-listen port"
    for service in (o for o in rendered if o["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            assert pod.port_named(port["targetPort"]) in (listen_port, http_port), service["metadata"]["name"]
        assert "sessionAffinity" not in service["spec"], "replicas share login flows: no affinity is needed"
    annotations = pod.deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == http_port and annotations["prometheus.io/path"] == "/metrics"


def test_the_grace_period_outlasts_the_drain(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    pod = PgwardenPod.of(rendered)
    lay_out(pod, tmp_path)
    drain = getattr(pod.parse(tmp_path), dest_of("--drain-timeout", "1", "2"))
    assert pod.pod_spec["terminationGracePeriodSeconds"] >= drain + 10, \
        f"terminationGracePeriodSeconds must exceed --drain-timeout ({drain} s) with room to close"


def test_replicas_survive_a_node_drain(rendered: list[dict[str, Any]]) -> None:
    pod = PgwardenPod.of(rendered)
    labels = pod.deployment["spec"]["template"]["metadata"]["labels"]
    assert pod.deployment["spec"]["replicas"] >= 2
    assert pod.deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    anti = pod.pod_spec["affinity"]["podAntiAffinity"]
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [
        t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" and _selects(t["labelSelector"], labels) for t in terms)
    budget = one(rendered, "PodDisruptionBudget")["spec"]
    assert _selects(budget["selector"], labels)
    allowed_down = budget.get("maxUnavailable", pod.deployment["spec"]["replicas"] - budget.get("minAvailable", 0))
    assert 1 <= allowed_down < pod.deployment["spec"]["replicas"], "a drain must evict one pod and keep the rest"


def test_the_network_policy_admits_the_container_ports(rendered: list[dict[str, Any]]) -> None:
    pod = PgwardenPod.of(rendered)
    policy = one(rendered, "NetworkPolicy")["spec"]
    assert _selects(policy["podSelector"], pod.deployment["spec"]["template"]["metadata"]["labels"])
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    admitted = {pod.port_named(p["port"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert admitted == {p["containerPort"] for p in pod.container["ports"]}


def test_the_pod_runs_unprivileged_within_its_resources(rendered: list[dict[str, Any]]) -> None:
    pod = PgwardenPod.of(rendered)
    assert pod.pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod.pod_spec["automountServiceAccountToken"] is False
    context = pod.container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
    resources = pod.container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_production_runs_a_worker_per_requested_core(tmp_path: Path) -> None:
    pod = PgwardenPod.of(render(KUBERNETES / "overlays" / "production"))
    lay_out(pod, tmp_path)
    workers = pod.parse(tmp_path).workers
    assert workers == int(pod.container["resources"]["requests"]["cpu"]), \
        "--workers must match the CPU the pod requests (auto would count the node's cores)"


def test_the_files_are_in_the_repository() -> None:
    # kustomize reads files relative to each kustomization: a file left out of Git renders here but not in CI.
    assert (ROOT / "deploy" / "kubernetes" / "base" / "kustomization.yaml").is_file()


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())
