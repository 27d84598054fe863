"""Every unmixed derivative of every output, by batched Taylor mode: the public entry point."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, overload

from captum._utils.progress import NullProgress, progress
from torch import Tensor

from hope_attr.engine.expansion import Expansion, directions_argument
from hope_attr.engine.factorials import times_integers


@overload
def unmixed_derivatives(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    order: int,
    *,
    additional_forward_args: Any = None,
    directions_per_chunk: int | None = None,
    internal_batch_size: int | None = None,
    show_progress: bool = False,
) -> Tensor: ...


@overload
def unmixed_derivatives(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    order: int,
    *,
    additional_forward_args: Any = None,
    directions_per_chunk: int | None = None,
    internal_batch_size: int | None = None,
    show_progress: bool = False,
) -> tuple[Tensor, ...]: ...


def unmixed_derivatives(
    forward_func: Callable[..., Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    order: int,
    *,
    additional_forward_args: Any = None,
    directions_per_chunk: int | None = None,
    internal_batch_size: int | None = None,
    show_progress: bool = False,
) -> Tensor | tuple[Tensor, ...]:
    """All unmixed derivatives ``d^k out[b, o] / d inputs[b, i]^k`` for ``k = 1..order``.

    Exact to floating-point rounding: each input feature's direction is pushed through the
    network as a univariate Taylor series (a jet), all directions batched, with the primal pass
    shared (convention and rules: ``docs/derivation.md``). A locally affine model (ReLU, max
    pooling...; every order ``>= 2`` zero) or ``order=1`` takes one backward pass per output
    instead when that is cheaper (:mod:`hope_attr.engine.reverse`).

    Args:
        forward_func: a model or function, called as
            ``forward_func(inputs, *additional_forward_args)``; returns ``(B, *O)``. Its own
            Python runs eagerly on jets (branches are taken at ``inputs``); every torch
            operation it applies to them needs a Taylor rule or a decomposition into operations
            that have one. Dropout and BatchNorm must be in eval mode. Examples in a batch must
            be independent.
        inputs: a tensor ``(B, *I)`` or a tuple of such tensors (same ``B``), floating point.
        order: highest derivative order ``n >= 1``.
        additional_forward_args: extra arguments passed after the inputs (not differentiated);
            a single value or a tuple, as in Captum.
        directions_per_chunk: how many feature directions are propagated at once. Memory grows
            linearly with it; by default the resource policy's budgets choose it
            (:class:`hope_attr.Resources`).
        internal_batch_size: the old name of ``directions_per_chunk`` (FutureWarning).
        show_progress: a progress bar over the feature directions, advanced chunk by chunk
            (Captum's, so tqdm's when installed).

    Returns:
        A tensor ``(order, B, *O, *I)`` with ``result[k-1, b, o..., i...]`` the ``k``-th
        derivative, or a tuple of them for tuple inputs.

    Raises:
        TypeError: inputs are not floating-point tensors or ``order`` is not an int.
        ValueError: NaN/Inf inputs, ``order < 1``, mismatched batch sizes, an output without the
            batch axis.
        hope_attr.UnsupportedOperationError: an operation without a Taylor rule (the message says
            where it is and how to add a rule).
        hope_attr.TrainingModeError: a Dropout or BatchNorm module in training mode.

    Example:
        >>> import torch, hope_attr
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Tanh()).double().eval()
        >>> x = torch.zeros(1, 2, dtype=torch.float64)
        >>> d = hope_attr.unmixed_derivatives(model, x, order=3)
        >>> d.shape  # (order, batch, outputs, features)
        torch.Size([3, 1, 1, 2])
    """
    is_tuple = isinstance(inputs, tuple)
    chunk = directions_argument(directions_per_chunk, internal_batch_size)
    expansion = Expansion(forward_func, inputs, order, additional_forward_args, chunk)
    # k! is applied in float64, never formed in the output dtype (35! overflows float32).
    factorials = [math.factorial(k) for k in range(1, order + 1)]
    bar = NullProgress()
    if show_progress:
        total = sum(x[0].numel() for x in expansion.inputs)
        bar = progress(desc="hope_attr.unmixed_derivatives", total=total)
    with bar:
        coefficients_per_input = expansion.unmixed_coefficients(on_chunk=bar.update)
    results = [
        times_integers(coefficients.movedim(0, -1), factorials).movedim(-1, 0)
        for coefficients in coefficients_per_input
    ]
    return tuple(results) if is_tuple else results[0]
