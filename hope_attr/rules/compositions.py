"""Taylor rules derived by identities over the primitive rules.

SiLU, Mish, softmax and log-softmax are registered with the other activations in
:mod:`hope_attr.rules.elementwise`; the rest are registered here.

Each function here only encodes an identity (``silu(x) = x sigmoid(x)``, softmax as ``exp`` over a
sum, layer norm from means and ``rsqrt``); exactness follows from the primitives'. Constants that
are read off the primal -- the max subtracted for a stable softmax -- do not change the function,
so they do not change its series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import register_rule
from hope_attr.rules import checks as _checks


def reduce_over(x: Jet, dims: Sequence[int], mean: bool) -> Jet:
    """Sum or mean over axes of the model's tensor, keeping them (a linear map per sample)."""
    ndim = x.primal.dim()
    series_dims = tuple((d % ndim) + 2 for d in dims)
    reduce = torch.mean if mean else torch.sum
    series = reduce(
        x.series.expand(*x.series.shape[:2], *x.primal.shape), series_dims, keepdim=True
    )
    return Jet(reduce(x.primal, tuple(dims), keepdim=True), series, x.order)


def silu(x: Jet, inplace: bool = False) -> Jet:
    return x * ar.sigmoid(x)


def mish(x: Jet, inplace: bool = False) -> Jet:
    return x * ar.tanh(ar.softplus(x))


def gelu_tanh(x: Jet) -> Jet:
    """``gelu(x, approximate="tanh") = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    inner = (x + 0.044715 * ar.power(x, 3.0)) * math.sqrt(2 / math.pi)
    return 0.5 * x * (1 + ar.tanh(inner))


def _implicit_dim(x: Jet, dim: int | None) -> int:
    """PyTorch's choice for ``softmax(x)`` without ``dim`` (deprecated there): 0 for 0-, 1- and
    3-d inputs, else 1."""
    if dim is not None:
        return dim
    return 0 if x.primal.dim() in (0, 1, 3) else 1


def softmax(x: Jet, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Jet:
    dim = _implicit_dim(x, dim)
    _checks.warn_if_batch_coupled(x, (dim,), "softmax")
    if dtype is not None:
        x = x.to(dtype)
    shift = x.primal.amax(dim, keepdim=True)
    e = ar.exp(x - shift)
    return e / reduce_over(e, (dim,), mean=False)


def log_softmax(x: Jet, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Jet:
    dim = _implicit_dim(x, dim)
    _checks.warn_if_batch_coupled(x, (dim,), "log_softmax")
    if dtype is not None:
        x = x.to(dtype)
    shifted = x - x.primal.amax(dim, keepdim=True)
    return shifted - ar.log(reduce_over(ar.exp(shifted), (dim,), mean=False))


def _normalize(x: Jet, dims: Sequence[int], eps: float) -> Jet:
    centered = x - reduce_over(x, dims, mean=True)
    variance = reduce_over(centered * centered, dims, mean=True)
    return centered * ar.power(variance + eps, -0.5)


@register_rule(F.layer_norm)
def layer_norm(
    x: Jet,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Jet:
    dims = tuple(range(-len(normalized_shape), 0))
    _checks.warn_if_batch_coupled(x, dims, "layer_norm")  # normalized_shape covering axis 0
    y = _normalize(x, dims, eps)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


@register_rule(F.group_norm)
def group_norm(
    x: Jet,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Jet:
    batch, channels = x.primal.shape[:2]
    grouped = ar.map_per_sample(lambda t: t.reshape(batch, num_groups, -1), x)
    y = ar.map_per_sample(lambda t: t.reshape(x.primal.shape), _normalize(grouped, (-1,), eps))
    affine_shape = (channels, *([1] * (x.primal.dim() - 2)))
    if weight is not None:
        y = y * weight.reshape(affine_shape)
    return y + bias.reshape(affine_shape) if bias is not None else y


@register_rule(F.instance_norm, torch.instance_norm)
def instance_norm(
    x: Jet,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    cudnn_enabled: bool = False,
) -> Jet:
    """Each example's channels normalized over their own positions (the module's running
    statistics are left alone: expanding changes nothing on the model)."""
    affine_shape = (-1, *([1] * (x.primal.dim() - 2)))
    if use_input_stats:
        y = _normalize(x, tuple(range(2, x.primal.dim())), eps)
    else:  # eval mode with tracked statistics: an affine map, like batch norm
        y = (x - running_mean.reshape(affine_shape)) * torch.rsqrt(
            running_var.reshape(affine_shape) + eps
        )
    if weight is not None:
        y = y * weight.reshape(affine_shape)
    return y + bias.reshape(affine_shape) if bias is not None else y


@register_rule(F.rms_norm, torch.rms_norm)
def rms_norm(
    x: Jet,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Jet:
    dims = tuple(range(-len(normalized_shape), 0))
    _checks.warn_if_batch_coupled(x, dims, "rms_norm")
    eps = torch.finfo(x.primal.dtype).eps if eps is None else eps
    y = x * ar.power(reduce_over(x * x, dims, mean=True) + eps, -0.5)
    return y * weight if weight is not None else y


def antiderivative(x: Jet, value: Tensor, derivative: Callable[[Jet], Jet]) -> Jet:
    """``f(x0 + u)`` for ``f`` given by its value and derivative: ``f_k = [f'(x0 + t)]_{k-1} / k``.

    The table of ``f'`` comes from running ``derivative`` on a unit jet at the primal (one
    direction, primal-sized), so ``f`` needs no derivative formula of its own.
    """
    order = x.order
    unit = Jet(x.primal, torch.ones_like(x.primal).reshape(1, 1, *x.primal.shape), order)
    slope = derivative(unit)
    series = slope.full_series()[:, 0]  # coefficients 1..n of f'(x0 + t)
    table = [value, slope.primal] + [series[k - 2] / k for k in range(2, order + 1)]
    return ar.elementwise(x, table, value)


@register_rule(torch.erf, torch.Tensor.erf, torch.special.erf)
def erf(x: Jet) -> Jet:
    # erf' = 2 / sqrt(pi) * exp(-x^2)
    slope = 2 / math.sqrt(math.pi)
    return antiderivative(x, torch.erf(x.primal), lambda u: slope * ar.exp(-(u * u)))


@register_rule(torch.atan, torch.Tensor.atan, torch.arctan)
def atan(x: Jet) -> Jet:
    # atan' = 1 / (1 + x^2)
    return antiderivative(x, torch.atan(x.primal), lambda u: ar.reciprocal(1 + u * u))


@register_rule(torch.expm1, torch.Tensor.expm1, torch.special.expm1)
def expm1(x: Jet) -> Jet:
    # Only the primal differs from exp(x) - 1 (in rounding); the series are exp's.
    e = ar.exp(x)
    return Jet(torch.expm1(x.primal), e.series, x.order)


@register_rule(torch.log1p, torch.Tensor.log1p, torch.special.log1p)
def log1p(x: Jet) -> Jet:
    shifted = ar.log(x + 1.0)
    return Jet(torch.log1p(x.primal), shifted.series, x.order)


@register_rule(torch.linalg.vector_norm)
def vector_norm(
    x: Jet,
    ord: float = 2,  # noqa: A002
    dim=None,  # noqa: ANN001
    keepdim: bool = False,
    *,
    dtype=None,  # noqa: ANN001
) -> Jet | Tensor:
    """``(sum |x|^p)^(1/p)``; p = 2 as ``sqrt(sum x^2)`` (smooth away from 0); ``inf`` the
    largest ``|x|`` (a selection at the primal); 0 a count (a constant)."""
    dims = tuple(range(x.primal.dim())) if dim is None else dim
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    _checks.warn_if_batch_coupled(x, dims, "a vector norm")
    if ord in (math.inf, -math.inf):
        return (torch.amax if ord > 0 else torch.amin)(torch.abs(x), dims, keepdim=keepdim)
    if ord == 0:
        return torch.linalg.vector_norm(x.primal, 0, dims, keepdim)
    powered = x * x if ord == 2 else _power_of_abs(x, float(ord))
    total = reduce_over(powered, dims, mean=False)
    if not keepdim:
        total = ar.map_per_sample(lambda t: t.squeeze(dims), total)
    norm = ar.power(total, 1.0 / float(ord))
    at_zero = norm.primal == 0
    if bool(at_zero.any()):
        # The kink of a norm at 0 (a cone): slope 0 there, PyTorch's convention for |x| and ReLU
        # too (F.normalize of a zero vector, SwinV2's padded keys). The raw series holds NaN.
        series = norm.series.expand(*norm.series.shape[:2], *norm.primal.shape)
        norm = Jet(norm.primal, torch.where(at_zero, 0.0, series), x.order)
    return norm


def _power_of_abs(x: Jet, p: float) -> Jet:
    """``|x|^p``. At an entry exactly 0, ``|x|`` has slope 0 (its series is 0) but ``p < 2``
    puts an infinite derivative of the power there: inf * 0. Autograd masks such entries (slope
    0, also for ``p < 1``); the series there is 0, as every finite term of it already is."""
    powered = ar.power(torch.abs(x), p)
    zero = x.primal == 0
    if not bool(zero.any()):
        return powered
    return Jet(powered.primal, torch.where(zero, 0.0, powered.series), x.order)


@register_rule(torch.norm, torch.Tensor.norm)
def norm(
    x: Jet,
    p: float | str | None = "fro",
    dim=None,
    keepdim: bool = False,
    out=None,
    dtype=None,  # noqa: ANN001
) -> Jet:
    if out is not None:
        raise _checks.refusal("torch.norm(..., out=...)", "a jet cannot be written into `out`",
                              "Use the returned value.")  # fmt: skip
    if p in ("fro", None):
        p = 2
    if not isinstance(p, (int, float)):
        raise _checks.refusal(
            f"torch.norm(p={p!r})", "the nuclear norm is a function of singular values",
            "Use the Frobenius norm, or torch.linalg.vector_norm.",
        )  # fmt: skip
    return vector_norm(x, p, dim, keepdim)
