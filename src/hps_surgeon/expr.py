"""The closed expression language of pattern files (`where`, `refuse`, messages).

Expressions are parsed with Python's `ast` and evaluated by walking a whitelist of node types:
never `eval`. Unknown values (a dynamic dim, a shape nobody declared) are `None` and propagate,
so a check that cannot be decided neither rejects a match (`where`) nor refuses one (`refuse`).

Vocabulary: dim(t, i), rank(t), dtype(t), value(t), attr(node, "name"), option("name"), len(x),
uniform_row(t, i) (row i of a constant table holds one value throughout; reads that row only),
literals, lists, indexing and slicing, comparisons (== != < <= > >= in, not in), and/or/not, + - * // %.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from .graph import attribute_value, constant_values, dtype_name


_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_ALLOWED = (ast.Expression, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Call, ast.Name, ast.Constant,
            ast.List, ast.Tuple, ast.Subscript, ast.Slice, ast.Load, ast.And, ast.Or, ast.Not, ast.USub, *_COMPARE, *_ARITH)
_FIELD = re.compile(r"\{([^{}]+)\}")


class ExprError(ValueError):
    """An expression that does not parse or uses something outside the vocabulary."""


def parse(text: str, declared: Iterable[str]) -> ast.Expression:
    """Parse `text` and check that it only uses the vocabulary and `declared` names."""
    try:
        tree = ast.parse(str(text), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"'{text}' does not parse ({exc.msg})") from None
    declared = set(declared)
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExprError(f"'{text}' uses {type(node).__name__}, which pattern expressions do not allow")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                raise ExprError(f"'{text}' calls something other than {', '.join(_FUNCTIONS)}")
        elif isinstance(node, ast.Name) and node.id not in declared and not _is_callee(tree, node):
            raise ExprError(f"'{text}' uses '{node.id}', not declared (declared: {', '.join(sorted(declared))})")
    return tree


def _is_callee(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def message_fields(template: str) -> list[str]:
    """The expressions inside {braces} of a message template."""
    return _FIELD.findall(template)


def evaluate(tree: ast.Expression, lookup: Callable[[str], Any], call: Callable[[str, list], Any]) -> Any:
    """Evaluate a parsed expression; `lookup` resolves names, `call` the vocabulary's functions."""
    return _eval(tree.body, lookup, call)


def format_message(template: str, lookup: Callable[[str], Any], call: Callable[[str, list], Any],
                   render: Callable[[Any], str] = str) -> str:
    return _FIELD.sub(lambda m: render(evaluate(ast.parse(m.group(1), mode="eval"), lookup, call)), template)


def _eval(node: ast.AST, lookup, call) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return lookup(node.id)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, lookup, call) for e in node.elts]
    if isinstance(node, ast.Call):
        return call(node.func.id, [_eval(a, lookup, call) for a in node.args])
    if isinstance(node, ast.Subscript):
        return _subscript(node, lookup, call)
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, lookup, call)
        if value is None:
            return None
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.BoolOp):
        return _bool_op(node, lookup, call)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, lookup, call), _eval(node.right, lookup, call)
        return None if left is None or right is None else _ARITH[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        return _compare(node, lookup, call)
    raise ExprError(f"cannot evaluate {type(node).__name__}")


def _subscript(node: ast.Subscript, lookup, call) -> Any:
    value = _eval(node.value, lookup, call)
    if isinstance(node.slice, ast.Slice):
        parts = [None if p is None else _eval(p, lookup, call) for p in (node.slice.lower, node.slice.upper)]
        return None if value is None else value[parts[0]:parts[1]]
    index = _eval(node.slice, lookup, call)
    if value is None or index is None or not -len(value) <= index < len(value):
        return None
    return value[index]


def _bool_op(node: ast.BoolOp, lookup, call) -> Any:
    # Three-valued: a decided False (and) / True (or) wins over unknown operands.
    values = [_eval(v, lookup, call) for v in node.values]
    decisive = isinstance(node.op, ast.Or)
    if any(v is not None and bool(v) is decisive for v in values):
        return decisive
    return None if any(v is None for v in values) else not decisive


def _compare(node: ast.Compare, lookup, call) -> Any:
    left = _eval(node.left, lookup, call)
    result: Any = True
    for op, right_node in zip(node.ops, node.comparators):
        right = _eval(right_node, lookup, call)
        if left is None or right is None or _holds_none(left) or _holds_none(right):
            result = None if result else result
        elif not _COMPARE[type(op)](left, right):
            return False
        left = right
    return result


def _holds_none(value: Any) -> bool:
    return isinstance(value, list) and any(v is None for v in value)


# --- the vocabulary's functions: the one list of names the parser allows ------------------------

def functions(context: dict) -> Callable[[str, list], Any]:
    """`call` for `evaluate` during matching; `context` holds option values and the constants' sources."""
    def call(name: str, args: list) -> Any:
        return _FUNCTIONS[name](context, *args)
    return call


def render(value: Any) -> str:
    """How a value appears inside a message template's {field}."""
    if isinstance(value, gs.Tensor):
        return f"'{value.name}'"
    if isinstance(value, gs.Node):
        return f"'{value.name}' ({value.op})"
    return str(value)


def _uniform_row(context, tensor, row) -> bool | None:
    """Whether row `row` of a constant 2-D tensor holds one value in every component (reads that row only)."""
    source = context["tables"].get(tensor.name) if isinstance(tensor, gs.Tensor) else None
    if source is None or row is None:
        return None
    values = source.read_rows(row, row + 1)
    return bool(np.all(values == values.flat[0]))


def _dim(_, tensor, index):
    if not isinstance(tensor, gs.Tensor) or tensor.shape is None or index is None:
        return None
    shape = list(tensor.shape)
    if not -len(shape) <= index < len(shape):
        return None
    value = shape[index]
    return int(value) if isinstance(value, (int, np.integer)) and value >= 0 else None


def _value(_, tensor):
    values = constant_values(tensor) if isinstance(tensor, gs.Tensor) else None
    if values is None or values.size > 4096:  # only small constants (shapes, axes) are compared
        return None
    return np.asarray(values).tolist()


_FUNCTIONS = {
    "dim": _dim,
    "rank": lambda _, t: len(t.shape) if isinstance(t, gs.Tensor) and t.shape is not None else None,
    "dtype": lambda _, t: dtype_name(t) if isinstance(t, gs.Tensor) else None,
    "value": _value,
    "attr": lambda _, node, name: attribute_value(node, name) if isinstance(node, gs.Node) else None,
    "option": lambda context, name: context["options"].get(name),
    "len": lambda _, x: None if x is None else len(x),
    "uniform_row": _uniform_row,
}
