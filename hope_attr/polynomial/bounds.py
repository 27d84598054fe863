"""How far the network can be from its Taylor polynomial: the paper's bounds and diagnostics.

Lagrange's form of the remainder, ``f(x) = T_{n-1}(x) + sum_{|a| = n} d^a f(xi) / a! (x - x0)^a``
for some ``xi`` on the segment from ``x0`` to ``x``, bounds ``f`` by the smallest and the largest
value each ``n``-th partial takes over a box around ``x0`` (Eq. 63-66). Those ranges are estimated
on a grid (sampling, not interval arithmetic: a finer grid is safer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hope_attr.derivatives.mixed import normalized_coefficients
from hope_attr.derivatives.monomials import multi_indices
from hope_attr.engine.expansion import Expansion
from hope_attr.polynomial.module import MonomialTable, monomials

# Most grid points the ranges of the top-order partials are estimated at.
MAX_GRID_POINTS = 1_000_000


def lagrange_bounds(
    x: Tensor,
    center: Tensor,
    exponents: Tensor,
    coefficients: Tensor,
    forward_func: Callable[..., Tensor] | None,
    radius: float | Sequence[float],
    points_per_axis: int,
) -> tuple[Tensor, Tensor]:
    """``(lower, upper)``, each ``(N, *O)``: the sums below order ``n`` plus the order-``n``
    terms taken with the extreme values of each partial (see
    :meth:`TaylorPolynomial.bounds`)."""
    lowest, highest = top_order_range(forward_func, center, exponents, radius, points_per_axis)
    top = exponents.sum(1) == exponents.sum(1).max()
    dx = x - center
    base = MonomialTable(exponents[~top]).evaluate(dx, coefficients[~top])
    terms = _broadcast_over_outputs(monomials(dx, exponents[top]), coefficients.dim() - 1)
    at_lowest, at_highest = terms * lowest[None], terms * highest[None]
    low_terms = torch.minimum(at_lowest, at_highest)
    high_terms = torch.maximum(at_lowest, at_highest)
    return base + low_terms.sum(1), base + high_terms.sum(1)


def remainder_bound(
    x: Tensor,
    center: Tensor,
    exponents: Tensor,
    num_output_axes: int,
    forward_func: Callable[..., Tensor] | None,
    radius: float | Sequence[float],
    points_per_axis: int,
) -> Tensor:
    """``sum_{|a| = n} (max d^a f - min d^a f) / a! |x - x0|^a``, ``(N, *O)`` (see
    :meth:`TaylorPolynomial.remainder_bound`)."""
    lowest, highest = top_order_range(forward_func, center, exponents, radius, points_per_axis)
    top = exponents.sum(1) == exponents.sum(1).max()
    terms = _broadcast_over_outputs(monomials(x - center, exponents[top]).abs(), num_output_axes)
    return (terms * (highest - lowest)[None]).sum(1)


def top_order_range(
    forward_func: Callable[..., Tensor] | None,
    center: Tensor,
    exponents: Tensor,
    radius: float | Sequence[float],
    points_per_axis: int,
) -> tuple[Tensor, Tensor]:
    """The smallest and the largest value ``(M_n, *O)`` of each top-order normalized partial
    ``d^a f / a!`` on a grid of ``points_per_axis`` points per axis over ``center +- radius``,
    and at the center; rows follow the order of the top-degree rows of ``exponents``.

    Raises:
        ValueError: no ``forward_func``; ``points_per_axis`` is not a positive int, or the grid
            would exceed a million points.
    """
    if forward_func is None:
        raise ValueError("bounds need the expanded function: pass forward_func=")
    if not isinstance(points_per_axis, int) or points_per_axis < 1:
        raise ValueError(f"points_per_axis must be a positive int, got {points_per_axis!r}")
    num_variables = center.numel()
    if points_per_axis**num_variables > MAX_GRID_POINTS:
        raise ValueError(
            f"the grid of points_per_axis ** p = {points_per_axis}^{num_variables} "
            f"points is above the limit of {MAX_GRID_POINTS:,}; use fewer points_per_axis"
        )
    radius_tensor = torch.as_tensor(radius, dtype=center.dtype).expand_as(center)
    axes = [
        torch.linspace(-1.0, 1.0, points_per_axis, dtype=center.dtype) * r for r in radius_tensor
    ]
    grid = torch.cartesian_prod(*axes).reshape(-1, num_variables) + center
    grid = torch.cat([center[None], grid])
    degree = exponents.sum(1)
    order = int(degree.max())
    coefficients = normalized_coefficients(Expansion(forward_func, grid, order))[-1]
    # (G, *O, M_n) normalized coefficients at every grid point, ordered like multi_indices.
    order_in_poly = _positions(exponents[degree == order], num_variables, order)
    values = coefficients[..., order_in_poly].movedim(-1, 1)  # (G, M_n, *O)
    return values.amin(0), values.amax(0)


def convergence_ratios(exponents: Tensor, coefficients: Tensor) -> Tensor:
    """``||d^k f|| / ||d f||`` for ``k = 1..n`` from the coefficients ``(M, *O)``.

    ``||d^k f||`` is the Frobenius norm of the symmetric ``k``-th derivative tensor: each
    monomial's derivative ``a! c_a`` counted with its multiplicity ``k! / a!``.
    """
    degree = exponents.sum(1)
    powers = exponents.double()  # float32 factorials overflow past 34!
    factorials = torch.exp(torch.lgamma(powers + 1.0).sum(1))
    multiplicity = torch.exp(torch.lgamma(degree.double() + 1.0)) / factorials
    flat = coefficients.reshape(len(exponents), -1).double()
    derivative = flat * factorials.double()[:, None]
    norms = torch.stack(
        [
            (derivative[degree == k] ** 2 * multiplicity.double()[degree == k, None]).sum().sqrt()
            for k in range(1, int(degree.max()) + 1)
        ]
    )
    return norms / norms[0]


def _broadcast_over_outputs(terms: Tensor, num_output_axes: int) -> Tensor:
    """``(N, M_n)`` monomials as ``(N, M_n, 1, ...)``, one axis per output axis."""
    return terms.reshape(*terms.shape, *([1] * num_output_axes))


def _positions(exponents: Tensor, num_variables: int, degree: int) -> Tensor:
    """Where each row of ``exponents`` (all of total ``degree``) is in ``multi_indices``."""
    lookup = {m: i for i, m in enumerate(multi_indices(num_variables, degree))}
    return torch.tensor([lookup[tuple(e)] for e in exponents.tolist()], dtype=torch.long)


__all__ = [
    "MAX_GRID_POINTS",
    "convergence_ratios",
    "lagrange_bounds",
    "remainder_bound",
    "top_order_range",
]
