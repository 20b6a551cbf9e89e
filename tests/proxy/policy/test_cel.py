"""The CEL environment: custom functions, Octelium's missing-data and fail-closed rules, the cache."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from proxy.policy import cel
from proxy.policy.cel import (
    CelCompileError,
    ConditionError,
    compile_condition,
    compile_expression,
    to_cel,
)
from proxy.snapshot import Condition, UserType


@pytest.fixture
def activation() -> dict[str, Any]:
    ctx = {
        "user": {
            "metadata": {"name": "Alice"},
            "spec": {"type": UserType.HUMAN, "groups": ("engineering", "oncall"), "attrs": {"level": 3, "gone": None}},
        },
        "groups": [{"metadata": {"name": "engineering"}, "spec": {"attrs": {"tier": 2}}}],
        "service": MappingProxyType({"metadata": {"name": "my-db"}, "spec": {"attrs": {}}}),
        "request": {"postgres": {"connect": {"user": "app", "database": "orders", "applicationName": "psql"}}},
    }
    return {"ctx": to_cel(ctx)}


def check(expr: str, activation: dict[str, Any]) -> bool:
    return compile_expression(expr).evaluate(activation)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('ctx.user.spec.groups.hasAny(["engineering", "admins"])', True),
        ('ctx.user.spec.groups.hasAny(["admins"])', False),
        ("ctx.user.spec.groups.hasAny([])", False),
        ('ctx.user.spec.groups.hasAll(["engineering", "oncall"])', True),
        ('ctx.user.spec.groups.hasAll(["engineering", "admins"])', False),
        ("ctx.user.spec.groups.hasAll([])", True),
        ('[1, "engineering"].hasAny(["engineering"])', True),  # mixed types compare unequal, no error
        ('ctx.user.metadata.name.toLower() == "alice"', True),
        ('ctx.user.metadata.name.toUpper() == "ALICE"', True),
        ('ctx.user.spec.type == "HUMAN"', True),  # enums arrive as their string values
        ('ctx.request.postgres.connect.database.startsWith("ord")', True),
        ('ctx.service.metadata.name.matches("^my-")', True),
        ('ctx.user.spec.groups.exists(g, g.toUpper() == "ONCALL")', True),
        ("ctx.groups[0].spec.attrs.tier == 2", True),
    ],
)
def test_functions_and_standard_cel(expr: str, expected: bool, activation: dict[str, Any]) -> None:
    assert check(expr, activation) is expected


@pytest.mark.parametrize(
    "expr",
    [
        "ctx.user.spec.missing == 1",  # no such key
        'ctx.user.spec.attrs["nope"] == 1',  # no such key by index
        "ctx.groups[5].metadata.name == 'x'",  # index out of range
        "ctx.user.spec.attrs.gone.deeper == 1",  # field of null
        'ctx.request.postgres.query.query.matches("DROP")',  # a per-query rule at connect time
        'ctx.user.spec.missing.hasAny(["x"])',
        "!(ctx.user.spec.missing == 1)",  # negation inside CEL keeps the error, so still false
    ],
)
def test_missing_data_is_false(expr: str, activation: dict[str, Any]) -> None:
    assert check(expr, activation) is False


def test_missing_data_is_absorbed_by_or(activation: dict[str, Any]) -> None:
    assert check("ctx.user.spec.missing == 1 || true", activation) is True


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ('ctx.user.spec.attrs.level + "x" == "3x"', "no matching overload"),
        ('ctx.user.spec.attrs.level.toLower() == "x"', "no matching overload"),
        ("ctx.user.metadata.name.first == 1", "not a map"),
        ("ctx.user.spec.attrs.level", "not a bool"),
        ('ctx.user.metadata.name.matches("[")', "match error"),
        ("1 / 0 == 1", "divide by zero"),
        ("attrs.x == 1", "undeclared reference to 'attrs'"),  # declared for Policies, not bound here
    ],
)
def test_other_errors_fail_closed(expr: str, reason: str, activation: dict[str, Any]) -> None:
    with pytest.raises(ConditionError) as info:
        check(expr, activation)
    assert reason in str(info.value)
    assert info.value.expression == expr


def test_condition_error_does_not_echo_context_values() -> None:
    secret_query = "ALTER USER x PASSWORD 'Sup3rS3cret'"
    activation = {"ctx": to_cel({"request": {"postgres": {"query": {"query": secret_query}}}})}
    for expr in ("ctx.request.postgres.query.query.x == 1", "ctx.request.postgres.query.query + 1 == 2"):
        with pytest.raises(ConditionError) as info:
            check(expr, activation)
        assert "Sup3rS3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("expr", "position", "reason"),
    [
        ("ctx.user.", "column 9", "unexpected end of expression"),
        ("ctx.user == 1 )", "column 15", "unexpected ')'"),
        ("ctx.a ==\n  #", "line 2, column 3", "unexpected character '#'"),
        ('ctx.user.spec.groups.hasAnyy(["x"])', "column 22", "unknown function 'hasAnyy'"),
        ("nope(1)", "column 1", "unknown function 'nope'"),
        ("user.name == 'x'", "column 1", "undeclared reference to 'user'"),
        ("ctx.l.exists(x, y == 1)", "column 17", "undeclared reference to 'y'"),
    ],
)
def test_compile_errors_name_the_position(expr: str, position: str, reason: str) -> None:
    with pytest.raises(CelCompileError) as info:
        compile_expression(expr)
    assert str(info.value) == f"{position}: {reason}"
    assert isinstance(info.value, ValueError)


def test_compile_refuses_empty_and_overlong() -> None:
    with pytest.raises(CelCompileError, match="empty"):
        compile_expression("  ")
    with pytest.raises(CelCompileError, match="longer than"):
        compile_expression("true || " * 2000 + "true")


def test_macros_bind_their_variables() -> None:
    compile_expression("ctx.l.all(x, x > 0) && ctx.l.map(y, y * 2).exists(z, z == 4) && has(ctx.a.b)")


def test_compile_is_cached_by_text() -> None:
    first = compile_expression('ctx.user.metadata.name == "cache-check"')
    assert compile_expression('ctx.user.metadata.name == "cache-check"') is first
    assert compile_expression('ctx.user.metadata.name == "cache-check" ') is not first


def cond(**kwargs: Any) -> Condition:
    return Condition(**kwargs)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (cond(match="true"), True),
        (cond(match="false"), False),
        (cond(match_any=True), True),
        (cond(match_any=False), False),  # Octelium: matchAny false never matches
        (cond(), False),
        (cond(not_="false"), True),
        (cond(not_="true"), False),
        # As Octelium: `not` evaluates its expression first (missing data -> false), then negates.
        (cond(not_="ctx.user.spec.missing == 1"), True),
        (cond(all_of=(cond(match="true"), cond(match_any=True))), True),
        (cond(all_of=(cond(match="true"), cond(match="false"))), False),
        (cond(any_of=(cond(match="false"), cond(match="true"))), True),
        (cond(any_of=(cond(match="false"),)), False),
        (cond(none_of=(cond(match="false"), cond(match="false"))), True),
        (cond(none_of=(cond(match="false"), cond(match="true"))), False),
        (cond(all_of=()), False),  # empty `of` never matches
        (cond(any_of=()), False),
        (cond(none_of=()), False),
        (cond(all_of=(cond(any_of=(cond(not_="false"),)), cond(none_of=(cond(match="false"),)))), True),
    ],
)
def test_condition_semantics(condition: Condition, expected: bool, activation: dict[str, Any]) -> None:
    assert compile_condition(condition).evaluate(activation) is expected


def test_condition_error_propagates_from_a_child(activation: dict[str, Any]) -> None:
    compiled = compile_condition(cond(any_of=(cond(match="false"), cond(match="ctx.user.metadata.name + 1 == 2"))))
    with pytest.raises(ConditionError):
        compiled.evaluate(activation)


def test_compile_condition_raises_for_a_bad_child() -> None:
    with pytest.raises(CelCompileError):
        compile_condition(cond(all_of=(cond(match="true"), cond(none_of=(cond(match="ctx.(("),)))))


def test_seed_rule_routes_by_group() -> None:
    rule = compile_condition(cond(match='ctx.user.spec.groups.hasAny(["engineering", "admins"])'))
    engineer = {"ctx": to_cel({"user": {"metadata": {"name": "alice"}, "spec": {"groups": ["engineering"]}}})}
    outsider = {"ctx": to_cel({"user": {"metadata": {"name": "bob"}, "spec": {"groups": []}}})}
    no_groups = {"ctx": to_cel({"user": {"metadata": {"name": "carol"}, "spec": {}}})}
    assert [rule.evaluate(a) for a in (engineer, outsider, no_groups)] == [True, False, False]


def test_namespaced_functions_dispatch_on_their_namespace() -> None:
    # How a later `time.isWeekday(ts)` plugs in: register "time.isWeekday" in functions.py.
    table, namespaces = cel._bind_functions({"demo.twice": lambda x: x * 2, "twice": lambda x: x + x})
    assert table["twice"](namespaces["demo"], 21) == 42  # demo.twice(21)
    assert table["twice"]("ab") == "abab"  # "ab".twice(): the plain method still works
    with pytest.raises(TypeError):
        table["twice"](cel._Namespace("other"), 1)
