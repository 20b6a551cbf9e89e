"""The deploy/ files as a cluster would see them: overlays rendered by the real `kubectl kustomize`."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from pgwarden.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
CONTAINERFILE = ROOT / "Containerfile"
OVERLAYS = sorted(p.parent for p in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
# The in-pod directories the manifests mount; tests map them into a temporary directory.
POD_DIRS = ("/etc/pgwarden", "/var/lib/pgwarden")


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not on PATH: run `bash tests/install-deps.sh python`, which installs it")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`, parsed: one dict per object."""
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{out.stderr}"
    return [doc for doc in YAML(typ="safe").load_all(out.stdout) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@dataclass(frozen=True)
class PgwardenPod:
    """The rendered Deployment's pgwarden container and what its arguments mean to `pgwarden up`."""

    deployment: dict[str, Any]
    container: dict[str, Any]

    @classmethod
    def of(cls, objects: list[dict[str, Any]]) -> PgwardenPod:
        deployment = one(objects, "Deployment")
        containers = deployment["spec"]["template"]["spec"]["containers"]
        return cls(deployment, next(c for c in containers if c["name"] == "pgwarden"))

    @property
    def pod_spec(self) -> dict[str, Any]:
        return dict(self.deployment["spec"]["template"]["spec"])

    @property
    def args(self) -> list[str]:
        return list(self.container["args"])

    def option(self, name: str) -> str | None:
        """The value of `--name=value` or `--name value` in args (the last one wins, as argparse does)."""
        value = None
        for i, arg in enumerate(self.args):
            if arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
            elif arg == name and i + 1 < len(self.args):
                value = self.args[i + 1]
        return value

    def port_named(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        return next(p["containerPort"] for p in self.container["ports"] if p["name"] == name_or_number)

    def parse(self, pod_root: Path) -> argparse.Namespace:
        """The args through `pgwarden up`'s own parser, with in-pod paths mapped under `pod_root`.

        argparse exits (SystemExit 2) on an unknown or renamed option, a bad value, or a file it cannot read.
        """
        return build_parser().parse_args(in_pod(self.args, pod_root))


def in_pod(args: list[str], pod_root: Path) -> list[str]:
    """Map the in-pod directories of the arguments under `pod_root` (a stand-in for the pod's filesystem)."""
    pattern = re.compile("|".join(re.escape(d) for d in POD_DIRS))
    return [pattern.sub(lambda m: str(pod_root) + m.group(0), arg) for arg in args]



def dest_of(option: str, *values: str) -> str:
    """The attribute `pgwarden up` stores `option` in, found by parsing it with two values (public argparse only)."""
    first, second = (vars(build_parser("up").parse_args(["up", option, v])) for v in values)
    changed = [name for name in first if first[name] != second[name]]
    assert len(changed) == 1, f"{option}: expected one attribute to change, got {changed}"
    return changed[0]
