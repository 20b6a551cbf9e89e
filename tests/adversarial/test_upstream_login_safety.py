"""A Service pointed at a hostile "PostgreSQL" must not hand it the upstream password, through the proxy or
through the reconciler's post-apply health probe (issue 10, class 5).

The fake servers (tests/support/hostile_upstream.py) answer `N` to SSLRequest and then ask for a cleartext
password, for MD5, let the client in without asking, or fake SCRAM (AuthenticationOk without SASLFinal, or a
made-up server signature). Every Service below uses the default sslMode (PREFER) and the real
`full-access-password` Secret, as a merged manifest naming `fromSecret: <any Secret>` would. The checks are
on what the fake server received, not only on the error the client sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from proxy.snapshot import AuthMechanism
from reconciler import health
from reconciler.directory import load_snapshot
from tests.conftest import LeakGuard
from tests.support.hostile_upstream import BEHAVIOURS, HostileUpstream, hostile_upstreams, md5_answers
from tests.support.proxy_harness import MANIFESTS, ProxyHarness, start_harness

_HOSTILE_SERVICE = """\
---
kind: Service
metadata: {{name: hostile-@BEHAVIOUR@}}
spec:
  config:
    upstream: {{url: "postgres://127.0.0.1:@PORT@"}}
    postgres: {{user: full_access, database: my_db, auth: {{password: {{fromSecret: full-access-password}}}}}}
"""

# Cleartext and MD5 named, as they may be, with VERIFY_FULL: a server answering `N` to SSLRequest gets nothing.
_LEGACY_VERIFIED = """\
---
kind: Service
metadata: {{name: legacy-verified-downgraded}}
spec:
  config:
    upstream: {{url: "postgres://127.0.0.1:@PORT@"}}
    postgres:
      user: full_access
      database: my_db
      auth: {{password: {{fromSecret: full-access-password}}, mechanisms: [SCRAM_SHA_256, MD5, PASSWORD]}}
      sslMode: VERIFY_FULL
      tls: {{ca: {{file: "{ca}"}}}}
"""

REFUSAL = {
    "cleartext": "it asked for a cleartext password; the config allows SCRAM_SHA_256 only (postgres.auth.mechanisms)",
    "md5": "it asked for an MD5 password hash; the config allows SCRAM_SHA_256 only (postgres.auth.mechanisms)",
    "trust": "it asked for nothing: it let us in without asking for the password the config holds",
    "scram-no-final": "sent AuthenticationOk before SCRAM's server-final message",
    "scram-bad-final": "SCRAM server signature does not match",
}
MARKER = "client-query-marker-3d1f"


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, HostileUpstream]]:
    with hostile_upstreams(*BEHAVIOURS) as started:
        yield started


@pytest.fixture(scope="module")
def hostile_proxy(pg: Any, fakes: dict[str, HostileUpstream],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyHarness]:
    extra = "".join(_HOSTILE_SERVICE.replace("@BEHAVIOUR@", b).replace("@PORT@", str(f.port))
                    for b, f in fakes.items())
    extra += _LEGACY_VERIFIED.replace("@PORT@", str(fakes["cleartext"].port))
    harness, stop = start_harness(pg, tmp_path_factory.mktemp("hostile"), manifests_text=MANIFESTS + extra)
    yield harness
    stop()


def _assert_nothing_given_away(fake: HostileUpstream, pg: Any, logins_before: int) -> None:
    assert fake.logins > logins_before, "the fake server was never reached: the test proves nothing"
    received = bytes(fake.received)
    password = pg.passwords["full_access"]
    assert password.encode() not in received
    for answer in md5_answers(password, "full_access"):
        assert answer not in received, "an MD5 hash of the password reached the fake server"
    assert MARKER.encode() not in received, "a client's query reached the impostor"


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_proxy_gives_a_hostile_upstream_nothing(hostile_proxy: ProxyHarness, fakes: dict[str, HostileUpstream],
                                                pg: Any, leak_guard: LeakGuard, behaviour: str) -> None:
    fake = fakes[behaviour]
    before = fake.logins
    with pytest.raises(psycopg.OperationalError) as err:
        with psycopg.connect(hostile_proxy.dsn("alice", f"hostile-{behaviour}"), autocommit=True) as conn:
            conn.execute(f"SELECT '{MARKER}'")  # reached only if the proxy accepted the impostor
    message = str(err.value)
    where = f'upstream of service "hostile-{behaviour}" config "default" (127.0.0.1:{fake.port})'
    assert where in message and REFUSAL[behaviour] in message, message
    leak_guard.check(message, "the client's error")
    _assert_nothing_given_away(fake, pg, before)


async def test_health_probe_gives_a_hostile_upstream_nothing(hostile_proxy: ProxyHarness,
                                                             fakes: dict[str, HostileUpstream], pg: Any,
                                                             leak_guard: LeakGuard) -> None:
    snapshot = load_snapshot(hostile_proxy.manifests)  # what the reconcile loop probes after an apply
    before = {b: f.logins for b, f in fakes.items()}
    results = await health.probe(snapshot)
    for behaviour, fake in fakes.items():
        result = results[f"hostile-{behaviour}"]["default"]
        assert result.startswith("login failed: ") and REFUSAL[behaviour] in result, result
        _assert_nothing_given_away(fake, pg, before[behaviour])
    # Healthy means the proxy's own login works: SCRAM, and MD5/cleartext over verified TLS where named.
    assert results["my-db"] == {"read-only": "ok", "full-access": "ok"}
    assert results["legacy-md5"] == {"default": "ok"} and results["legacy-plain"] == {"default": "ok"}
    leak_guard.check(repr(results), "health results")


def test_runtime_refuses_legacy_mechanism_without_verified_tls_even_if_validation_was_bypassed(
    hostile_proxy: ProxyHarness, fakes: dict[str, HostileUpstream], pg: Any,
) -> None:
    """A snapshot applied without validation (admin API, a bug) still cannot send cleartext in the clear."""
    snapshot = load_snapshot(hostile_proxy.manifests)
    service = snapshot.services["hostile-cleartext"]
    config = service.configs["default"]
    unsafe = dataclasses.replace(config, postgres=dataclasses.replace(
        config.postgres, auth_mechanisms=(AuthMechanism.SCRAM_SHA_256, AuthMechanism.PASSWORD)))
    services = {**snapshot.services, service.name: dataclasses.replace(service, configs={"default": unsafe})}
    fake = fakes["cleartext"]
    before = fake.logins
    hostile_proxy.apply(dataclasses.replace(snapshot, services=services))
    try:
        with pytest.raises(psycopg.OperationalError, match="only over TLS that verifies the server"):
            psycopg.connect(hostile_proxy.dsn("alice", "hostile-cleartext"))
    finally:
        hostile_proxy.reload_from(hostile_proxy.manifests)
    _assert_nothing_given_away(fake, pg, before)


def test_named_legacy_mechanism_with_verify_full_survives_a_tls_downgrade(
    hostile_proxy: ProxyHarness, fakes: dict[str, HostileUpstream], pg: Any,
) -> None:
    fake = fakes["cleartext"]
    before = fake.logins
    with pytest.raises(psycopg.OperationalError, match="does not support TLS but sslMode is VERIFY_FULL"):
        psycopg.connect(hostile_proxy.dsn("alice", "legacy-verified-downgraded"))
    assert fake.logins == before, "the proxy sent a StartupMessage in the clear after the server refused TLS"
    assert pg.passwords["full_access"].encode() not in bytes(fake.received)
