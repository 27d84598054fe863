"""``expand``: a network's Taylor polynomial at one point, with exact coefficients.

(The module is not called ``expand``: a submodule of that name would share the package attribute
``hope_attr.polynomial.expand`` with the function.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hope_attr.derivatives.mixed import normalized_coefficients
from hope_attr.derivatives.monomials import multi_indices
from hope_attr.engine.expansion import Expansion, directions_argument
from hope_attr.polynomial.taylor import TaylorPolynomial
from hope_attr.polynomial.validation import (
    check_order,
    check_table_size,
    checked_names,
    checked_point,
)


def expand(
    forward_func: Callable[..., Tensor],
    x0: Tensor | Sequence[float],
    order: int,
    names: Sequence[str] | None = None,
    directions_per_chunk: int | None = None,
    internal_batch_size: int | None = None,
) -> TaylorPolynomial:
    """Expand ``forward_func`` (``(B, p) -> (B, *O)``) into its order-``n`` Taylor polynomial.

    Args:
        forward_func: the network or function, ``(B, p) -> (B, *O)``.
        x0: the expansion point ``(p,)``.
        order: the highest total degree ``n`` of a monomial.
        names: variable names for printing (default ``x1..xp``).
        directions_per_chunk: how many feature directions are propagated at once (memory grows
            with it; default: sized from the model's largest activation).
        internal_batch_size: the old name of ``directions_per_chunk`` (FutureWarning).

    Raises:
        TypeError: ``order`` is not an int, or ``x0`` not numbers.
        ValueError: ``x0`` is not one finite point ``(p,)`` with ``p >= 1``; ``order`` is not
            in ``1..1000``; the polynomial would have more than a million monomials (or 2 GiB of
            tables); ``names`` are not ``p`` distinct strings.

    Example:
        >>> import torch, hope_attr
        >>> f = lambda x: torch.exp(x[:, :1]) * x[:, 1:]
        >>> poly = hope_attr.expand(f, torch.zeros(2, dtype=torch.float64), order=3)
        >>> poly.terms()  # exp(x1) x2 = x2 + x1 x2 + x1^2 x2 / 2 + ...
        [(1.0, 'x2'), (1.0, 'x1 x2'), (0.5, 'x1^2 x2')]
    """
    chunk = directions_argument(directions_per_chunk, internal_batch_size)
    check_order(order)
    x0 = checked_point(x0, None, "x0")  # a copy: the caller's tensor stays theirs
    names = checked_names(names, x0.numel())
    check_table_size("expand", x0.numel(), order, points=1)
    expansion = Expansion(forward_func, x0[None], order, directions_per_chunk=chunk)
    exponents = [(0,) * x0.numel()]
    blocks = [expansion.output[0].unsqueeze(0)]  # (1, *O): the value
    for k, coefficients in enumerate(normalized_coefficients(expansion), start=1):
        exponents.extend(multi_indices(x0.numel(), k))
        blocks.append(coefficients[0].movedim(-1, 0))  # (M_k, *O)
    return TaylorPolynomial._unchecked(
        x0, torch.tensor(exponents), torch.cat(blocks).detach(), names, source=forward_func
    )


__all__ = ["expand"]
