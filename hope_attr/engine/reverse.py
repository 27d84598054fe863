"""Locally affine models: the first-order coefficients by reverse mode.

A network built from linear and piecewise-linear operations (convolutions, ReLU, max pooling,
BatchNorm in eval mode, residual adds: ResNets, VGGs) is affine in its inputs near a point, away
from its kinks: every order ``>= 2`` of every jet is zero, and the expansion is the Jacobian.
Forward Taylor mode pays one Jacobian-vector product per direction (150528 of them for every
pixel of a 224 px RGB image), while reverse mode gets the coefficient of *every* direction for one
output from one backward pass. At order 1 the same holds for any model: the first coefficient is
the gradient, whatever the curvature.

:class:`~hope_attr.engine.expansion.Expansion` takes this path when it pays (:func:`pays`) and the
model qualifies. Whether it qualifies is read off one jet, not guessed from module types: one
direction ``v`` (random, over every input) propagates through the model's Taylor rules, and the
model is locally affine when the output's jet stores only order 1 (a smooth nonlinearity, a
product of two jets or a division by a jet always stores more; a constant output stores
nothing). The same jet checks the gradients: its first coefficient ``J v`` must equal every
reverse-mode row times ``v`` within 16 rounding units of ``sum |row * v|`` (the forward with
gradients must also give the primal pass's output). A gradient that autograd computes
differently from the derivative of the forward (a backward hook or tensor hook that edits
gradients, a custom ``autograd.Function`` with a surrogate gradient) is off along a random
direction by far more than that, unless the edit is confined to a few of many features; modules
with backward hooks and global backward hooks are not tried at all. Where the check or the
backward pass fails, the expansion keeps forward jets, which follow the forward computation only,
and warns with :class:`ReverseModeWarning` (they are exact, but one pass per direction). On a
GPU that runs float32 convolutions in TF32 (cuDNN's default), rounding is that of TF32's 10-bit
mantissa, and the check is correspondingly coarser.

Rows come from one backward pass per output, summed over the examples of a slice of the batch
(examples are independent, as everywhere in this package; the slices bound the memory that the
forward's saved values take). Batching them with ``is_grads_batched`` (vmap) was no faster on
a CPU: resnet18 at 224 px, 40 ms per class one at a time, 43-49 ms per class in batches of 8-32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from hope_attr.engine.batching import follow_examples
from hope_attr.engine.jet import Jet

__all__ = [
    "BACKWARD_COST_IN_DIRECTIONS",
    "Disagreement",
    "ReverseModeWarning",
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


# Rounding units the gradient check allows, relative to the sum of magnitudes it adds: the
# forward jet and the backward pass round differently (resnet18, resnet50 and vgg11_bn in float32
# on a CPU differ by about 0.3 unit).
_CHECK_UNITS = 16


class ReverseModeWarning(UserWarning):
    """Reverse mode would have been cheaper for this locally affine model (or order 1), but
    autograd's gradients are not the derivatives of the forward (a backward hook, a surrogate
    gradient, a failing backward pass): the expansion used forward jets, exact but one pass per
    feature direction. The message says what failed.

    Example:
        >>> import warnings, torch, hope_attr
        >>> class Surrogate(torch.nn.Module):  # ReLU whose gradient a hook doubles
        ...     def forward(self, x):
        ...         y = torch.relu(x) * 1.0
        ...         if y.requires_grad:
        ...             y.register_hook(lambda grad: 2 * grad)
        ...         return y.sum(1, keepdim=True)
        >>> x = torch.linspace(-1, 1, 8, dtype=torch.float64).repeat(2, 1)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     d = hope_attr.unmixed_derivatives(Surrogate(), x, order=2, directions_per_chunk=2)
        >>> any(w.category is hope_attr.ReverseModeWarning for w in caught)
        True
        >>> d[0, 1, 0].tolist()  # the derivative of the forward, not the doubled gradient
        [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    """


class Disagreement(Exception):
    """Autograd cannot give this expansion: the reason, for :class:`ReverseModeWarning`."""


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
    expected: Tensor,
    accept: Callable[[int, slice, list[Tensor]], bool],
    examples_per_pass: int,
) -> list[Tensor]:
    """Per input ``(K, B, *I)``: the gradient of each of the ``K`` outputs kept per example.

    Args:
        forward_func: the model, called as ``forward_func(*inputs, *extra)``.
        inputs: the expansion point, batch first.
        extra: the additional arguments; tensors whose first axis has the batch's size are
            sliced with the inputs, the others passed whole (``expected`` catches a wrong guess).
        index: ``(B, K)``, the flat position in the output ``(B, *O)`` of each output kept.
        expected: ``(B, K)``, those outputs from the primal pass: each slice's forward must
            reproduce them.
        accept: sees each output's gradients on each slice of examples (one ``(b, *I)`` per
            input) as they come, and refuses them by returning ``False``.
        examples_per_pass: how many examples one forward (and its backward passes) takes: the
            values the forward keeps for the backward passes grow with it.

    Raises:
        Disagreement: ``accept`` refused, a forward gave other outputs, or autograd failed.
    """
    batch, count = index.shape
    # Inside torch.inference_mode nothing records a graph: leave it for these passes, and copy
    # what was made in it (inference tensors cannot require gradients, be saved for a backward
    # pass, or be written outside it).
    with torch.inference_mode(False), torch.enable_grad():
        rows = [x.new_zeros((count, *x.shape)) for x in inputs]
        index = index.clone()  # gather saves it for the backward pass
        for start in range(0, batch, examples_per_pass):
            part = slice(start, min(batch, start + examples_per_pass))
            leaves = [x[part].clone().requires_grad_() for x in inputs]
            args = follow_examples(list(extra), part, batch)
            try:
                output = forward_func(*leaves, *args)
                kept = output.reshape(output.shape[0], -1).gather(1, index[part])
            except RuntimeError as error:
                reason = f"the forward with gradients failed: {_first_line(error)}"
                raise Disagreement(reason) from error
            if not _close(kept.detach(), expected[part]):
                raise Disagreement(
                    "the forward with gradients enabled gave other outputs than the primal pass "
                    "(an additional argument sliced along the batch that is not per example, or "
                    "a forward that depends on torch.is_grad_enabled())"
                )
            for k in range(count):
                try:
                    grads = torch.autograd.grad(
                        kept[:, k].sum(), leaves, retain_graph=k + 1 < count, allow_unused=True
                    )
                except RuntimeError as error:
                    reason = f"the backward pass failed: {_first_line(error)}"
                    raise Disagreement(reason) from error
                grads = [
                    torch.zeros_like(x) if g is None else g
                    for g, x in zip(grads, leaves, strict=True)
                ]
                if not accept(k, part, grads):
                    raise Disagreement(
                        f"autograd's gradient of output {k} is not the derivative of the forward "
                        "along a random direction (a backward hook, a tensor hook or a custom "
                        "autograd.Function that edits gradients?)"
                    )
                for row, grad in zip(rows, grads, strict=True):
                    row[k, part] = grad
    return rows


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def rounding_unit(dtype: torch.dtype, device: torch.device) -> float:
    """The relative rounding of the arithmetic that computed values of ``dtype`` on ``device``."""
    eps = torch.finfo(dtype).eps
    tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda" and dtype == torch.float32 and tf32:
        eps = 2.0**-10  # TF32 keeps 10 bits of mantissa
    return eps


def _close(actual: Tensor, expected: Tensor) -> bool:
    unit = rounding_unit(expected.dtype, expected.device)
    scale = expected.abs().amax() if expected.numel() else expected.new_zeros(())
    bound = _CHECK_UNITS * unit * scale + torch.finfo(expected.dtype).tiny
    return bool(((actual.to(expected.dtype) - expected).abs() <= bound).all())


def row_agrees(grads: Sequence[Tensor], v: Sequence[Tensor], jvp: Tensor) -> bool:
    """Whether one output's gradients times ``v`` equal the jet's ``J v`` ``(B,)`` to rounding.

    The tolerance is 16 rounding units relative to ``sum |grad * v|``, the scale of the
    rounding in both sums.
    """
    products = [(g * d).reshape(g.shape[0], -1) for g, d in zip(grads, v, strict=True)]
    reverse = sum(p.sum(-1) for p in products)
    scale = sum(p.abs().sum(-1) for p in products)
    unit = rounding_unit(jvp.dtype, jvp.device)
    bound = _CHECK_UNITS * unit * scale + torch.finfo(jvp.dtype).tiny
    return bool(((reverse - jvp).abs() <= bound).all())


def has_backward_hooks(forward_func: object) -> bool:
    """Whether global backward hooks exist, or the model (a module, or a module's bound method)
    or a submodule carries backward hooks: they may edit gradients."""
    hooks = nn.modules.module
    if hooks._global_backward_hooks or hooks._global_backward_pre_hooks:
        return True
    owner = getattr(forward_func, "__self__", forward_func)
    if not isinstance(owner, nn.Module):
        return False
    return any(m._backward_hooks or m._backward_pre_hooks for m in owner.modules())
