"""The CEL environment: compile once per expression text, evaluate with Octelium's semantics.

A reference to missing data evaluates to false; any other evaluation error raises ConditionError,
and the caller denies access (fail closed). Functions beyond standard CEL live in `functions.py`.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, base_functions

from proxy.policy import timefns  # noqa: F401  (registers now() and the change-window helpers)
from proxy.policy.cel_cost import CostExceeded, CostLimitError, MeteredRunner, check_cost, list_sizes
from proxy.policy.functions import REGISTRY, CelFunction
from proxy.snapshot import Condition

MAX_EXPRESSION_CHARS = 10_000  # Octelium's limit (celengine.go getOrSetProg)
_MAX_CACHED = 4096  # expressions kept compiled; old snapshots' texts age out first

# Top-level names an expression may use: `ctx` everywhere, `attrs` inside a Policy's rules.
VARIABLES = frozenset({"ctx", "attrs"})
_TYPE_NAMES = frozenset(
    {"bool", "bytes", "double", "duration", "int", "list", "map", "null_type", "string", "timestamp", "type", "uint"}
)
_METHOD_MACROS = frozenset({"all", "exists", "exists_one", "filter", "map", "reduce", "min"})  # celpy's set
_GLOBAL_MACROS = frozenset({"has"})


class CelCompileError(ValueError):
    """An expression that does not parse, or that uses a name or function we do not define."""

    def __init__(self, reason: str, *, expression: str, line: int | None = None, column: int | None = None):
        self.reason = reason
        self.expression = expression
        self.line = line
        self.column = column
        where = "" if column is None else f"column {column}: "
        if line is not None and line > 1:
            where = f"line {line}, {where}"
        super().__init__(f"{where}{reason}")


class ConditionError(Exception):
    """Evaluation failed for a reason other than missing data. The caller must deny and log it."""

    def __init__(self, reason: str, *, expression: str) -> None:
        self.reason = reason
        self.expression = expression
        super().__init__(f"CEL {expression!r}: {reason}")


class _Namespace:
    """The value bound to `time` in `time.isWeekday(ts)`, so celpy dispatches to the function."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<CEL namespace {self.name}>"


def _dispatcher(method: str, by_namespace: dict[str, CelFunction], fallback: CelFunction | None) -> CelFunction:
    def call(target: Any, *args: Any) -> Any:
        if isinstance(target, _Namespace):
            impl = by_namespace.get(target.name)
            if impl is None:
                raise TypeError(f"{target.name}.{method} is not defined")
            return impl(*args)
        if fallback is None:
            raise TypeError(f"{method}() does not apply to {type(target).__name__}")
        return fallback(target, *args)

    return call


def _bind_functions(registry: Mapping[str, CelFunction]) -> tuple[dict[str, CelFunction], dict[str, _Namespace]]:
    """Turn the registry into celpy's flat function table plus the namespace values to bind."""
    table = {name: fn for name, fn in registry.items() if "." not in name}
    grouped: dict[str, dict[str, CelFunction]] = {}
    for name, fn in registry.items():
        if "." in name:
            namespace, method = name.rsplit(".", 1)
            grouped.setdefault(method, {})[namespace] = fn
    for method, impls in grouped.items():
        table[method] = _dispatcher(method, impls, table.get(method) or base_functions.get(method))
    namespaces = {ns: _Namespace(ns) for impls in grouped.values() for ns in impls}
    return table, namespaces


_FUNCTIONS, _NAMESPACES = _bind_functions(REGISTRY)
_KNOWN_FUNCTIONS = frozenset(base_functions) | frozenset(_FUNCTIONS)
_DECLARED_NAMES = VARIABLES | _TYPE_NAMES | frozenset(_NAMESPACES)
_ENV = celpy.Environment()  # InterpretedRunner: celpy 0.5's CompiledRunner mis-handles bound functions


def to_cel(value: Any) -> Any:
    """Convert plain JSON-ish Python (dicts, lists, tuples, Mappings, scalars, datetimes) to celpy values."""
    if isinstance(value, Mapping):
        return celtypes.MapType({to_cel(k): to_cel(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return celtypes.ListType([to_cel(v) for v in value])
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return celtypes.StringType(value.isoformat())  # YAML dates; CEL has no date type
    return json_to_cel(value)


class CompiledExpression:
    """One compiled CEL expression. Each `evaluate` runs a fresh celpy Evaluator, so calls share no state."""

    __slots__ = ("expression", "_program")

    def __init__(self, expression: str, program: celpy.Runner) -> None:
        self.expression = expression
        self._program = program

    def __repr__(self) -> str:
        return f"CompiledExpression({self.expression!r})"

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        """True or False; missing data gives False. Raises ConditionError on anything else."""
        context = {**activation, **_NAMESPACES} if _NAMESPACES else dict(activation)
        try:
            result = self._program.evaluate(context)
        except CostExceeded as exc:
            # Inputs larger than the rule was checked for (e.g. a query naming thousands of tables): deny
            # now rather than hold the event loop every other session shares.
            raise ConditionError(str(exc), expression=self.expression) from exc
        except CELEvalError as err:
            if _is_missing_data(err):
                return False
            raise ConditionError(_describe(err), expression=self.expression) from err
        except Exception as exc:  # a celpy bug or RecursionError must still deny, never allow
            raise ConditionError(f"{type(exc).__name__} during evaluation", expression=self.expression) from exc
        if not isinstance(result, celtypes.BoolType):
            raise ConditionError(f"evaluated to {type(result).__name__}, not a bool", expression=self.expression)
        return bool(result)


_CACHE: dict[tuple[frozenset[str], str], CompiledExpression] = {}


def compile_expression(expr: str, *, variables: frozenset[str] = frozenset()) -> CompiledExpression:
    """Compile `expr`, or return the object compiled earlier for the same text.

    `variables` names top-level variables allowed besides `ctx` and `attrs` (workload mapping reads `claims`).
    """
    key = (variables, expr)
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    if len(expr) > MAX_EXPRESSION_CHARS:
        raise CelCompileError(f"longer than {MAX_EXPRESSION_CHARS} characters", expression=expr)
    if not expr.strip():
        raise CelCompileError("empty expression", expression=expr)
    try:
        ast = _ENV.compile(expr)
        _check_names(ast, expr, variables)
        charges = check_cost(ast)
    except CostLimitError as err:
        token = err.token
        raise CelCompileError(err.reason, expression=expr, line=getattr(token, "line", None),
                              column=getattr(token, "column", None)) from err
    except CELParseError as err:
        raise CelCompileError(_parse_reason(err), expression=expr, line=err.line, column=err.column) from err
    except RecursionError as err:
        raise CelCompileError("nested too deeply", expression=expr) from err
    compiled = CompiledExpression(expr, MeteredRunner(_ENV, ast, _FUNCTIONS, charges))
    if len(_CACHE) >= _MAX_CACHED:
        # Dicts keep insertion order: drop the oldest. pop(…, None): a reload compiles in a worker thread
        # while the loop may compile (logins), so another thread may have dropped that key already.
        _CACHE.pop(next(iter(_CACHE), None), None)  # type: ignore[arg-type]
    _CACHE[key] = compiled
    return compiled


def check_cost_with(expr: str, *, attrs: Mapping[str, Any]) -> None:
    """Re-check a compiled expression's cost with the actual sizes of the lists in a Policy's `attrs`
    (compile_expression assumes ASSUMED_LIST_ELEMENTS for them). Raises CelCompileError like it."""
    program = compile_expression(expr)._program
    try:
        check_cost(program.ast, list_sizes(attrs, ("attrs",)))
    except CostLimitError as err:
        token = err.token
        raise CelCompileError(err.reason, expression=expr, line=getattr(token, "line", None),
                              column=getattr(token, "column", None)) from err


class CompiledCondition:
    """A compiled condition tree: match | matchAny | not | all | any | none (Octelium's semantics)."""

    __slots__ = ("kind", "expression", "children")

    def __init__(
        self, kind: str, *, expression: CompiledExpression | None = None, children: tuple[CompiledCondition, ...] = ()
    ) -> None:
        self.kind = kind
        self.expression = expression
        self.children = children

    def __repr__(self) -> str:
        inner = self.expression.expression if self.expression else list(self.children)
        return f"CompiledCondition({self.kind}, {inner!r})"

    def evaluate(self, activation: Mapping[str, Any]) -> bool:
        """Whether the condition matches. Raises ConditionError like CompiledExpression.evaluate."""
        kind = self.kind
        if kind == "match":
            return self.expression.evaluate(activation)  # type: ignore[union-attr]
        if kind == "not":
            # As Octelium: the expression is evaluated first (missing data -> false), then negated.
            return not self.expression.evaluate(activation)  # type: ignore[union-attr]
        if kind == "matchAny":
            return True
        if not self.children:  # empty `of`, or a condition with nothing set: never matches
            return False
        if kind == "all":
            return all(c.evaluate(activation) for c in self.children)
        if kind == "any":
            return any(c.evaluate(activation) for c in self.children)
        if kind == "none":
            return not any(c.evaluate(activation) for c in self.children)
        return False


def compile_condition(c: Condition, *, variables: frozenset[str] = frozenset()) -> CompiledCondition:
    """Compile every expression in `c` (raises CelCompileError) into an evaluable tree."""
    if c.match is not None:
        return CompiledCondition("match", expression=compile_expression(c.match, variables=variables))
    if c.match_any:
        return CompiledCondition("matchAny")
    if c.not_ is not None:
        return CompiledCondition("not", expression=compile_expression(c.not_, variables=variables))
    for kind, children in (("all", c.all_of), ("any", c.any_of), ("none", c.none_of)):
        if children is not None:
            return CompiledCondition(kind, children=tuple(compile_condition(child, variables=variables)
                                                          for child in children))
    return CompiledCondition("never")


# --- evaluation errors ------------------------------------------------------------------------


def _is_missing_data(err: CELEvalError) -> bool:
    """Octelium's isCELMissingInputErr: no such key/field, field of null, index out of range."""
    message = str(err.args[0]) if err.args else ""
    cause = err.args[1] if len(err.args) > 1 else None
    if cause is IndexError:
        return True
    if cause is KeyError:
        return not message.startswith("undeclared reference")
    return message.startswith("None with type") and "field selection" in message


def _describe(err: CELEvalError) -> str:
    """A reason without operand values: those come from ctx and may hold query text or attrs."""
    message = str(err.args[0]) if err.args else ""
    cause = err.args[1] if len(err.args) > 1 else None
    position = f" at column {err.column}" if err.column else ""
    if "does not support field selection" in message:
        return f"field selection on a value that is not a map{position}"
    if message.startswith("found no matching overload") or message.startswith("no such overload"):
        return f"no matching overload: operand types do not fit{position}"
    if message.startswith("undeclared reference"):
        return f"{message.split(' (in activation', 1)[0]}{position}"
    if "(" not in message and "'" not in message and message:  # a fixed phrase, e.g. 'match error'
        return f"{message}{position}"
    return f"{getattr(cause, '__name__', 'error')} during evaluation{position}"


# --- compile-time checks ----------------------------------------------------------------------


def _parse_reason(err: CELParseError) -> str:
    cause = err.__context__  # celpy raises its error inside lark's `except` block
    if isinstance(cause, lark.exceptions.UnexpectedToken):
        if cause.token.type == "$END":
            return "unexpected end of expression"
        return f"unexpected {str(cause.token)!r}"
    if isinstance(cause, lark.exceptions.UnexpectedCharacters):
        return f"unexpected character {cause.char!r}"
    return "syntax error"


def _children(tree: lark.Tree[Any]) -> Iterator[lark.Tree[Any]]:
    return (c for c in tree.children if isinstance(c, lark.Tree))


def _as_ident(tree: Any) -> lark.Token | None:
    """The IDENT token if `tree` is just a bare identifier (through single-child wrappers)."""
    while isinstance(tree, lark.Tree):
        if tree.data == "ident":
            return tree.children[0]  # type: ignore[return-value]
        if len(tree.children) != 1:
            return None
        tree = tree.children[0]
    return None


def _fail(reason: str, expression: str, token: Any) -> CelCompileError:
    return CelCompileError(reason, expression=expression, line=token.line, column=token.column)


def _check_names(tree: lark.Tree[Any], expression: str, bound: frozenset[str]) -> None:
    """Refuse undeclared variables and unknown functions now, not at the first connection."""
    kind = tree.data
    children: list[Any] = tree.children
    if kind in ("ident", "dot_ident"):
        name = str(children[0])
        if name not in _DECLARED_NAMES and name not in bound:
            raise _fail(f"undeclared reference to {name!r}", expression, children[0])
        return
    if kind in ("ident_arg", "dot_ident_arg"):
        name = str(children[0])
        if name not in _KNOWN_FUNCTIONS and name not in _GLOBAL_MACROS:
            raise _fail(f"unknown function {name!r}", expression, children[0])
    elif kind == "member_dot_arg":
        target, token = children[0], children[1]
        method = str(token)
        if method in _METHOD_MACROS:
            args = list(_children(children[2])) if len(children) > 2 else []
            # `l.exists(x, p)` binds x inside p; celpy's `reduce` binds two names.
            count = min(2 if method == "reduce" else 1, max(len(args) - 1, 0))
            names = {str(t) for t in map(_as_ident, args[:count]) if t is not None}
            _check_names(target, expression, bound)
            for arg in args[count:]:
                _check_names(arg, expression, bound | names)
            return
        namespace = _as_ident(target)
        if namespace is not None and str(namespace) in _NAMESPACES and str(namespace) not in bound:
            if f"{namespace}.{method}" not in REGISTRY:
                raise _fail(f"unknown function '{namespace}.{method}'", expression, token)
        elif method not in _KNOWN_FUNCTIONS:
            raise _fail(f"unknown function {method!r}", expression, token)
    for child in _children(tree):
        _check_names(child, expression, bound)
