"""The catalog query language of ``Store.select(where="magnitude < 22 and redshift > 0.5")``."""

from __future__ import annotations

import ast

import numpy as np

from deepfield.errors import InputError

__all__ = ["evaluate_query"]

_ALLOWED_CMP = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


def evaluate_query(expr: str, column) -> np.ndarray:
    """Evaluate a small, safe boolean expression over catalog columns.

    Supports comparisons (chained too: ``21 < magnitude < 23``), ``and``/``or``/``not``,
    ``&``/``|``/``~``, numbers, strings, and arithmetic (+ - * /) on columns.
    """
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as err:
        raise InputError(f"cannot parse query {expr!r}: {err.msg}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BoolOp):
            vals = [np.asarray(ev(v), dtype=bool) for v in node.values]
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = vals[0]
            for v in vals[1:]:
                out = op(out, v)
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return np.logical_not(np.asarray(ev(node.operand), dtype=bool))
            if isinstance(node.op, ast.USub):
                return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            ops = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                   ast.Div: np.divide, ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
            if type(node.op) in ops:
                return ops[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            out = None
            for op, comp in zip(node.ops, node.comparators):
                if type(op) not in _ALLOWED_CMP:
                    break
                right = ev(comp)
                res = _ALLOWED_CMP[type(op)](left, right)
                out = res if out is None else np.logical_and(out, res)
                left = right
            else:
                return out
        if isinstance(node, ast.Name):
            return column(node.id)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
            return node.value
        raise InputError(
            f"query {expr!r}: unsupported expression {ast.unparse(node)!r}; use comparisons of "
            "catalog columns joined by and/or/not, e.g. 'magnitude < 22 and redshift > 0.5'"
        )

    result = np.asarray(ev(tree))
    if result.dtype != bool:
        raise InputError(f"query {expr!r} does not give True/False per object")
    return result
