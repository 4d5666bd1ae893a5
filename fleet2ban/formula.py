"""fail2ban's ``bantime.formula``: checked and compiled to arithmetic only (issue 20).

The formula comes from settings, and ``fleet2ban import-fail2ban`` copies it from a jail file that may have
come from anywhere. ``eval`` with restricted builtins is not a sandbox (``().__class__.__base__
.__subclasses__()`` reaches ``subprocess.Popen``), and plain integer arithmetic can hang a process
(``9**9**9``). So a formula is parsed, and only this is accepted:

- numbers, ``ban.Time``, ``ban.Count``, ``banFactor``, ``True``/``False``;
- arithmetic, comparisons, ``and``/``or``/``not``, ``x if c else y``;
- calls of ``min``, ``max``, ``abs``, ``round``, ``int``, ``float`` (a string argument only here, as in
  ``float('inf')``), ``pow`` and a few ``math`` functions and constants (:data:`MATH_NAMES`).

``**`` and ``pow`` are evaluated in floats, shifts by at most 1024 bits and ``round`` on a float (an overflow
raises, and the caller bounds the ban), so no integer grows faster than the formula is long: any accepted
formula costs time about linear in its length. At most :data:`FORMULA_MAX` characters.
"""

from __future__ import annotations

import ast
import math
from types import CodeType
from typing import Any, Final

FORMULA_MAX: Final = 500
MATH_NAMES: Final = frozenset(
    {"ceil", "floor", "trunc", "exp", "log", "log2", "log10", "sqrt", "pow", "fabs", "e", "pi", "inf"}
)
_FUNCS: Final = frozenset({"min", "max", "abs", "round", "int", "float", "pow"})
_NAMES: Final = frozenset({"ban", "banFactor", "math", *_FUNCS})
_BINOPS: Final = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift)
_CMPOPS: Final = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_SHIFT_MAX: Final = 1024


def _pow(a: Any, b: Any) -> float:
    value: float = float(a) ** float(b)  # OverflowError instead of a number with billions of digits
    return value


def _round(x: Any, *ndigits: Any) -> Any:
    return round(float(x), *ndigits)  # an int with ndigits=-10**9 would compute 10**10**9


def _lshift(a: Any, b: Any) -> Any:
    if b > _SHIFT_MAX:
        raise OverflowError(f"shift by {b}")
    return a << b


def _rshift(a: Any, b: Any) -> Any:
    return a >> min(b, _SHIFT_MAX)


_HELPERS: Final = {"_pow": _pow, "_lshift": _lshift, "_rshift": _rshift}
_SAFE: Final[dict[str, Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "round": _round,
    "int": int,
    "float": float,
    "pow": _pow,
}


class _Check(ast.NodeTransformer):
    def generic_visit(self, node: ast.AST) -> ast.AST:
        allowed = (
            ast.Expression,
            ast.BinOp,
            ast.UnaryOp,
            ast.BoolOp,
            ast.Compare,
            ast.IfExp,
            ast.Call,
            ast.Name,
            ast.Attribute,
            ast.Constant,
            ast.Load,
            ast.UAdd,
            ast.USub,
            ast.Not,
            ast.And,
            ast.Or,
            *_BINOPS,
            *_CMPOPS,
        )
        if not isinstance(node, allowed):
            raise ValueError(f"{type(node).__name__} is not allowed")
        return super().generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in _NAMES:
            raise ValueError(f"unknown name {node.id!r}")
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        base = node.value.id if isinstance(node.value, ast.Name) else None
        if not (
            (base == "ban" and node.attr in ("Time", "Count")) or (base == "math" and node.attr in MATH_NAMES)
        ):
            raise ValueError(f"{ast.unparse(node)[:40]!r} is not allowed (ban.Time, ban.Count, math.{{...}})")
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if not isinstance(node.value, int | float):  # bool is an int
            raise ValueError(f"constant {node.value!r:.40} is not a number")
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        ok = (isinstance(func, ast.Name) and func.id in _FUNCS) or (
            isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math"
        )
        if not ok or node.keywords:
            raise ValueError(f"call {ast.unparse(func)[:40]!r} is not allowed")
        if (
            isinstance(func, ast.Name)
            and func.id == "float"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            if node.args[0].value.strip().lower() not in ("inf", "-inf", "nan"):
                raise ValueError(f"float({node.args[0].value!r:.20}) is not allowed")
            return node
        return self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        helper = {ast.Pow: "_pow", ast.LShift: "_lshift", ast.RShift: "_rshift"}.get(type(node.op))
        if helper is None:
            return node
        call = ast.Call(ast.Name(helper, ast.Load()), [node.left, node.right], [])
        return ast.copy_location(call, node)


def compile_formula(text: str) -> CodeType:
    """``text`` compiled to arithmetic only; ValueError (one line) for anything else."""
    if len(text) > FORMULA_MAX:
        raise ValueError(f"longer than {FORMULA_MAX} characters")
    try:
        tree = ast.parse(text.strip(), "<bantime.formula>", "eval")
    except SyntaxError as exc:
        raise ValueError(f"{exc.msg}") from None
    checked = ast.fix_missing_locations(_Check().visit(tree))
    return compile(checked, "<bantime.formula>", "eval")


def evaluate(code: CodeType, ban: object, factor: float) -> Any:
    """A compiled formula's value for this ``ban`` (``.Time``, ``.Count``) and ``banFactor``."""
    scope: dict[str, Any] = {"__builtins__": {}, **_SAFE, **_HELPERS, "math": math, "ban": ban}
    scope["banFactor"] = factor
    return eval(code, scope)  # only what compile_formula let through: numbers, arithmetic, listed calls
