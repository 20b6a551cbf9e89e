"""Time per-query Policy decisions: cold (first sight of a query shape) and warm (repeated shapes).

    python -m bench.policy_decisions [--shapes 200] [--repeats 20000]

Uses pgbench's select-only and TPC-B-like statements (with fresh literals each time, as `pgbench -M simple`
sends them) under a "read-only juniors" policy, a "no DROP outside a change window" policy (which reads
now()) and a group-based rule folded once per session. Prints µs per decision for each phase.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from proxy.policy import classify as classify_module
from proxy.policy.engine import ConnectionPolicy
from proxy.routing import ConnectRequest, LiveSnapshot
from proxy.snapshot import (
    Authorization,
    AuthorizationMode,
    PostgresSettings,
    Service,
    ServiceConfig,
    Snapshot,
    Upstream,
    User,
)
from proxy.snapshot_wire import policy_from_spec

POLICIES = [
    policy_from_spec("read-only-juniors", {"rules": [
        {"name": "no-writes", "effect": "DENY", "condition": {"all": {"of": [
            {"match": 'ctx.user.spec.groups.hasAny(["juniors"])'},
            {"match": "!ctx.request.postgres.statement.readOnly"}]}}},
        {"name": "rest", "effect": "ALLOW", "priority": 4, "condition": {"matchAny": True}},
    ]}),
    policy_from_spec("no-drop-outside-window", {"rules": [
        {"name": "drop-outside-window", "effect": "DENY", "condition": {"all": {"of": [
            {"match": 'ctx.request.postgres.statement.kinds.exists(k, k.startsWith("DROP"))'},
            {"not": 'now().weekdayIn("Europe/Berlin") == "TUE" && now().isBetweenHoursIn(9, 11, "Europe/Berlin")'},
        ]}}},
    ]}),
]

TPCB = [
    "UPDATE pgbench_accounts SET abalance = abalance + {d} WHERE aid = {a};",
    "SELECT abalance FROM pgbench_accounts WHERE aid = {a};",
    "UPDATE pgbench_tellers SET tbalance = tbalance + {d} WHERE tid = {t};",
    "UPDATE pgbench_branches SET bbalance = bbalance + {d} WHERE bid = {b};",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({t}, {b}, {a}, {d}, CURRENT_TIMESTAMP);",
]


def session(groups: tuple[str, ...]) -> ConnectionPolicy:
    config = ServiceConfig(name="default", upstream=Upstream.from_url("postgres://127.0.0.1:5432"),
                           postgres=PostgresSettings(authorization_mode=AuthorizationMode.ALL))
    service = Service(name="db", configs={"default": config}, default_config="default",
                      authorization=Authorization(policies=tuple(p.name for p in POLICIES)))
    user = User(name="u", groups=groups, manifest={"spec": {"groups": list(groups)}})
    live = LiveSnapshot(Snapshot(services={"db": service}, users={"u": user},
                                 policies={p.name: p for p in POLICIES}), generation=1)
    sp = live.connection_policy(live.user("u"), live.service("db"), None,
                             request=ConnectRequest(user="u", database="db"))
    assert sp is not None
    return sp


def per_call_us(fn: Callable[[str], object], statements: list[str]) -> float:
    start = time.perf_counter()
    for sql in statements:
        fn(sql)
    return (time.perf_counter() - start) / len(statements) * 1e6


def literals(rng: random.Random) -> dict[str, int]:
    return {"a": rng.randint(1, 100_000), "b": rng.randint(1, 10), "t": rng.randint(1, 100),
            "d": rng.randint(-5000, 5000)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_decisions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=int, default=200, help="distinct query shapes for the cold phase")
    parser.add_argument("--repeats", type=int, default=20_000, help="decisions in each warm phase")
    args = parser.parse_args(argv)
    rng = random.Random(1)
    junior, senior = session(("juniors",)), session(())
    cold = [f"SELECT c{i} FROM t{i} WHERE id = {i}" for i in range(args.shapes)]
    rows = [
        ("cold: new shape (parse + CEL)", per_call_us(junior.decide_query, cold)),
        ("warm: same text again", per_call_us(junior.decide_query, [cold[i % len(cold)] for i in range(args.repeats)])),
        ("warm: TPC-B, new literals", per_call_us(
            junior.decide_query, [rng.choice(TPCB).format(**literals(rng)) for _ in range(args.repeats)])),
        ("warm: TPC-B prepared (Parse)", per_call_us(
            lambda sql: senior.decide_parse("", sql), [rng.choice(TPCB) for _ in range(args.repeats)])),
    ]
    classify_module._by_text.clear()
    classify_module._by_normalized.clear()
    classify_module._by_shape.clear()
    rows.append(("cold classify only (libpg_query)", per_call_us(
        classify_module.classify, [f"SELECT c{i} FROM t{i} WHERE id = {i}" for i in range(args.shapes)])))
    for label, us in rows:
        print(f"{label:40} {us:8.1f} µs/decision")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
