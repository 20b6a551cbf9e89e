"""The small overlay's container, run as the kubelet would run it (its args, its mounted files), answers the
probes it declares: /livez at once, /readyz once the first revision is live."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

import git

from tests.deploy.pod_files import lay_out
from tests.deploy.rendered import KUBERNETES, ROOT, PgwardenPod, in_pod, render
from tests.support.pgcluster import free_port

GROUP = "kind: Group\nmetadata: {name: admins}\n"


def _get(port: int, path: str) -> int:
    # The kubelet probes the pod's IP: the Host header names an address pgwarden never heard of.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": f"10.1.2.3:{port}", "User-Agent": "kube-probe/1.31"})
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


def _wait_for(port: int, path: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    status = 0
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"pgwarden up exited {proc.returncode}:\n{log.read_text()}"
        status = _get(port, path)
        if status in (200, 404):  # 404: the path is not served at all, waiting will not help
            return status
        time.sleep(0.1)
    return status


def test_the_small_overlay_runs_and_answers_its_probes(tmp_path: Path) -> None:
    pod = PgwardenPod.of(render(KUBERNETES / "overlays" / "small"))
    pod_root = tmp_path / "pod"
    lay_out(pod, pod_root)
    repo_dir = tmp_path / "repo"
    repo = git.Repo.init(repo_dir, initial_branch="main")
    (repo_dir / "groups.yaml").write_text(GROUP)
    repo.index.add(["groups.yaml"])
    repo.index.commit("one group", author=git.Actor("t", "t@example.com"), committer=git.Actor("t", "t@example.com"))
    listen, http_port = free_port(), free_port()
    # What cannot run on this machine is swapped, and only that: loopback for 0.0.0.0, a local repository.
    swapped = {"--listen": f"127.0.0.1:{listen}", "--http-listen": f"127.0.0.1:{http_port}", "--repo": str(repo_dir)}
    args = [f"{arg.split('=', 1)[0]}={swapped[arg.split('=', 1)[0]]}" if arg.split("=", 1)[0] in swapped else arg
            for arg in in_pod(pod.args, pod_root)]
    assert len(args) == len(pod.args)
    env = {**os.environ, **{e["name"]: e["value"] for e in pod.container.get("env", []) if "value" in e},
           "HOME": str(pod_root / "tmp"), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pgwarden", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path)
    try:
        liveness = pod.container["livenessProbe"]["httpGet"]["path"]
        readiness = pod.container["readinessProbe"]["httpGet"]["path"]
        assert _wait_for(http_port, liveness, proc, log) == 200, f"{liveness} never answered 200:\n{log.read_text()}"
        assert _wait_for(http_port, readiness, proc, log) == 200, f"{readiness} never answered 200:\n{log.read_text()}"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
