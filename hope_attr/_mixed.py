"""Every mixed partial derivative up to order ``n``, from univariate jets (Griewank, Utke and
Walther, "Evaluating higher derivative tensors by forward propagation of univariate Taylor
series", Math. Comp. 2000).

Along an integer direction ``j`` the order-``k`` Taylor coefficient of ``t -> f(x + t j)`` is the
homogeneous polynomial ``sum_{|a| = k} f_a j^a`` in ``j``, where ``f_a = d^a f / a!`` is the
normalized coefficient of the monomial ``(x - x0)^a``. Pushing jets of order ``n`` along all
``C(p + n - 1, n)`` directions with ``|j| = n`` determines every ``f_a`` with ``|a| <= n``: for
``k = n`` the system is square and invertible (GUW 2000), for ``k < n`` it is consistent and
overdetermined. Each system's pseudo-inverse is computed once, in float64, from small integers.

Cost: ``C(p + n - 1, n)`` directions of order-``n`` jets; e.g. 35 for ``p = 5, n = 3`` and 66 for
``p = 3, n = 10`` -- polynomial in ``p`` and ``n``, never ``p^n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from itertools import combinations_with_replacement
from typing import Any

import torch
from torch import Tensor

from hope_attr._derivatives import Expansion

# Above this many directions, a full expansion is most likely a mistake (p too large).
_MAX_DIRECTIONS = 200_000


@lru_cache(maxsize=64)
def multi_indices(num_variables: int, degree: int) -> tuple[tuple[int, ...], ...]:
    """All exponent vectors ``a`` with ``|a| = degree``, in a fixed (lexicographic) order."""
    result = []
    for combination in combinations_with_replacement(range(num_variables), degree):
        exponents = [0] * num_variables
        for variable in combination:
            exponents[variable] += 1
        result.append(tuple(exponents))
    return tuple(sorted(result, reverse=True))


def normalized_coefficients(
    expansion: Expansion, on_chunk: Callable[[], None] | None = None
) -> list[Tensor]:
    """Per order ``k``: ``f_a = d^a f / a!`` for every ``|a| = k``, shape ``(B, *O, M_k)``."""
    x = expansion.inputs[0]
    num_variables, order = x.shape[1], expansion.order
    directions = torch.tensor(multi_indices(num_variables, order), dtype=x.dtype, device=x.device)
    along = expansion.directional_coefficients(
        (directions[:, None, :].expand(-1, x.shape[0], -1),), on_chunk
    )  # (n, D, B, *O)
    result = []
    for k in range(1, order + 1):
        solve = _solver(num_variables, order, k).to(device=x.device, dtype=x.dtype)  # (M_k, D)
        result.append(torch.tensordot(along[k - 1], solve, dims=([0], [1])))  # (B, *O, M_k)
    return result


@lru_cache(maxsize=64)
def _solver(num_variables: int, order: int, degree: int) -> Tensor:
    directions = torch.tensor(multi_indices(num_variables, order), dtype=torch.float64)
    monomials = torch.tensor(multi_indices(num_variables, degree), dtype=torch.float64)
    # values[d, m] = direction_d ** monomial_m (0 ** 0 = 1)
    values = (directions[:, None, :] ** monomials[None, :, :]).prod(-1)
    return torch.linalg.pinv(values)


def mixed_derivatives(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    order: int,
    *,
    additional_forward_args: Any = None,
    internal_batch_size: int | None = None,
) -> list[Tensor]:
    """Every partial derivative up to ``order`` of every output, at every point of a batch.

    Exact to rounding (not the paper's Kronecker rule, which drops cross terms); cost grows like
    ``C(p + n - 1, n)`` jets of order ``n``. Meant for low-dimensional inputs.

    Args:
        forward_func: model or function ``(B, p) -> (B, *O)`` (see
            :func:`hope_attr.unmixed_derivatives` for what it may contain).
        inputs: points ``(B, p)``.
        order: highest order ``n >= 1``.
        additional_forward_args: extra arguments after the inputs (not differentiated).
        internal_batch_size: directions propagated at once.

    Returns:
        A list whose element ``k - 1`` has shape ``(B, *O, p, ..., p)`` (``k`` trailing ``p``'s):
        the symmetric tensor of ``k``-th partial derivatives at each point.

    Example:
        >>> import torch, hope_attr
        >>> f = lambda x: (x[:, :1] ** 2) * x[:, 1:]  # x1^2 x2
        >>> hessian = hope_attr.mixed_derivatives(f, torch.tensor([[1.0, 2.0]]), 2)[1]
        >>> expected = torch.tensor([[4.0, 2.0], [2.0, 0.0]])  # [[2 x2, 2 x1], [2 x1, 0]]
        >>> torch.allclose(hessian[0, 0], expected, atol=1e-5)
        True
    """
    if not isinstance(inputs, Tensor) or inputs.dim() != 2:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(
            f"mixed_derivatives needs flat inputs (B, p), got {shape}; flatten the features "
            "(mixed partials are for low-dimensional inputs)"
        )
    if isinstance(order, int) and order >= 1:
        count = math.comb(inputs.shape[1] + order - 1, order)
        if count > _MAX_DIRECTIONS:
            raise ValueError(
                f"p = {inputs.shape[1]} variables at order {order} need {count} directions; "
                "mixed partials are for low-dimensional inputs (use unmixed_derivatives)"
            )
    expansion = Expansion(forward_func, inputs, order, additional_forward_args, internal_batch_size)
    num_variables = inputs.shape[1]
    tensors = []
    for k, coefficients in enumerate(normalized_coefficients(expansion), start=1):
        scale, index = _tensor_layout(num_variables, k)
        derivatives = coefficients * scale.to(coefficients)  # d^a f = a! f_a
        full = derivatives[..., index.to(coefficients.device)]
        tensors.append(full.reshape(*full.shape[:-1], *([num_variables] * k)))
    return tensors


@lru_cache(maxsize=64)
def _tensor_layout(num_variables: int, degree: int) -> tuple[Tensor, Tensor]:
    """``a!`` per monomial, and for each entry of the ``p^k`` tensor the monomial it holds."""
    monomials = multi_indices(num_variables, degree)
    position = {m: i for i, m in enumerate(monomials)}
    scale = torch.tensor(
        [math.prod(math.factorial(e) for e in m) for m in monomials], dtype=torch.float64
    )
    grid = torch.cartesian_prod(*[torch.arange(num_variables)] * degree).reshape(-1, degree)
    counts = torch.nn.functional.one_hot(grid, num_variables).sum(1)
    index = torch.tensor([position[tuple(c.tolist())] for c in counts], dtype=torch.long)
    return scale, index
