"""Independent references for the engine's tests: nested ``torch.func.jvp`` (and autograd).

Nothing here uses hope_attr. The k-th derivative along direction ``v`` is ``k`` nested
forward-mode products, ``d/dt^k f(x + t v)|_0``; vmapping over the one-hot directions ``e_i``
gives every unmixed derivative.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jvp, vmap


def _directional(f: Callable[[Tensor], Tensor], k: int) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, v) -> d^k/dt^k f(x + t v)`` at ``t = 0`` by nesting ``jvp``."""
    if k == 0:
        return lambda x, v: f(x)
    inner = _directional(f, k - 1)
    return lambda x, v: jvp(lambda y: inner(y, v), (x,), (v,))[1]


def unmixed_reference(f: Callable[[Tensor], Tensor], x: Tensor, order: int) -> Tensor:
    """Shape ``(order, B, *O, *I)``, like ``hope_attr.unmixed_derivatives``."""
    features = x[0].numel()
    eye = torch.eye(features, dtype=x.dtype, device=x.device)
    directions = eye.reshape(features, 1, *x.shape[1:]).expand(features, *x.shape)
    orders = []
    for k in range(1, order + 1):
        per_direction = vmap(lambda v, k=k: _directional(f, k)(x, v))(directions)  # (N, B, *O)
        moved = per_direction.movedim(0, -1)
        orders.append(moved.reshape(*moved.shape[:-1], *x.shape[1:]))
    return torch.stack(orders)


def unmixed_reference_tuple(
    f: Callable[..., Tensor], inputs: tuple[Tensor, ...], order: int
) -> tuple[Tensor, ...]:
    """Per-input references for a multi-input function (the others held fixed)."""
    results = []
    for index in range(len(inputs)):

        def partial(x: Tensor, index: int = index) -> Tensor:
            args = list(inputs)
            args[index] = x
            return f(*args)

        results.append(unmixed_reference(partial, inputs[index], order))
    return tuple(results)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """Max abs error over the max abs reference, per order, then the worst order.

    A NaN where the reference has none (or the reverse) is an infinite error: ``max`` over
    Python floats would otherwise drop it (``max(0.0, nan)`` is ``0.0``) and pass a NaN result.
    """
    if (torch.isnan(actual) != torch.isnan(expected)).any():
        return math.inf
    actual = torch.where(torch.isnan(actual), 0.0, actual)
    expected = torch.where(torch.isnan(expected), 0.0, expected)
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        scale = e.abs().max().item()
        error = (a - e).abs().max().item()
        worst = max(worst, error / scale if scale > 0 else error)
    return worst


def unmixed_reference_autograd(f: Callable[[Tensor], Tensor], x: Tensor, order: int) -> Tensor:
    """Nested reverse mode, one scalar at a time: slow, for tiny cases only.

    A second reference for operations whose forward-mode formulas are not differentiable to
    high order in PyTorch itself (nested ``jvp`` of ``F.layer_norm`` is wrong at order >= 2 in
    torch 2.14.1, while nested autograd and finite differences agree with each other).
    """
    x = x.detach()
    batch = x.shape[0]
    out_shape = f(x).shape[1:]
    result = torch.zeros(order, batch, out_shape.numel(), x[0].numel(), dtype=x.dtype)
    for b in range(batch):
        for i in range(x[0].numel()):
            xr = x.clone().requires_grad_(True)
            outputs = f(xr)[b].reshape(-1)
            for c in range(outputs.numel()):
                value = outputs[c]
                for k in range(order):
                    if not value.requires_grad:
                        break
                    grad = torch.autograd.grad(value, xr, create_graph=True, allow_unused=True)[0]
                    if grad is None:  # this and all higher orders are zero
                        break
                    value = grad[b].reshape(-1)[i]
                    result[k, b, c, i] = value.detach()
    return result.reshape(order, batch, *out_shape, *x.shape[1:])


class ComposedReference(torch.overrides.TorchFunctionMode):
    """Run a reference with the ops whose native kernels are wrong or lack forward-mode AD under
    nested ``jvp`` (../shared/FINDINGS.md section 5) written out as the functions they compute.

    LayerNorm from mean/var/rsqrt, ``silu``/``hardsigmoid``/``hardswish`` from their formulas,
    attention as ``softmax(q k^T * scale) v``, and ``nn.MultiheadAttention`` through its explicit
    ``need_weights=True`` path (no fused kernel).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        import math

        import torch.nn.functional as F

        kwargs = dict(kwargs or {})
        if func is F.layer_norm:
            x, shape, *rest = args
            weight = rest[0] if len(rest) > 0 else kwargs.get("weight")
            bias = rest[1] if len(rest) > 1 else kwargs.get("bias")
            eps = rest[2] if len(rest) > 2 else kwargs.get("eps", 1e-5)
            dims = tuple(range(-len(shape), 0))
            centered = x - x.mean(dims, keepdim=True)
            y = centered * torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
            y = y * weight if weight is not None else y
            return y + bias if bias is not None else y
        if func is F.silu:
            return args[0] * torch.sigmoid(args[0])
        if func is F.hardsigmoid:
            return torch.clamp(args[0] / 6 + 0.5, 0, 1)
        if func is F.hardswish:
            return args[0] * torch.clamp(args[0] / 6 + 0.5, 0, 1)
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
            causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
            scale = kwargs.get("scale") or 1 / math.sqrt(q.shape[-1])
            scores = q @ k.transpose(-2, -1) * scale
            if causal:
                keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
                scores = scores.masked_fill(~keep, float("-inf"))
            if mask is not None and mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            elif mask is not None:
                scores = scores + mask
            return torch.softmax(scores, -1) @ v
        if func is F.multi_head_attention_forward:
            kwargs["need_weights"] = True  # the explicit bmm/softmax path
            return func(*args, **kwargs)
        return func(*args, **kwargs)


def directional_reference(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, k: int) -> Tensor:
    """``d^k/dt^k f(x + t v)`` at ``t = 0`` by ``k`` nested ``jvp`` (ops composed as above)."""
    with ComposedReference():
        return _directional(f, k)(x, v)
