"""Function discovery (the paper's ``global.py``): expand around many points, compare the terms.

Each point's Taylor polynomial is re-centered at one common point; terms that are real agree
across points, artefacts of one point do not. :func:`discover` runs one batched expansion and one
batched exact re-centering; :class:`Discovery` holds the polynomials, their mean and their spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hope_attr.derivatives.mixed import normalized_coefficients
from hope_attr.derivatives.monomials import multi_indices
from hope_attr.engine.expansion import Expansion
from hope_attr.polynomial.recentering import shift_coefficients
from hope_attr.polynomial.symbolic import term_rows
from hope_attr.polynomial.taylor import TaylorPolynomial
from hope_attr.polynomial.validation import (
    check_order,
    check_table_size,
    checked_names,
    checked_point,
)


class Discovery:
    """Polynomials expanded around many points, all re-centered at one point (the paper's
    ``global.py``): terms that are real agree across points, artefacts of one point do not.

    Attributes:
        mean: the average re-centered :class:`TaylorPolynomial`.
        spread: standard deviation of each coefficient across points, shaped like
            ``mean.coefficients``.
        polynomials: the individual re-centered polynomials.

    Raises:
        ValueError: no polynomials, or polynomials with different centers or monomials.

    Example:
        >>> import torch
        >>> from hope_attr import TaylorPolynomial
        >>> from hope_attr.polynomial import Discovery
        >>> center, exponents = torch.zeros(1), torch.tensor([[0], [1]])
        >>> found = Discovery(
        ...     [TaylorPolynomial(center, exponents, torch.tensor([c, 2.0])) for c in (1.0, 3.0)]
        ... )
        >>> found.terms()  # 2 x1 agrees across points; the constant does not
        [(2.0, 1.4142, '1'), (2.0, 0.0, 'x1')]
    """

    def __init__(self, polynomials: list[TaylorPolynomial]) -> None:
        if not polynomials:
            raise ValueError("Discovery needs at least one polynomial")
        first = polynomials[0]
        for other in polynomials[1:]:
            same = other.exponents.shape == first.exponents.shape and torch.equal(
                other.exponents, first.exponents
            )
            if not same or not torch.equal(other.center, first.center):
                raise ValueError(
                    "Discovery aggregates polynomials with the same center and monomials; "
                    "re-center them at one point first (TaylorPolynomial.recenter)"
                )
        stacked = torch.stack([p.coefficients for p in polynomials])
        self.polynomials = polynomials
        self.mean = TaylorPolynomial._unchecked(
            first.center, first.exponents, stacked.mean(0), first.names, shift=first._shift
        )
        self.spread = stacked.std(0) if len(polynomials) > 1 else torch.zeros_like(stacked[0])

    def terms(
        self,
        threshold: float = 0.0,
        output: int | tuple[int, ...] = 0,
        around_zero: bool = False,
        digits: int = 4,
    ) -> list[tuple[float, float, str]]:
        """``(mean, spread, monomial)`` of the terms with ``|mean| > threshold``, largest first.

        ``around_zero``: each polynomial is re-centered at 0 before the mean and the spread are
        taken (all at once, memory growing with the number of monomials).
        """
        mean = self.mean
        coefficients = mean._output_coefficients(output)
        spread = TaylorPolynomial._unchecked(
            mean.center, mean.exponents, self.spread
        )._output_coefficients(output)
        exponents = mean.exponents
        if around_zero:
            stacked = torch.stack([p._output_coefficients(output) for p in self.polynomials])
            exponents, moved = _recenter_many(
                mean, stacked[..., None], mean.center[None], torch.zeros_like(mean.center)
            )
            moved = moved[..., 0].to(stacked.dtype)
            coefficients = moved.mean(0)
            spread = moved.std(0) if len(moved) > 1 else torch.zeros_like(moved[0])
        return term_rows(
            mean.names,
            mean.center,
            exponents,
            [coefficients, spread],
            threshold,
            digits,
            around_zero,
        )


def _recenter_many(
    template: TaylorPolynomial, coefficients: Tensor, centers: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """Polynomials with ``template``'s monomials, coefficients ``(N, M, F)`` around ``centers``
    ``(N, p)`` (or one center ``(1, p)``), all re-centered at ``target``: the exponents and
    ``(N, M', F)`` float64 coefficients. One batched shift, with ``template``'s pairs."""
    shift_table, exponents = template._shift_table()
    offsets = (target.double() - centers.double()).expand(len(coefficients), -1)
    return exponents, shift_coefficients(shift_table, coefficients, offsets, template.order)


def discover(
    forward_func: Callable[..., Tensor],
    x0: Tensor | Sequence[float],
    radius: float,
    num_points: int = 30,
    order: int = 4,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> Discovery:
    """Function discovery: expand at ``num_points`` uniform points of the box ``x0 +- radius``
    (and at ``x0``), re-center every polynomial at ``x0``, and aggregate.

    The re-centering is one batched exact shift whose memory grows with the number of points
    times the number of monomials (:mod:`hope_attr.polynomial.recentering`).

    Raises:
        TypeError: ``order``, ``num_points`` or ``seed`` is not an int.
        ValueError: ``x0`` is not one finite point with at least one variable; ``radius`` is
            negative or not finite; ``order`` is not in ``1..1000``; the points' polynomials
            would exceed a million monomials or 2 GiB of tables.

    Example:
        >>> import torch, hope_attr
        >>> f = lambda x: 0.5 * x[:, :1] ** 2 + 0.5 * x[:, 1:]
        >>> found = hope_attr.discover(f, torch.zeros(2, dtype=torch.float64), 1.0, order=3)
        >>> [(mean, term) for mean, spread, term in found.terms(threshold=0.01)]
        [(0.5, 'x2'), (0.5, 'x1^2')]
    """
    x0, names = _checked_arguments(x0, radius, num_points, order, seed, names)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.rand(num_points, x0.numel(), generator=generator, dtype=x0.dtype) * 2 - 1
    points = torch.cat([x0[None], x0 + radius * offsets.to(x0.device)])
    # One batched expansion at every point, then one exact re-centering of all of them at x0.
    expansion = Expansion(forward_func, points, order)
    exponents = [(0,) * x0.numel()]
    blocks = [expansion.output.unsqueeze(1)]  # (N, 1, *O)
    for k, coefficients in enumerate(normalized_coefficients(expansion), start=1):
        exponents.extend(multi_indices(x0.numel(), k))
        blocks.append(coefficients.movedim(-1, 1))  # (N, M_k, *O)
    coefficients = torch.cat(blocks, dim=1).detach()
    output_shape = coefficients.shape[2:]
    template = TaylorPolynomial._unchecked(x0, torch.tensor(exponents), coefficients[0], names)
    closed, moved = _recenter_many(
        template, coefficients.reshape(*coefficients.shape[:2], -1), points, x0
    )
    moved = moved.to(coefficients.dtype).reshape(len(points), -1, *output_shape)
    # Every polynomial has the template's monomials: they share its re-centering pairs.
    polynomials = [
        TaylorPolynomial._unchecked(x0.clone(), closed, c, names, forward_func, template._shift)
        for c in moved
    ]
    return Discovery(polynomials)


def _checked_arguments(
    x0: Tensor | Sequence[float],
    radius: float,
    num_points: int,
    order: int,
    seed: int,
    names: Sequence[str] | None,
) -> tuple[Tensor, list[str]]:
    """:func:`discover`'s arguments checked, before any work: a copy of ``x0``, the names."""
    check_order(order)
    for name, value in (("num_points", num_points), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"radius must be a number, got {type(radius).__name__}")
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    x0 = checked_point(x0, None, "x0")
    names = checked_names(names, x0.numel())
    check_table_size("discover", x0.numel(), order, points=num_points + 1)
    return x0, names


__all__ = ["Discovery", "discover"]
