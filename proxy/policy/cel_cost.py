"""What a CEL expression may cost: limits checked when it compiles, and a meter that stops it when it runs.

celpy interprets the parse tree node by node (a few microseconds per node) on the proxy's event loop, so a
rule's cost is the number of tree nodes it visits. Comprehension macros (`all`, `exists`, `exists_one`,
`map`, `filter`, celpy's `reduce`) visit their body once per element and multiply: five nested `all()`
over ten-element list literals is 100,000 body visits, seconds of a frozen loop for every other session.

At compile time `check_cost` refuses an expression that nests comprehensions more than
MAX_COMPREHENSION_DEPTH deep, holds a list or map literal of more than MAX_LITERAL_ELEMENTS elements or a
string literal longer than MAX_STRING_LITERAL_CHARS, or whose estimated worst case exceeds COST_BUDGET.
The estimate is the node count outside comprehensions plus, per comprehension, (elements x (body nodes +
ITERATION_OVERHEAD)) times the elements of every comprehension around it. A literal's element count is
known; any other range (`ctx.groups`, `ctx.request.postgres.query.tables`, `attrs.x`, a variable) is
assumed to hold ASSUMED_LIST_ELEMENTS.

At run time the inputs can be larger than assumed (a query naming 10,000 tables), so every comprehension
step is charged to a per-evaluation Meter holding the same COST_BUDGET; a step past it raises
CostExceeded, which the caller turns into a denial (fail closed). Each evaluation is also charged its node
count up front, and a decision (`@decision_budget`: connect, routing, one request) charges every expression
it evaluates to one DecisionMeter of DECISION_BUDGET, so a hundred rules each within budget cannot add up
to a stall either.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import lark
from celpy import Environment, InterpretedRunner
from celpy.evaluation import Evaluator

MAX_COMPREHENSION_DEPTH = 3  # comprehensions inside comprehensions inside comprehensions, no deeper
MAX_LITERAL_ELEMENTS = 500  # elements of one list literal, or entries of one map literal (~10 nodes each)
MAX_STRING_LITERAL_CHARS = 2_048  # one string or bytes literal, quotes included
ASSUMED_LIST_ELEMENTS = 10  # the compile-time guess for a list that is not a literal (groups, tables, attrs)
ITERATION_OVERHEAD = 20  # a comprehension step costs about this many nodes beyond its body (activation copy)
COST_BUDGET = 10_000  # node visits per evaluation, estimated at compile time and counted at run time (~30-90 ms)
DECISION_BUDGET = 4 * COST_BUDGET  # node visits per decision, over every expression it evaluates (run time)

COMPREHENSIONS = frozenset({"all", "exists", "exists_one", "map", "filter", "reduce"})
_SIZE_PRESERVING = frozenset({"map", "filter"})  # the result has at most as many elements as the range
_STRING_TOKENS = frozenset({"STRING_LIT", "MLSTRING_LIT", "BYTES_LIT"})
P = ParamSpec("P")
R = TypeVar("R")


class CostLimitError(ValueError):
    """An expression over a compile-time limit; `token` (when known) places it in the expression."""

    def __init__(self, reason: str, token: Any = None) -> None:
        self.reason = reason
        self.token = token
        super().__init__(reason)


class CostExceeded(Exception):
    """An evaluation spent its budget. Deliberately not a CELEvalError: celpy's `all`/`exists` swallow those."""


# --- compile time -------------------------------------------------------------------------------


def check_cost(tree: lark.Tree[Any], sizes: Mapping[tuple[str, ...], int] | None = None) -> dict[int, int]:
    """Refuse `tree` over a limit (CostLimitError); else the run-time charge per step of each comprehension,
    keyed by the id of its `member_dot_arg` node (the tree is kept by the program, so ids stay valid).

    `sizes` gives known element counts of variables' lists, e.g. {("attrs", "prefixes"): 40} from a Policy's
    attrs; other non-literal lists count ASSUMED_LIST_ELEMENTS."""
    charges: dict[int, int] = {}
    estimate = _estimate(tree, 0, charges, sizes or {})
    if estimate > COST_BUDGET:
        assumed = f"a list that is not a literal is assumed to have {ASSUMED_LIST_ELEMENTS} elements"
        if sizes:
            assumed += ", attrs lists count their actual elements"
        raise CostLimitError(
            f"estimated cost {estimate} exceeds the budget of {COST_BUDGET} node visits per evaluation "
            f"({assumed}); nest fewer comprehensions or range over shorter lists"
        )
    return charges


def _nodes(tree: lark.Tree[Any]) -> int:
    return sum(1 for _ in tree.iter_subtrees())


def _estimate(tree: lark.Tree[Any], depth: int, charges: dict[int, int],
              sizes: Mapping[tuple[str, ...], int]) -> int:
    """Node visits to evaluate `tree` once; records each comprehension's per-step charge in `charges`."""
    kind = tree.data
    children: list[Any] = tree.children
    if kind == "member_dot_arg" and str(children[1]) in COMPREHENSIONS and len(children) > 2:
        token = children[1]
        if depth >= MAX_COMPREHENSION_DEPTH:
            raise CostLimitError(f"comprehensions nest more than {MAX_COMPREHENSION_DEPTH} deep", token)
        args = [c for c in children[2].children if isinstance(c, lark.Tree)]
        if not args:
            return 1
        body = args[-1]
        step = _nodes(body) + ITERATION_OVERHEAD
        charges[id(tree)] = step
        target_cost = _estimate(children[0], depth, charges, sizes)
        setup = sum(_estimate(a, depth, charges, sizes) for a in args[2:-1])  # reduce's initial value
        body_cost = _estimate(body, depth + 1, charges, sizes)
        return 1 + target_cost + setup + _range(children[0], sizes) * (body_cost + ITERATION_OVERHEAD)
    if kind in ("list_lit", "map_lit") and children and isinstance(children[0], lark.Tree):
        elements = sum(1 for c in children[0].children if isinstance(c, lark.Tree))
        if kind == "map_lit":
            elements //= 2  # mapinits holds key, value, key, value...
        if elements > MAX_LITERAL_ELEMENTS:
            what = "list" if kind == "list_lit" else "map"
            raise CostLimitError(f"a {what} literal has {elements} elements (at most {MAX_LITERAL_ELEMENTS})",
                                 _first_token(tree))
    total = 1
    for child in children:
        if isinstance(child, lark.Tree):
            total += _estimate(child, depth, charges, sizes)
        elif isinstance(child, lark.Token) and child.type in _STRING_TOKENS and len(child) > MAX_STRING_LITERAL_CHARS:
            raise CostLimitError(f"a string literal has {len(child)} characters (at most {MAX_STRING_LITERAL_CHARS})",
                                 child)
    return total


def _range(tree: Any, sizes: Mapping[tuple[str, ...], int]) -> int:
    """How many elements a comprehension over `tree` visits: exact for literals and known sizes, else assumed."""
    while isinstance(tree, lark.Tree) and len(tree.children) == 1 and tree.data not in ("list_lit", "map_lit"):
        tree = tree.children[0]
    if not isinstance(tree, lark.Tree):
        return ASSUMED_LIST_ELEMENTS
    if tree.data in ("list_lit", "map_lit"):
        if not tree.children or not isinstance(tree.children[0], lark.Tree):
            return 0
        elements = sum(1 for c in tree.children[0].children if isinstance(c, lark.Tree))
        return elements // 2 if tree.data == "map_lit" else elements
    if tree.data == "paren_expr":
        return _range(tree.children[0], sizes)
    if tree.data == "member_dot_arg" and str(tree.children[1]) in _SIZE_PRESERVING:
        return _range(tree.children[0], sizes)
    path = dotted_names(tree)
    if path is not None and path in sizes:
        return sizes[path]
    return ASSUMED_LIST_ELEMENTS


def dotted_names(tree: Any) -> tuple[str, ...] | None:
    """`attrs.a.b` -> ("attrs", "a", "b"); None for anything but a chain of names (celpy's lark tree)."""
    if not isinstance(tree, lark.Tree):
        return None
    if tree.data == "member_dot":
        base = dotted_names(tree.children[0])
        return None if base is None else (*base, str(tree.children[1]))
    if tree.data in ("member", "primary") and len(tree.children) == 1:
        return dotted_names(tree.children[0])
    if tree.data == "ident":
        return (str(tree.children[0]),)
    return None


def list_sizes(value: Any, prefix: tuple[str, ...]) -> dict[tuple[str, ...], int]:
    """Element counts of every list and map under `value` (a Policy's attrs), keyed by dotted path."""
    found: dict[tuple[str, ...], int] = {}
    if isinstance(value, Mapping):
        found[prefix] = len(value)
        for key, item in value.items():
            found.update(list_sizes(item, (*prefix, str(key))))
    elif isinstance(value, list | tuple):
        found[prefix] = len(value)
    return found


def _first_token(tree: lark.Tree[Any]) -> Any:
    for token in tree.scan_values(lambda v: isinstance(v, lark.Token)):
        return token
    return None


# --- run time -----------------------------------------------------------------------------------


class DecisionMeter:
    """The budget of one decision: every expression it evaluates (rules, nested conditions) draws on it.

    A rule set of many expressions, each within COST_BUDGET, must not add up to a stall either.
    """

    __slots__ = ("remaining",)

    def __init__(self, budget: int = DECISION_BUDGET) -> None:
        self.remaining = budget


_DECISION: ContextVar[DecisionMeter | None] = ContextVar("pgwarden_cel_decision", default=None)


def decision_budget(fn: Callable[P, R]) -> Callable[P, R]:
    """Run `fn` (a decision: connect, routing, one request) under one DecisionMeter; nested calls share it."""

    @functools.wraps(fn)
    def within(*args: P.args, **kwargs: P.kwargs) -> R:
        if _DECISION.get() is not None:
            return fn(*args, **kwargs)
        token = _DECISION.set(DecisionMeter())
        try:
            return fn(*args, **kwargs)
        finally:
            _DECISION.reset(token)

    return within


class Meter:
    """The budget of one evaluation, shared by the evaluator and every sub-evaluator a macro builds;
    each charge also draws on the decision's meter when one is running."""

    __slots__ = ("remaining", "charges", "decision")

    def __init__(self, budget: int, charges: dict[int, int], decision: DecisionMeter | None) -> None:
        self.remaining = budget
        self.charges = charges
        self.decision = decision

    def charge(self, cost: int) -> None:
        self.remaining -= cost
        if self.remaining < 0:
            raise CostExceeded(f"evaluation exceeded its budget of {COST_BUDGET} node visits")
        decision = self.decision
        if decision is not None:
            decision.remaining -= cost
            if decision.remaining < 0:
                raise CostExceeded(f"the decision exceeded its budget of {DECISION_BUDGET} node visits")

    def metered(self, step: Callable[..., Any], macro: lark.Tree[Any]) -> Callable[..., Any]:
        cost = self.charges.get(id(macro)) or _nodes(macro) + ITERATION_OVERHEAD

        def charged(*args: Any) -> Any:
            self.charge(cost)
            return step(*args)

        return charged


class _MeteredEvaluator(Evaluator):
    """celpy's interpreter with each macro step charged to a Meter (celpy has no hook of its own)."""

    meter: Meter

    def sub_evaluator(self, ast: lark.Tree[Any]) -> Evaluator:
        nested = _MeteredEvaluator(ast, activation=self.activation)
        nested.meter = self.meter
        return nested

    def build_macro_eval(self, child: lark.Tree[Any]) -> Callable[[Any], Any]:
        return self.meter.metered(super().build_macro_eval(child), child)

    def build_ss_macro_eval(self, child: lark.Tree[Any]) -> Callable[[Any], Any]:
        return self.meter.metered(super().build_ss_macro_eval(child), child)

    def build_reduce_macro_eval(self, child: lark.Tree[Any]) -> tuple[Callable[[Any, Any], Any], lark.Tree[Any]]:
        step, initial = super().build_reduce_macro_eval(child)
        return self.meter.metered(step, child), initial


class MeteredRunner(InterpretedRunner):
    """An InterpretedRunner whose every evaluation gets a fresh Meter of `budget` node visits."""

    def __init__(self, environment: Environment, ast: lark.Tree[Any], functions: Any, charges: dict[int, int],
                 budget: int = COST_BUDGET) -> None:
        super().__init__(environment, ast, functions)
        self.charges = charges
        self.budget = budget
        self.base_cost = _nodes(ast)  # what one pass over the expression costs, comprehensions aside

    def evaluate(self, context: Any) -> Any:
        meter = Meter(self.budget, self.charges, _DECISION.get())
        meter.charge(self.base_cost)
        evaluator = _MeteredEvaluator(ast=self.ast, activation=self.new_activation())
        evaluator.meter = meter
        return evaluator.evaluate(context)


__all__ = ["ASSUMED_LIST_ELEMENTS", "COST_BUDGET", "DECISION_BUDGET", "MAX_COMPREHENSION_DEPTH",
           "MAX_LITERAL_ELEMENTS", "MAX_STRING_LITERAL_CHARS", "CostExceeded", "CostLimitError", "MeteredRunner",
           "check_cost", "decision_budget"]
