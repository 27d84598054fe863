"""Locally affine models: the first-order coefficients by reverse mode.

A network built from linear and piecewise-linear operations (convolutions, ReLU, max pooling,
BatchNorm in eval mode, residual adds: ResNets, VGGs) is affine in its inputs near a point, away
from its kinks: every order ``>= 2`` of every jet is zero, and the expansion is the Jacobian.
Forward Taylor mode pays one Jacobian-vector product per direction (150528 of them for every
pixel of a 224 px RGB image), while reverse mode gets the coefficient of *every* direction for one
output from one backward pass. At order 1 the same holds for any model: the first coefficient is
the gradient, whatever the curvature.

:class:`~hope_attr._derivatives.Expansion` takes this path when it pays (:func:`pays`) and the
model qualifies. Whether it qualifies is read off one jet, not guessed from module types: one
direction ``v`` (random, over every input) propagates through the model's Taylor rules, and the
model is locally affine when the output's jet stores only order 1 (a smooth nonlinearity, a
product of two jets or a division always stores more; a constant output stores nothing). The
same jet checks the gradients: its first coefficient ``J v`` must equal the reverse-mode rows
times ``v`` to rounding. Where autograd computes something other than the derivative (a
backward hook that edits gradients, a custom ``autograd.Function`` with a surrogate gradient, an
in-place operation autograd refuses), the check or the backward pass fails and the expansion
keeps forward jets, which follow the forward computation only.

Rows come from one backward pass per output, summed over the examples of a slice of the batch
(examples are independent, as everywhere in this package; the slices bound the memory that the
forward's saved values take). Batching them with ``is_grads_batched`` (vmap) was no faster on
a CPU: resnet18 at 224 px, 40 ms per class one at a time, 43-49 ms per class in batches of 8-32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from hope_attr._jet import Jet

__all__ = [
    "BACKWARD_COST_IN_DIRECTIONS",
    "has_backward_hooks",
    "jacobian_rows",
    "pays",
    "probe",
    "row_agrees",
]

# One backward pass costs about as much as this many jet directions: resnet18 at 224 px, order 4,
# 2 CPU threads: 40 ms per backward pass, 19.5 ms per direction of a chunked jet (measured with
# benchmarks/large_images.py; a jet direction that stores order 1 only is a JVP).
BACKWARD_COST_IN_DIRECTIONS = 2


def pays(outputs: int, directions: int, chunked: bool) -> bool:
    """Whether ``outputs`` backward passes beat jets along ``directions``.

    Only jets that run in several chunks are worth replacing: one chunk is a single batched
    pass through the model (an MLP's 784 directions), cheaper than a few backward passes and
    than the probe jet that decides.
    """
    return chunked and outputs * BACKWARD_COST_IN_DIRECTIONS < directions


def probe(
    run: Callable[[tuple[object, ...]], object],
    inputs: Sequence[Tensor],
    order: int,
) -> tuple[bool, Tensor, tuple[Tensor, ...]]:
    """Propagate one jet along a random direction ``v`` of all inputs.

    Args:
        run: calls the model on ``(*inputs, *extra)`` where inputs may be jets.
        inputs: the expansion point.
        order: the expansion's order (the probe needs at most 2: orders above 1 appear at the
            second order first, and the first coefficient does not depend on the truncation).

    Returns:
        ``(affine, jvp, v)``: whether the output's jet stores order 1 only (or the output is
        constant), its first coefficient ``(B, *O)``, and the direction, one tensor per input.
    """
    generator = torch.Generator(device=inputs[0].device).manual_seed(0)
    v = tuple(
        torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) for x in inputs
    )
    jets = [
        Jet(x, d.unsqueeze(0).unsqueeze(0), min(order, 2)) for x, d in zip(inputs, v, strict=True)
    ]
    value = run(tuple(jets))
    if isinstance(value, Jet):
        return value.num_stored == 1, value.full_series()[0, 0], v
    if isinstance(value, Tensor):  # the output does not depend on the inputs
        return True, torch.zeros_like(value), v
    raise TypeError(
        f"forward_func returned {type(value).__name__} on jets; it must return one tensor"
    )


def jacobian_rows(
    forward_func: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    extra: Sequence[object],
    index: Tensor,
    accept: Callable[[int, slice, list[Tensor]], bool],
    examples_per_pass: int,
) -> list[Tensor] | None:
    """Per input ``(K, B, *I)``: the gradient of each of the ``K`` outputs kept per example.

    Args:
        forward_func: the model, called as ``forward_func(*inputs, *extra)``.
        inputs: the expansion point, batch first.
        extra: the additional arguments; tensors whose first axis has the batch's size are
            sliced with the inputs, the others passed whole.
        index: ``(B, K)``, the flat position in the output ``(B, *O)`` of each output kept.
        accept: sees each output's gradients on each slice of examples (one ``(b, *I)`` per
            input) as they come, and stops the computation by returning ``False``.
        examples_per_pass: how many examples one forward (and its backward passes) takes: the
            values the forward keeps for the backward passes grow with it.

    Returns:
        The rows, or ``None`` where ``accept`` refused or autograd cannot differentiate the model
        (an error in the backward pass).
    """
    batch, count = index.shape
    rows = [x.new_zeros((count, *x.shape)) for x in inputs]
    try:
        for start in range(0, batch, examples_per_pass):
            part = slice(start, min(batch, start + examples_per_pass))
            leaves = [x[part].detach().requires_grad_() for x in inputs]
            args = [_batch_slice(a, part, batch) for a in extra]
            with torch.enable_grad():
                output = forward_func(*leaves, *args)
                kept = output.reshape(output.shape[0], -1).gather(1, index[part])
                for k in range(count):
                    grads = torch.autograd.grad(
                        kept[:, k].sum(), leaves, retain_graph=k + 1 < count, allow_unused=True
                    )
                    grads = [
                        torch.zeros_like(x) if g is None else g
                        for g, x in zip(grads, leaves, strict=True)
                    ]
                    if not accept(k, part, grads):
                        return None
                    for row, grad in zip(rows, grads, strict=True):
                        row[k, part] = grad
    except RuntimeError:
        return None
    return rows


def _batch_slice(value: object, part: slice, batch: int) -> object:
    if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch:
        return value[part]
    return value


def row_agrees(grads: Sequence[Tensor], v: Sequence[Tensor], jvp: Tensor) -> bool:
    """Whether one output's gradients times ``v`` equal the jet's ``J v`` ``(B,)`` to rounding.

    The tolerance is ``sqrt(eps)`` of the dtype relative to ``sum |grad * v|``, the scale of the
    rounding in both sums (3e-4 in float32): a gradient edited by a hook or replaced by a
    surrogate is off by far more.
    """
    products = [(g * d).reshape(g.shape[0], -1) for g, d in zip(grads, v, strict=True)]
    reverse = sum(p.sum(-1) for p in products)
    scale = sum(p.abs().sum(-1) for p in products)
    tolerance = torch.finfo(jvp.dtype).eps ** 0.5
    return bool(((reverse - jvp).abs() <= tolerance * scale + torch.finfo(jvp.dtype).tiny).all())


def has_backward_hooks(forward_func: object) -> bool:
    """Whether the model or a submodule carries backward hooks (they may edit gradients)."""
    if not isinstance(forward_func, nn.Module):
        return False
    hooks = nn.modules.module
    if hooks._global_backward_hooks or hooks._global_backward_pre_hooks:
        return True
    return any(m._backward_hooks or m._backward_pre_hooks for m in forward_func.modules())
