"""The Containerfile (not built here: containers cannot run on these machines) agrees with the manifests:
its ENTRYPOINT is the command the Deployment's args are for, it exposes the container ports, and its user is
the one the pod runs as."""

from __future__ import annotations

import json
import re
import tomllib

from reconciler.json_schema import SCHEMA_DIR
from tests.deploy.rendered import CONTAINERFILE, KUBERNETES, OVERLAYS, ROOT, PgwardenPod, render


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages[-1]


def _last(name: str) -> str:
    values = [rest for word, rest in _instructions() if word == name]
    assert values, f"the Containerfile's final stage has no {name}"
    return values[-1]


def test_the_entrypoint_is_pgwarden_and_the_deployment_gives_only_args() -> None:
    entrypoint = json.loads(_last("ENTRYPOINT"))  # exec form: signals reach pgwarden, not a shell
    assert entrypoint == ["pgwarden"]
    for overlay in OVERLAYS:
        pod = PgwardenPod.of(render(overlay))
        assert "command" not in pod.container and pod.args[0] == "up", overlay.name


def test_the_exposed_ports_are_the_container_ports() -> None:
    exposed = {int(p.split("/")[0]) for p in _last("EXPOSE").split()}
    for tree in [KUBERNETES / "base", *OVERLAYS]:
        pod = PgwardenPod.of(render(tree))
        assert exposed == {p["containerPort"] for p in pod.container["ports"]}, tree.name


def test_the_image_user_is_the_pod_user_and_not_root() -> None:
    user, _, group = _last("USER").partition(":")
    assert user.isdigit() and int(user) != 0, "a numeric user lets runAsNonRoot verify it"
    pod = PgwardenPod.of(render(KUBERNETES / "base"))
    context = pod.pod_spec["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(user), int(group or user))


def test_the_image_is_debian_slim_python_3_11_and_the_compiler_stays_in_the_build_stage() -> None:
    text = CONTAINERFILE.read_text()
    images = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert len(images) == 2 and all(i.startswith("python:3.11-slim") for i in images), images
    final = " ".join(rest for _, rest in _instructions())
    assert "gcc" not in final, "the runtime image needs no compiler"
    build = text.split("\nFROM ", 2)[1]
    assert "gcc" in build and "pip install" in build


def test_the_build_context_holds_every_package_and_the_schemas() -> None:
    """`COPY . /opt/pgwarden` takes what .dockerignore lets through: all pyproject's packages, and schemas/."""
    assert ("COPY", ". /opt/pgwarden") in _instructions_all()
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list: only what is named below goes into the image"
    allowed = {p[1:] for p in patterns if p.startswith("!")}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    needed = {pattern.rstrip("*") for pattern in packages["include"]}
    needed |= {SCHEMA_DIR.relative_to(ROOT).as_posix(), "pyproject.toml", "setup.py", "README.md"}
    assert needed <= allowed, f"not in the image: {sorted(needed - allowed)}"
    assert all((ROOT / name).exists() for name in needed)
    assert "**/*.so" in patterns, "the walker is compiled in the image, not copied from the host"


def _instructions_all() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    return [(line.split(" ", 1)[0].upper(), line.split(" ", 1)[1]) for line in map(str.strip, text.splitlines())
            if line and not line.startswith("#") and " " in line]
