"""Checks at the boundary of the polynomial wing: tensors, points, names, orders and sizes.

Everything here raises before any work is done, with a message that says what to change. The
limits are the ones the exact algebra of :mod:`hope_attr.polynomial` stays correct and fast in.
"""

from __future__ import annotations

import reprlib
from collections.abc import Sequence

import torch
from torch import Tensor

from hope_attr.polynomial.recentering import MonomialIndex, count_monomials

# Highest total degree of a monomial: re-centering needs binomials C(n, k), which stay finite in
# float64 up to C(1000, 500) ~ 2.7e299 (C(1030, 515) overflows); the per-degree loops of
# evaluation stay short, and a hostile file's exponent of 10**7 is refused at once.
MAX_DEGREE = 1000
# Most monomials in one polynomial (expand, discover, or completing a set to re-center it):
# exponents alone are M x p integers, and the Python list of multi-indices behind `expand` takes
# about a second per million.
MAX_MONOMIALS = 1_000_000
# Most bytes of the (M, p) exponents plus one output's (points x M) coefficients.
MAX_TABLE_BYTES = 2 * 2**30
# A polynomial needs a variable: with p = 0 the degree of a monomial is undefined.
_NO_VARIABLES = (
    "{what} must hold at least one number, one per variable (the expansion point), got {got}"
)


def check_order(order: int) -> None:
    """Refuse an ``order`` that is not an int in ``1..MAX_DEGREE``."""
    if not isinstance(order, int) or isinstance(order, bool):
        raise TypeError(f"order must be an int, got {type(order).__name__}")
    if not 1 <= order <= MAX_DEGREE:
        raise ValueError(
            f"order must be from 1 to {MAX_DEGREE} (binomials and factorials of higher degrees "
            f"overflow float64), got {order}; use an order in that range"
        )


def check_table_size(what: str, num_variables: int, order: int, points: int) -> None:
    """Refuse, before any work, polynomials whose tables alone would not fit."""
    monomials = count_monomials(num_variables, order, MAX_MONOMIALS)
    size = monomials * (num_variables + points) * 8
    if monomials > MAX_MONOMIALS or size > MAX_TABLE_BYTES:
        counted = f"more than {MAX_MONOMIALS:,}" if monomials > MAX_MONOMIALS else f"{monomials:,}"
        raise ValueError(
            f"{what}: order {order} in {num_variables} variables has {counted} monomials "
            f"({'at least ' if monomials > MAX_MONOMIALS else ''}{size / 2**30:.3g} GiB of "
            f"exponents and coefficients for {points} point(s) and one output), above the limit "
            f"of {MAX_MONOMIALS:,} monomials and {MAX_TABLE_BYTES / 2**30:.0f} GiB; use a lower "
            "order or fewer variables (a function of the few inputs of interest)"
        )


def check_polynomial(center: Tensor, exponents: Tensor, coefficients: Tensor) -> None:
    """Refuse tensors that do not make a polynomial (see :class:`TaylorPolynomial`'s Raises)."""
    for name, value in (
        ("center", center),
        ("exponents", exponents),
        ("coefficients", coefficients),
    ):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not center.is_floating_point() or center.dim() != 1:
        raise TypeError(
            f"center must be a floating-point tensor (p,), got {center.dtype} {tuple(center.shape)}"
        )
    if center.numel() == 0:
        raise ValueError(_NO_VARIABLES.format(what="center", got="an empty tensor"))
    if not bool(torch.isfinite(center).all()):
        raise ValueError(f"center must be finite, got {center.tolist()}")
    _check_exponents(exponents, center.numel())
    if not coefficients.is_floating_point() or coefficients.dim() < 1:
        raise TypeError(
            f"coefficients must be a floating-point tensor (M, *O), got {coefficients.dtype} "
            f"{tuple(coefficients.shape)}"
        )
    if coefficients.shape[0] != len(exponents):
        raise ValueError(
            f"coefficients need one row per monomial: {len(exponents)} exponents, "
            f"{coefficients.shape[0]} rows of coefficients"
        )


def _check_exponents(exponents: Tensor, num_variables: int) -> None:
    if exponents.is_floating_point() or exponents.is_complex() or exponents.dtype == torch.bool:
        raise TypeError(f"exponents must be an integer tensor, got {exponents.dtype}")
    if exponents.dim() != 2 or exponents.shape[1] != num_variables or len(exponents) == 0:
        raise ValueError(
            f"exponents must be (M, p) = (M, {num_variables}) with M >= 1 monomials, got "
            f"{tuple(exponents.shape)}"
        )
    if bool((exponents < 0).any()):
        raise ValueError("exponents must be non-negative")
    # The maximum first: the row sums of huge exponents could overflow.
    if int(exponents.max()) > MAX_DEGREE or int(exponents.sum(1).max()) > MAX_DEGREE:
        raise ValueError(
            f"a monomial's degree is above the limit of {MAX_DEGREE} (binomials and factorials "
            "of higher degrees overflow float64)"
        )


def check_distinct(exponents: Tensor) -> None:
    """Refuse a monomial listed twice (vectorized: fast for a million monomials)."""
    MonomialIndex(exponents)  # raises on a repeated monomial


def checked_names(names: Sequence[str] | None, num_variables: int) -> list[str]:
    """``names`` as a new list of ``p`` distinct non-empty strings; ``x1..xp`` by default."""
    if names is None:
        return [f"x{i + 1}" for i in range(num_variables)]
    if isinstance(names, str) or not all(isinstance(name, str) and name for name in names):
        raise TypeError(f"names must be a list of non-empty strings, got {names!r}")
    names = list(names)
    if len(names) != num_variables or len(set(names)) != len(names):
        raise ValueError(
            f"names must be {num_variables} distinct strings, one per variable, got {names!r}"
        )
    return names


def checked_point(
    value: Tensor | Sequence[float],
    num_variables: int | None,
    what: str,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A finite point ``(p,)``, ``p >= 1``, as a new floating-point tensor (never the caller's)."""
    if isinstance(value, Tensor):
        point = value.detach().clone()
    else:
        try:
            point = torch.tensor(value)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise TypeError(
                f"{what} must be a tensor or a sequence of numbers, got {reprlib.repr(value)}"
            ) from None
    if point.is_complex() or point.dtype == torch.bool:
        raise TypeError(f"{what} must hold real numbers, got {point.dtype}")
    if dtype is not None:
        point = point.to(dtype)
    elif not point.is_floating_point():
        point = point.to(torch.get_default_dtype())
    wanted = "p" if num_variables is None else str(num_variables)
    if point.dim() != 1 or (num_variables is not None and point.numel() != num_variables):
        raise ValueError(f"{what} must be one point of shape ({wanted},), got {tuple(point.shape)}")
    if point.numel() == 0:
        raise ValueError(_NO_VARIABLES.format(what=what, got="an empty point (0,)"))
    if not bool(torch.isfinite(point).all()):
        raise ValueError(f"{what} must be finite, got {point.tolist()}")
    return point


__all__ = [
    "MAX_DEGREE",
    "MAX_MONOMIALS",
    "MAX_TABLE_BYTES",
    "check_distinct",
    "check_order",
    "check_polynomial",
    "check_table_size",
    "checked_names",
    "checked_point",
]
