"""The catalog query language of ``Store.select(where="magnitude < 22 and redshift > 0.5")``."""

from __future__ import annotations

import ast

import numpy as np

from deepfield.errors import InputError

__all__ = ["evaluate_query", "MAX_QUERY_DEPTH"]

#: deepest expression nesting a query may have: far beyond any real selection, far below
#: Python's recursion limit
MAX_QUERY_DEPTH = 64

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
    shown = expr if len(expr) <= 80 else expr[:77] + "..."
    too_deep = (f"query {shown!r} is nested more than {MAX_QUERY_DEPTH} levels deep; write it "
                "flat, e.g. 'magnitude < 22 and redshift > 0.5'")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as err:
        raise InputError(f"cannot parse query {shown!r}: {err.msg}") from None
    except (RecursionError, MemoryError):
        raise InputError(too_deep) from None
    if _depth(tree) > MAX_QUERY_DEPTH:
        raise InputError(too_deep)

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
                left, right = ev(node.left), ev(node.right)
                try:
                    return ops[type(node.op)](left, right)
                except TypeError:
                    raise InputError(
                        f"query {shown!r}: {ast.unparse(node)!r} combines values of different "
                        f"types ({_kind(left)} and {_kind(right)}); use arithmetic on number "
                        "columns only") from None
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            out = None
            for op, comp in zip(node.ops, node.comparators):
                if type(op) not in _ALLOWED_CMP:
                    break
                right = ev(comp)
                try:
                    res = _ALLOWED_CMP[type(op)](left, right)
                except TypeError:  # numpy's UFuncTypeError: number vs string and the like
                    raise InputError(
                        f"query {shown!r}: {ast.unparse(node)!r} compares values of different "
                        f"types ({_kind(left)} with {_kind(right)}); compare a number column with "
                        "a number (e.g. mag < 22) and a text column with quoted text") from None
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

    try:
        result = np.asarray(ev(tree))
    except RecursionError:
        raise InputError(too_deep) from None
    if result.dtype != bool:
        raise InputError(f"query {expr!r} does not give True/False per object")
    return result


def _depth(tree: ast.AST) -> int:
    """How deeply `tree` nests (iteratively: a deep tree must not exhaust the stack here)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _kind(value) -> str:
    """'a number column', 'text 'abc'' and so on, for error messages."""
    arr = np.asarray(value)
    what = {"f": "number", "i": "number", "u": "number", "b": "True/False", "U": "text",
            "S": "text", "O": "text"}.get(arr.dtype.kind, str(arr.dtype))
    return f"a {what} column" if arr.ndim else f"{what} {value!r}"
