"""Compile Policies once per snapshot: CEL compiled, rules ordered, and what each condition reads.

Knowing what a condition reads lets the engine evaluate session-constant parts once per session and cache
the rest by exactly the request attributes that can change the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import celpy
import lark

from proxy.policy.cel import CompiledExpression, compile_expression, to_cel
from proxy.policy.cel_cost import dotted_names
from proxy.snapshot import Condition, Policy, PolicyEffect, PolicyEnforcement

ALL = ("*", "*")  # a read of the whole request (or of ctx itself)
REQUEST_KINDS = ("query", "parse", "statement", "copy", "functionCall")
_read_cache: dict[str, Reads] = {}


@dataclass(frozen=True, slots=True)
class Reads:
    """What an expression depends on: request fields (kind, field), the clock, and the session-constant ctx
    paths it reads (("session", "status", ...), ("user",); () for ctx passed whole). A node that is not
    folded per session still depends on the values at its paths: the decision cache key must hold them."""

    fields: frozenset[tuple[str, str]]
    is_time: bool
    paths: frozenset[tuple[str, ...]] = frozenset()

    @property
    def is_session_constant(self) -> bool:
        return not self.fields and not self.is_time

    def __or__(self, other: Reads) -> Reads:
        return Reads(self.fields | other.fields, self.is_time or other.is_time, self.paths | other.paths)


NOTHING = Reads(frozenset(), False)


class Node:
    """A condition tree node with its compiled expression and what the subtree reads."""

    __slots__ = ("kind", "expression", "children", "reads")

    def __init__(self, kind: str, expression: CompiledExpression | None, children: tuple[Node, ...],
                 reads: Reads) -> None:
        self.kind = kind  # match | not | matchAny | all | any | none | never
        self.expression = expression
        self.children = children
        self.reads = reads


@dataclass(frozen=True, slots=True)
class CompiledRule:
    policy: str
    rule: str
    effect: PolicyEffect
    priority: int
    order: int  # position among the rules collected for a session: ties keep manifest order
    condition: Node
    attrs: Any  # the policy's attrs as a CEL value
    is_audit: bool = False  # of a Policy with enforcement AUDIT: evaluated, never deciding (engine.py)


def compile_node(c: Condition) -> Node:
    """Compile a condition tree (raises CelCompileError), recording reads per node."""
    if c.match is not None or c.not_ is not None:
        text = c.match if c.match is not None else c.not_
        assert text is not None
        return Node("match" if c.match is not None else "not", compile_expression(text), (), expression_reads(text))
    if c.match_any:
        return Node("matchAny", None, (), NOTHING)
    for kind, children in (("all", c.all_of), ("any", c.any_of), ("none", c.none_of)):
        if children is not None:
            nodes = tuple(compile_node(child) for child in children)
            reads = NOTHING
            for node in nodes:
                reads = reads | node.reads
            return Node(kind, None, nodes, reads)
    return Node("never", None, (), NOTHING)


def compile_policy(policy: Policy, start: int = 0) -> list[CompiledRule]:
    """The rules of one enabled Policy; a disabled Policy contributes none."""
    if policy.is_disabled:
        return []
    attrs = to_cel(dict(policy.attrs))
    is_audit = policy.enforcement == PolicyEnforcement.AUDIT
    return [CompiledRule(policy.name, r.name, r.effect, r.priority, start + i, compile_node(r.condition), attrs,
                         is_audit) for i, r in enumerate(policy.rules)]


def ordered(rules: Iterable[CompiledRule]) -> tuple[CompiledRule, ...]:
    """Lower priority first; at equal priority DENY before ALLOW; then the order they were collected in."""
    return tuple(sorted(rules, key=lambda r: (r.priority, r.effect != PolicyEffect.DENY, r.order)))


# --- what an expression reads -------------------------------------------------------------------


def expression_reads(text: str) -> Reads:
    """Request fields and clock an expression can depend on; anything unclear counts as reading all."""
    cached = _read_cache.get(text)
    if cached is None:
        fields: set[tuple[str, str]] = set()
        paths: set[tuple[str, ...]] = set()
        state = {"time": False}
        _visit(_ENV.compile(text), fields, state, paths)
        cached = Reads(frozenset(fields), state["time"], frozenset(paths))
        _read_cache[text] = cached
    return cached


_ENV = celpy.Environment()  # parses only: the reads analysis walks the syntax tree


def _visit(tree: lark.Tree[Any], fields: set[tuple[str, str]], state: dict[str, bool],
           paths: set[tuple[str, ...]]) -> None:
    kind = tree.data
    children = tree.children
    if kind == "member_dot":
        path = _dotted(tree)
        if path is not None:
            fields.update(_fields_of(path))
            if not path or path[0] != "request":
                paths.add(path)  # ctx.session.x, ctx.user...: the value at this path decides too
            return
    elif kind == "ident":
        if str(children[0]) == "ctx":
            fields.add(ALL)  # ctx passed whole: it could read anything
            paths.add(())
        return
    elif kind == "ident_arg":
        name = str(children[0])
        if name == "now":
            state["time"] = True
        elif name == "has" and len(children) > 1:
            present = _presence_only(children[1])
            if present is not None:
                # Which request kinds carry which fields is fixed, so presence adds nothing to a cache key,
                # but it still differs between requests: never fold it into a session constant.
                if present != "connect":
                    fields.add((present, "has"))
                return
    for child in children:
        if isinstance(child, lark.Tree):
            _visit(child, fields, state, paths)


def _presence_only(args: Any) -> str | None:
    """The request kind for `has(ctx.request.postgres.query)` / `has(ctx.request.postgres.query.kinds)`, whose
    answer depends only on the kind of request; None for any other `has`."""
    exprs = [c for c in args.children if isinstance(c, lark.Tree)] if isinstance(args, lark.Tree) else []
    if len(exprs) != 1:
        return None
    node = exprs[0]
    while isinstance(node, lark.Tree) and node.data != "member_dot" and len(node.children) == 1:
        node = node.children[0]
    path = _dotted(node) if isinstance(node, lark.Tree) and node.data == "member_dot" else None
    if (path is not None and 3 <= len(path) <= 4 and path[:2] == ("request", "postgres")
            and path[2] in ("query", "parse", "statement", "functionCall", "connect")):
        return path[2]
    return None


def _dotted(tree: Any) -> tuple[str, ...] | None:
    """`ctx.a.b.c` -> ("a", "b", "c"); None when the chain does not start at `ctx`."""
    names = dotted_names(tree)
    return names[1:] if names and names[0] == "ctx" else None
    if tree.data == "member_dot":
        base = _dotted(tree.children[0])
        return None if base is None else (*base, str(tree.children[1]))
    if tree.data in ("member", "primary") and len(tree.children) == 1:
        return _dotted(tree.children[0])
    if tree.data == "ident":
        return () if str(tree.children[0]) == "ctx" else None
    return None


def _fields_of(path: tuple[str, ...]) -> set[tuple[str, str]]:
    if not path or path[0] != "request":
        return set()  # ctx.user, ctx.groups, ctx.service, ctx.session: constant for the session
    if len(path) < 3 or path[1] != "postgres":
        return {ALL}
    kind = path[2]
    if kind not in REQUEST_KINDS:  # `connect` too: a per-request ctx never carries it
        return set()  # not a field we ever set: missing data, the same for every request
    return {(kind, path[3] if len(path) > 3 else "*")}
