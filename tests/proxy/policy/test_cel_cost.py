"""CEL cost: compile-time limits on comprehensions and literals, and the per-evaluation budget at run time."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.policy.cel import CelCompileError, ConditionError, compile_expression, to_cel
from proxy.policy.cel_cost import (
    ASSUMED_LIST_ELEMENTS,
    COST_BUDGET,
    MAX_COMPREHENSION_DEPTH,
    MAX_LITERAL_ELEMENTS,
    MAX_STRING_LITERAL_CHARS,
)

TEN = "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"


def nested_all(depth: int, over: str = TEN) -> str:
    """`over.all(v0, over.all(v1, ... v0 + v1 + ... > 0))`: each level multiplies the work by len(over)."""
    body = " + ".join(f"v{i}" for i in range(depth)) + " > 0"
    expr = body
    for i in reversed(range(depth)):
        expr = f"{over}.all(v{i}, {expr})"
    return expr


def test_the_nine_second_rule_is_refused_at_compile_time() -> None:
    # Five nested all() over ten-element literals: 100,000 body evaluations, seconds each time before the fix.
    with pytest.raises(CelCompileError, match=f"comprehensions nest more than {MAX_COMPREHENSION_DEPTH} deep") as err:
        compile_expression(nested_all(5))
    assert err.value.column is not None  # placed at the comprehension that goes too deep


def test_a_rule_within_the_depth_but_over_the_budget_is_refused() -> None:
    twenty = "[" + ", ".join(str(i) for i in range(20)) + "]"
    with pytest.raises(CelCompileError, match=f"exceeds the budget of {COST_BUDGET}"):
        compile_expression(nested_all(3, twenty))


@pytest.mark.parametrize(
    "expr",
    [
        "ctx.request.postgres.statement.kinds.exists(k, attrs.ddlPrefixes.exists(p, k.startsWith(p)))",
        "ctx.request.postgres.statement.tables.exists(t, t.contains('secret'))",
        "ctx.groups.exists(g, g.metadata.name in ['dba', 'oncall']) && ctx.user.spec.groups.all(g, g != 'x')",
        "ctx.l.map(y, y * 2).filter(z, z > 2).exists(z, z == 4)",
        nested_all(2),
    ],
)
def test_ordinary_rules_compile(expr: str) -> None:
    compile_expression(expr)


def test_literal_and_string_sizes_are_bounded() -> None:
    long_list = "[" + ", ".join(['"u"'] * (MAX_LITERAL_ELEMENTS + 1)) + "]"
    with pytest.raises(CelCompileError, match=f"list literal has {MAX_LITERAL_ELEMENTS + 1} elements"):
        compile_expression(f"ctx.user.metadata.name in {long_list}")
    long_map = "{" + ", ".join(f'"k{i}": 1' for i in range(MAX_LITERAL_ELEMENTS + 1)) + "}"
    with pytest.raises(CelCompileError, match="map literal has"):
        compile_expression(f"'k1' in {long_map}")
    with pytest.raises(CelCompileError, match="string literal has"):
        compile_expression(f"ctx.user.metadata.name == '{'a' * MAX_STRING_LITERAL_CHARS}'")
    compile_expression(f"ctx.user.metadata.name == '{'a' * 100}'")


def test_every_caller_gets_the_check() -> None:
    # Workload mapping compiles with extra variables through the same entry point.
    with pytest.raises(CelCompileError, match="nest more than"):
        compile_expression(nested_all(4).replace("> 0", "> size(claims.amr)"), variables=frozenset({"claims"}))


def _tables(n: int) -> dict[str, Any]:
    names = [f"t{i}" for i in range(n)]
    return {"ctx": to_cel({"request": {"postgres": {"query": {"tables": names}}}}), "attrs": to_cel({"deny": ["x"]})}


def test_inputs_larger_than_assumed_are_stopped_by_the_run_time_budget() -> None:
    rule = compile_expression("ctx.request.postgres.query.tables.all(t, attrs.deny.all(d, t != d))")
    assert rule.evaluate(_tables(ASSUMED_LIST_ELEMENTS)) is True
    with pytest.raises(ConditionError, match=f"exceeded its budget of {COST_BUDGET}"):
        rule.evaluate(_tables(10_000))


def test_the_budget_is_per_evaluation_and_cannot_be_swallowed_by_exists() -> None:
    # exists() turns evaluation errors of its body into values; the budget must not become one of them.
    rule = compile_expression("ctx.request.postgres.query.tables.exists(t, ctx.request.postgres.query.tables"
                              ".exists(u, u == t && t == 'none'))")
    with pytest.raises(ConditionError, match="exceeded its budget"):
        rule.evaluate(_tables(300))
    assert rule.evaluate(_tables(5)) is False  # a fresh meter each time


def test_many_rules_each_within_budget_cannot_add_up_to_a_stall() -> None:
    # 40 DENY rules, each within its own budget (about 1,300 node visits with thirty tables), none matching:
    # before the decision budget all of them ran for every request. Now the decision stops and denies.
    from proxy.policy.cel_cost import DECISION_BUDGET
    from tests.policy.test_engine import connection_policy, live, policy, rule

    body = "ctx.request.postgres.statement.tables.exists(t, t.startsWith('secret_{i}'))"
    rules = [rule(f"r{i}", "DENY", {"match": body.format(i=i)}) for i in range(40)]
    heavy = policy("heavy", *rules, rule("rest", "ALLOW", {"matchAny": True}, priority=4))
    sp = connection_policy(live(heavy, user_policies=("heavy",)))
    tables = ", ".join(f"t{i}" for i in range(30))
    decision = sp.decide_query(f"SELECT 1 FROM {tables}")
    assert not decision.allowed
    assert f"the decision exceeded its budget of {DECISION_BUDGET}" in decision.reason
    assert sp.decide_query("SELECT 1 FROM t0").allowed  # a smaller request fits: the rules still decide


def test_a_policys_attrs_lists_count_their_real_size() -> None:
    from proxy.policy.cel import check_cost_with

    rule = "ctx.request.postgres.statement.tables.exists(t, attrs.protected.exists(p, t.startsWith(p)))"
    compile_expression(rule)  # alone: attrs.protected is assumed to be short
    check_cost_with(rule, attrs={"protected": [f"p{i}" for i in range(20)]})
    with pytest.raises(CelCompileError, match="attrs lists count their actual elements"):
        check_cost_with(rule, attrs={"protected": [f"p{i}" for i in range(400)]})
