"""The small expression language of the mapping tables: shape symbols, flags and config checks.

A table is data, so it may not run code: an expression is parsed with `ast` and only a closed set of
forms is evaluated. Names are looked up in an environment the caller builds (the MindFormers
model_config's keys, `hf` for the HF config.json, `value` for the key being checked); `hf.KEY` reads
a key of a mapping, and a key that is absent reads as None, as HF's config classes treat it.

    hidden_size // num_heads                  integer arithmetic: + - * // and parentheses
    not hf.tie_word_embeddings                 booleans: and, or, not; true, false, null
    value is null or value >= seq_length       comparisons: == != < <= > >= in, not in, is, is not
    set(value) <= {'full_attention'}           literals, and the functions len, set, min, max
"""
from __future__ import annotations

import ast
import operator
from functools import lru_cache
from typing import Any, Mapping

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}
_FUNCTIONS = {"len": len, "set": set, "min": min, "max": max}
_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


class ExprError(ValueError):
    """The expression is not of the language, or cannot be evaluated on this environment."""


@lru_cache(maxsize=None)
def parse(text: str | int) -> ast.Expression:
    """The checked syntax tree of an expression; ExprError names the form that is not allowed."""
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError:
        raise ExprError(f"{text!r} is not an expression") from None
    for node in ast.walk(tree):
        allowed = (ast.Expression, ast.BinOp, ast.BoolOp, ast.UnaryOp, ast.Compare, ast.Constant, ast.Name,
                   ast.Attribute, ast.Load, ast.List, ast.Tuple, ast.Set, ast.Call, ast.And, ast.Or, ast.Not,
                   ast.USub, *_BINOPS, *_COMPARE)
        if not isinstance(node, allowed):
            raise ExprError(f"{text!r}: {type(node).__name__} is not allowed in a table expression")
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS
                                           or node.keywords):
            raise ExprError(f"{text!r}: only {', '.join(_FUNCTIONS)} may be called")
        if isinstance(node, ast.Attribute) and not isinstance(node.value, ast.Name):
            raise ExprError(f"{text!r}: write NAME.KEY, one level deep")
    return tree


def names(text: str | int) -> set[str]:
    """The environment names an expression reads (`hf.x` reads `hf`; functions and words are not names)."""
    return {n.id for n in ast.walk(parse(text)) if isinstance(n, ast.Name)
            and n.id not in _FUNCTIONS and n.id not in _WORDS}


def evaluate(text: str | int, env: Mapping[str, Any]) -> Any:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    return _eval(parse(text).body, env, text)


def _eval(node: ast.AST, env: Mapping[str, Any], text) -> Any:
    ev = lambda n: _eval(n, env, text)  # noqa: E731
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in _WORDS:
            return _WORDS[node.id]
        if node.id not in env:
            raise ExprError(f"{text!r} reads {node.id!r}, which is not defined here")
        return env[node.id]
    if isinstance(node, ast.Attribute):
        base = ev(node.value)
        return base.get(node.attr) if isinstance(base, Mapping) else None
    if isinstance(node, ast.BinOp):
        left, right = ev(node.left), ev(node.right)
        if isinstance(node.op, ast.FloorDiv) and right == 0:
            raise ExprError(f"{text!r} divides by zero")
        try:
            return _BINOPS[type(node.op)](left, right)
        except TypeError:
            raise ExprError(f"{text!r}: cannot compute with {left!r} and {right!r}") from None
    if isinstance(node, ast.UnaryOp):
        value = ev(node.operand)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.BoolOp):  # Python's meaning: `n_kv_heads or num_heads` is a number
        value = None
        for v in node.values:
            value = ev(v)
            if bool(value) != isinstance(node.op, ast.And):
                return value
        return value
    if isinstance(node, ast.Compare):
        left = ev(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = ev(right_node)
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError:
                raise ExprError(f"{text!r}: cannot compare {left!r} with {right!r}") from None
            left = right
        return True
    if isinstance(node, (ast.List, ast.Tuple)):
        return [ev(e) for e in node.elts]
    if isinstance(node, ast.Set):
        return {ev(e) for e in node.elts}
    if isinstance(node, ast.Call):
        args = [ev(a) for a in node.args]
        try:
            return _FUNCTIONS[node.func.id](*args)
        except TypeError as e:
            raise ExprError(f"{text!r}: {e}") from None
    raise ExprError(f"{text!r}: {type(node).__name__} is not allowed")  # parse() keeps us from here
