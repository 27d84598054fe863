"""Polynomials as text: lists of terms, ``sympy`` expressions and LaTeX.

The functions take one output's coefficients ``(M,)`` with the polynomial's center, exponents and
variable names; :class:`TaylorPolynomial` and :class:`Discovery` pick the output (and re-center it
at 0 for ``around_zero``) first. ``sympy`` is an optional dependency, imported only when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

# Relative size below which a coefficient is rounding noise of the expansion (float64).
NOISE = 1e-12


def monomial_text(
    names: Sequence[str], center: Sequence[float], exponent: Sequence[int], around_zero: bool
) -> str:
    """``(x1 - 0.5)^2 x2``: one monomial in powers of ``x - center`` (of ``x`` if ``around_zero``).

    Example:
        >>> from hope_attr.polynomial.symbolic import monomial_text
        >>> monomial_text(["x1", "x2"], [0.5, 0.0], [2, 1], around_zero=False)
        '(x1 - 0.5)^2 x2'
    """
    parts = []
    for name, offset, power in zip(names, center, exponent, strict=True):
        if not power:
            continue
        sign = "-" if offset > 0 else "+"
        base = name if around_zero or offset == 0 else f"({name} {sign} {abs(offset):.4g})"
        parts.append(base if power == 1 else f"{base}^{power}")
    return " ".join(parts) if parts else "1"


def term_rows(
    names: Sequence[str],
    center: Tensor,
    exponents: Tensor,
    columns: Sequence[Tensor],
    threshold: float,
    digits: int,
    around_zero: bool,
) -> list[tuple[Any, ...]]:
    """``(value, ..., monomial)`` rows, one value per column ``(M,)``, largest first value first.

    Rows whose first value is at most ``threshold``, or within :data:`NOISE` of the largest, are
    dropped; values are rounded to ``digits`` decimals.
    """
    cutoff = max(threshold, NOISE * columns[0].abs().max().item())
    offsets = center.tolist()
    values = zip(*(column.tolist() for column in columns), strict=True)
    rows = [
        (
            *(round(value, digits) for value in row),
            monomial_text(names, offsets, exponent, around_zero),
        )
        for row, exponent in zip(values, exponents.tolist(), strict=True)
        if abs(row[0]) > cutoff
    ]
    return sorted(rows, key=lambda row: -abs(row[0]))


def sympy_expression(
    names: Sequence[str],
    center: Tensor,
    exponents: Tensor,
    coefficients: Tensor,
    threshold: float = 0.0,
    digits: int | None = None,
    readable: bool = False,
) -> Any:
    """``sum_a c_a prod_i (x_i - center_i)^a_i`` as a ``sympy`` expression (``coefficients (M,)``).

    ``readable`` keeps each ``(x_i - c_i)`` as one unevaluated factor (see
    :meth:`TaylorPolynomial.to_sympy`).
    """
    import sympy

    symbols = [sympy.Symbol(name) for name in names]  # "x y" stays one name
    values = coefficients.tolist()
    offsets = center.tolist()
    cutoff = max(threshold, NOISE * max(map(abs, values), default=0.0))
    expression = sympy.Integer(0)
    for coefficient, exponent in zip(values, exponents.tolist(), strict=True):
        if abs(coefficient) <= cutoff:
            continue
        term = sympy.Float(coefficient, digits) if digits else sympy.Float(coefficient)
        for symbol, offset, power in zip(symbols, offsets, exponent, strict=True):
            if power:
                base = symbol - sympy.Float(offset) if offset else symbol
                if readable and offset:
                    base = sympy.UnevaluatedExpr(base)
                term *= base**power
        expression += term
    return expression


def latex(expression: Any) -> str:
    """LaTeX of a ``sympy`` expression."""
    import sympy

    return sympy.latex(expression)


__all__ = ["NOISE", "latex", "monomial_text", "sympy_expression", "term_rows"]
