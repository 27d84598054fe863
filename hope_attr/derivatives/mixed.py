"""Every mixed partial derivative up to order ``n``, from univariate jets (Griewank, Utke and
Walther, "Evaluating higher derivative tensors by forward propagation of univariate Taylor
series", Math. Comp. 2000).

Along an integer direction ``j`` the order-``k`` Taylor coefficient of ``t -> f(x + t j)`` is the
homogeneous polynomial ``sum_{|a| = k} f_a j^a`` in ``j``, where ``f_a = d^a f / a!`` is the
normalized coefficient of the monomial ``(x - x0)^a``. Pushing jets of order ``n`` along all
``C(p + n - 1, n)`` directions with ``|j| = n`` determines every ``f_a`` with ``|a| <= n``: for
``k = n`` the system is square and invertible (GUW 2000), for ``k < n`` it is consistent and
overdetermined. So one set of jets serves every order; each order's pseudo-inverse is computed
once, in float64, from small integers.

Cost: ``C(p + n - 1, n)`` directions of order-``n`` jets; e.g. 35 for ``p = 5, n = 3`` and 66 for
``p = 3, n = 10`` -- polynomial in ``p`` and ``n``, never ``p^n``.

Many points at once are cut into blocks of points, each pushing all its directions in one go:
the nonlinearities' Taylor tables (which depend only on the point) are then computed once per
point, and a block's series stay near the CPU caches (the resource policy's
``mixed_block_bytes``, :mod:`hope_attr.engine.resources`).

Which route a call takes is decided by looking at the model's modules, never by tracing it: a plain
``nn.Sequential`` MLP may take :mod:`hope_attr.derivatives.mlp`, every other model (data-dependent
branches, hooks, Hugging Face transformers...) the jets, which run its own forward eagerly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from hope_attr.derivatives import interpolation as _interpolation
from hope_attr.derivatives import mlp as _mlp_taylor
from hope_attr.derivatives.monomials import count, multi_indices
from hope_attr.engine import resources as _resources
from hope_attr.engine.expansion import Expansion, directions_argument
from hope_attr.engine.factorials import check_order, factorial_product, times_integers

# Above this many directions, a full expansion is most likely a mistake (p too large).
_MAX_DIRECTIONS = 200_000
# The budgets come from the resource policy (hope_attr.engine.resources):
# * max_mixed_result_bytes: the default memory budget of a result (mixed_derivatives' dense
#   tensors, or the coefficients); max_mixed_work: multiply-adds (a lower bound: directions x
#   order^2 x points x outputs) past which a request is refused (~1e11 is many minutes to hours
#   on a CPU; order 10**6 would never finish).
# * mixed_block_bytes: the largest activation's series for one block of points (all its
#   directions and orders). Near the size of a CPU's L2 cache, the ~10 elementwise passes of a
#   nonlinearity over it stay in cache, while much smaller blocks pay the engine's fixed cost per
#   block (a fraction of a millisecond) too often. The alternative, all points at once in chunks
#   of a few directions, recomputes the primal and its Taylor tables for every chunk: on the
#   practitioner's case (p = 5, n = 3) it took over twice as long. `benchmarks/mixed.py` sweeps
#   this budget.
# * mixed_chunk_bytes: when one point's directions alone exceed the block budget, they go in
#   chunks of this many bytes (temporaries of a nonlinearity included, ~4 copies: about the
#   engine's own series budget).
_ROUTES = ("auto", "jets", "mlp")


def normalized_coefficients(
    expansion: Expansion,
    on_chunk: Callable[[int], None] | None = None,
    directions_per_chunk: int | None = None,
    route: str = "auto",
    max_bytes: int | None = None,
) -> list[Tensor]:
    """Per order ``k``: ``f_a = d^a f / a!`` for every ``|a| = k``, shape ``(B, *O, M_k)``.

    ``route``: ``"jets"`` (univariate jets, any model), ``"mlp"`` (multivariate polynomials and
    an adjoint, :mod:`hope_attr.derivatives.mlp`; a plain ``nn.Sequential`` of Linear layers and
    elementwise activations only) or ``"auto"`` (``"mlp"`` where it applies and is the cheaper
    one). ``directions_per_chunk`` bounds how many jet directions are propagated at once
    (default: the expansion's fixed chunk if it was given one, else all of a block's, within the
    policy's ``mixed_chunk_bytes``). A result over ``max_bytes`` (default: the policy's
    ``max_mixed_result_bytes``) or work over its ``max_mixed_work`` is refused up front with a
    ValueError that gives the size and the fix.
    """
    if route not in _ROUTES:
        raise ValueError(f"route must be one of {_ROUTES}, got {route!r}")
    policy = expansion.resources
    _check_cost(expansion, policy.max_mixed_result_bytes if max_bytes is None else max_bytes)
    if route != "jets":
        steps = _mlp_taylor.chain_of(expansion)
        if steps is not None and (route == "mlp" or _mlp_taylor.is_cheaper(expansion)):
            return _mlp_taylor.normalized_coefficients(expansion, steps)
        if route == "mlp":
            raise ValueError(
                "route='mlp' needs a plain nn.Sequential (nested ones allowed, no hooks) of "
                "nn.Linear layers and elementwise activation modules, with no Taylor rule of "
                "your own for them or the functions they call, on one flat input (B, p) with a "
                "flat output (B, O) and no additional_forward_args; use route='jets' (or the "
                "default 'auto') for any other model"
            )
    if directions_per_chunk is None and expansion.chunk_given:
        directions_per_chunk = expansion.chunk_size
    x = expansion.inputs[0]
    num_variables, order = x.shape[1], expansion.order
    # (D, 1, p): the same directions at every point, broadcast over the batch.
    directions = _interpolation.directions(num_variables, order, x.dtype).to(x.device)[:, None]
    num_directions = directions.shape[0]
    output = expansion.output
    result = [
        output.new_empty((*output.shape, count(num_variables, k))) for k in range(1, order + 1)
    ]
    for start, stop, part in _blocks(expansion, num_directions, directions_per_chunk):
        along = part.directional_coefficients((directions,), on_chunk)  # (n, D, b, *O)
        for k in range(1, order + 1):
            values = along[k - 1].movedim(0, -1)  # (b, *O, D)
            result[k - 1][start:stop] = _interpolation.recover(values, num_variables, order, k)
    return result


def _check_cost(expansion: Expansion, max_bytes: int) -> None:
    """Refuses, in microseconds, an expansion whose coefficients exceed ``max_bytes`` or whose
    jets would take hours: ``C(p + n - 1, n)`` directions, each series product ``~n^2/2``
    multiply-adds per element of every activation (at least the output)."""
    x, order = expansion.inputs[0], expansion.order
    p, batch = x.shape[1], x.shape[0]
    outputs = math.prod(expansion.output.shape[1:])
    coefficients = batch * outputs * (math.comb(p + order, order) - 1)
    _refuse_if_too_large("the expansion", p, order, coefficients, x, max_bytes)
    num_directions = math.comb(p + order - 1, order)
    # A lower bound that needs no extra pass over the model: the output's width.
    work = num_directions * order * order * batch * max(expansion.output[0].numel(), p)
    if num_directions > _MAX_DIRECTIONS or work > expansion.resources.max_mixed_work:
        raise ValueError(
            f"p = {p} variables at order {order} need {num_directions:,} jet directions of order "
            f"{order} (about {work:.2g} multiply-adds at the least, hours of work); use a smaller "
            "order or fewer features (for one feature at a time, unmixed_derivatives)"
        )


def _blocks(
    expansion: Expansion, num_directions: int, directions_per_chunk: int | None
) -> Iterator[tuple[int, int, Expansion]]:
    """``(start, stop, expansion of points start:stop)`` covering the batch.

    A block is the expansion with its per-example state (``inputs``, ``output``) sliced; the
    model and the resource policy are shared. Extra forward arguments may hold per-example
    tensors that cannot be told apart from constants, and a function may hard-code its batch
    size: both keep one block.
    """
    batch = expansion.inputs[0].shape[0]
    largest = _largest_per_example(expansion) if not expansion.extra else None
    if largest is None:
        yield 0, batch, expansion
        return
    per_direction = expansion.order * largest * expansion.inputs[0].element_size()  # one point
    block_bytes = expansion.resources.mixed_block_bytes
    if directions_per_chunk is None:
        fits_block = num_directions * per_direction <= block_bytes
        chunk_bytes = expansion.resources.mixed_chunk_bytes
        directions_per_chunk = (
            num_directions if fits_block else max(1, chunk_bytes // per_direction)
        )
    directions_per_chunk = min(directions_per_chunk, num_directions)
    points = max(1, block_bytes // (directions_per_chunk * per_direction))
    for start in range(0, batch, points):
        stop = min(batch, start + points)
        part = copy.copy(expansion)
        part.inputs = tuple(x[start:stop] for x in expansion.inputs)
        part.output = expansion.output[start:stop]
        part.chunk_size = directions_per_chunk
        yield start, stop, part


def _largest_per_example(expansion: Expansion) -> int | None:
    """Elements of the largest intermediate value for ONE example; ``None`` if the function
    cannot run on a smaller batch (it hard-codes its batch size)."""
    one = tuple(x[:1] for x in expansion.inputs)
    # The input and output count too: a function may compute nothing in between (lambda x: x).
    largest = [max(x.numel() for x in one), expansion.output[:1].numel()]

    def observe(value: object) -> None:
        if isinstance(value, Tensor):
            largest.append(value.numel())

    try:
        output = expansion.run(one, observe)
    except RuntimeError:  # e.g. a closure constant shaped (B, ...) that no longer broadcasts
        return None
    if not isinstance(output, Tensor) or output.shape != expansion.output[:1].shape:
        return None
    return max(largest)


def mixed_derivatives(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    order: int,
    *,
    additional_forward_args: Any = None,
    directions_per_chunk: int | None = None,
    max_bytes: int | None = None,
    route: str = "auto",
    internal_batch_size: int | None = None,
) -> list[Tensor]:
    """Every partial derivative up to ``order`` of every output, at every point of a batch.

    Exact to rounding (not the paper's Kronecker rule, which drops cross terms); cost grows like
    ``C(p + n - 1, n)`` jets of order ``n``, one set for all orders. Meant for low-dimensional
    inputs. Points are processed in blocks sized for the CPU caches; with
    ``additional_forward_args`` (which may hold per-example tensors) all points form one block.
    Any model :func:`hope_attr.unmixed_derivatives` takes is taken (its forward runs eagerly:
    data-dependent branches, hooks, Hugging Face models). A plain ``nn.Sequential`` of ``Linear``
    layers and elementwise activations (an MLP) with several inputs, few outputs and order
    ``<= 4`` takes a cheaper route to the same numbers: multivariate Taylor polynomials of
    degree ``< n`` and the top degree from one reverse sweep per output
    (``docs/derivation.md``, Section 10); the route is chosen by looking at the modules.

    Args:
        forward_func: model or function ``(B, p) -> (B, *O)`` (see
            :func:`hope_attr.unmixed_derivatives` for what it may contain).
        inputs: points ``(B, p)``.
        order: highest order ``n >= 1``.
        additional_forward_args: extra arguments after the inputs (not differentiated).
        directions_per_chunk: jet directions propagated at once (default: all of a block's,
            up to the resource policy's ``mixed_chunk_bytes``, :class:`hope_attr.Resources`).
            The MLP route propagates no directions (its blocks of points stay within the
            policy's ``mlp_block_bytes``) and ignores it.
        max_bytes: memory budget of the result (default: the policy's
            ``max_mixed_result_bytes``, 2 GiB): a larger result, or a computation whose work
            would take hours (over the policy's ``max_mixed_work``), is refused before any work.
        route: ``"auto"`` (the cheaper route that applies), ``"jets"`` (univariate jets, any
            model) or ``"mlp"`` (multivariate polynomials; a plain ``nn.Sequential`` of Linear
            layers and elementwise activations only); the results agree to rounding.
        internal_batch_size: the old name of ``directions_per_chunk`` (FutureWarning).

    Returns:
        A list whose element ``k - 1`` has shape ``(B, *O, p, ..., p)`` (``k`` trailing ``p``'s):
        the symmetric tensor of ``k``-th partial derivatives at each point. Derivatives are
        scaled from Taylor coefficients in float64; one that overflows the dtype is ``inf``,
        with a ``DerivativeRangeWarning``.

    Raises:
        ValueError: inputs not ``(B, p)``; an unknown ``route``, or ``route="mlp"`` for a model
            it does not apply to; a result over ``max_bytes`` (``B O (p^(n+1) - p) / (p - 1)``
            values: ``p = 2, n = 36`` is 1 TiB) or too much work; the message gives the size
            and the fix.

    Example:
        >>> import torch, hope_attr
        >>> f = lambda x: (x[:, :1] ** 2) * x[:, 1:]  # x1^2 x2
        >>> hessian = hope_attr.mixed_derivatives(f, torch.tensor([[1.0, 2.0]]), 2)[1]
        >>> expected = torch.tensor([[4.0, 2.0], [2.0, 0.0]])  # [[2 x2, 2 x1], [2 x1, 0]]
        >>> torch.allclose(hessian[0, 0], expected, atol=1e-5)
        True
    """
    chunk = directions_argument(directions_per_chunk, internal_batch_size)
    if not isinstance(inputs, Tensor) or inputs.dim() != 2:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(
            f"mixed_derivatives needs flat inputs (B, p), got {shape}; flatten the features "
            "(mixed partials are for low-dimensional inputs)"
        )
    if route not in _ROUTES:
        raise ValueError(f"route must be one of {_ROUTES}, got {route!r}")
    budget = _resources.current().max_mixed_result_bytes if max_bytes is None else max_bytes
    check_order(order, inputs.dtype)  # first: the size of a huge order does not even format
    # Before running the model: the dense tensors hold p^k entries per order, and the check
    # must not depend on running the model at all.
    p = inputs.shape[1]
    entries = (p ** (order + 1) - p) // (p - 1) if p > 1 else order
    _refuse_if_too_large("mixed_derivatives", p, order, inputs.shape[0] * entries, inputs, budget)
    expansion = Expansion(forward_func, inputs, order, additional_forward_args, chunk)
    outputs = math.prod(expansion.output.shape[1:])
    _refuse_if_too_large(
        "mixed_derivatives",
        inputs.shape[1],
        order,
        inputs.shape[0] * entries * outputs,
        inputs,
        budget,
    )
    return derivative_tensors(
        normalized_coefficients(expansion, route=route, max_bytes=budget),
        inputs.shape[1],
    )


def _refuse_if_too_large(
    what: str, num_variables: int, order: int, entries: int, like: Tensor, max_bytes: int
) -> None:
    """A clear ValueError, before any work, when the result alone would exceed ``max_bytes``."""
    size = entries * like.element_size()
    if size > max_bytes:
        raise ValueError(
            f"{what} with p = {num_variables} variables at order {order} would return {entries:,} "
            f"values ({_bytes(size)}), over the memory budget max_bytes = {_bytes(max_bytes)}; "
            "use a smaller order, fewer features or points, or raise max_bytes if the memory "
            "is there"
        )


def _bytes(size: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit} = {size:,} bytes"
    return f"{size} bytes"


def derivative_tensors(coefficients_per_order: list[Tensor], num_variables: int) -> list[Tensor]:
    """Normalized coefficients per order ``(B, *O, M_k)`` -> symmetric ``(B, *O, p, ..., p)``."""
    tensors = []
    for k, coefficients in enumerate(coefficients_per_order, start=1):
        scales, index = _tensor_layout(num_variables, k)
        # d^a f = a! f_a, with a! applied in float64 (it overflows float32 from 35! on)
        derivatives = times_integers(coefficients, scales, f"derivatives of order {k}")
        full = derivatives[..., index.to(coefficients.device)]
        tensors.append(full.reshape(*full.shape[:-1], *([num_variables] * k)))
    return tensors


@lru_cache(maxsize=64)
def _tensor_layout(num_variables: int, degree: int) -> tuple[tuple[int, ...], Tensor]:
    """``a!`` per monomial (exact ints), and for each entry of the ``p^k`` tensor the monomial
    it holds."""
    monomials = multi_indices(num_variables, degree)
    position = {m: i for i, m in enumerate(monomials)}
    scale = tuple(factorial_product(m) for m in monomials)
    grid = torch.cartesian_prod(*[torch.arange(num_variables)] * degree).reshape(-1, degree)
    counts = torch.nn.functional.one_hot(grid, num_variables).sum(1)
    index = torch.tensor([position[tuple(c.tolist())] for c in counts], dtype=torch.long)
    return scale, index
