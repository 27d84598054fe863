"""Taylor rules for irreducible operations.

Each rule is one of the families of :mod:`hope_attr._arithmetic`; rules that follow from an
identity over these (softmax, layer norm, SiLU, ...) live in :mod:`hope_attr._compositions`.

Piecewise-linear functions (ReLU, LeakyReLU, Hardtanh, ReLU6, abs, max pooling) use the branch
taken at the expansion point, with PyTorch's own choice at a kink (the slope autograd uses). Their
orders >= 2 are exactly zero, so a network's higher orders come only from its smooth layers, and
the expansion is valid only up to the nearest kink.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_attr import _arithmetic as ar
from hope_attr import _kinks, _registry
from hope_attr import _taylor_tables as tables
from hope_attr._jet import Jet
from hope_attr._registry import TrainingModeError, UnsupportedOperationError, register_rule
from hope_attr._windows import Window, block_mean


def _series_dims(dim: int | tuple[int, ...] | list[int], ndim: int) -> tuple[int, ...]:
    """Map axes of the model's tensor (batch first, ``ndim`` axes) onto the series layout."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple((d % ndim) + 2 for d in dims)


def _expanded(jet: Jet) -> Tensor:
    """The stored coefficients with the batch axis materialized (a view, no copy)."""
    series = jet.series
    return series.expand(*series.shape[:2], *jet.primal.shape)


# ============================================================================ linear family
@register_rule(nn.Linear)
def _linear_module(module: nn.Linear, x: Jet) -> Jet:
    return _linear(x, module.weight, module.bias)


@register_rule(F.linear)
def _linear(x: Jet, weight: Tensor, bias: Tensor | None = None) -> Jet:
    primal = F.linear(x.primal, weight, bias)
    if x.seed is not None and x.primal.dim() == 2:
        # Direction e_i through x @ W^T is column i of W: read it instead of multiplying one-hots.
        columns = weight.t()[x.seed.start : x.seed.stop]
        return x.with_series(primal, columns.reshape(1, columns.shape[0], 1, -1))
    return ar.map_batchwise(x, lambda s: F.linear(s, weight), primal)


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_module(module: nn.modules.conv._ConvNd, x: Jet) -> Jet:
    primal = module(x.primal)
    if x.seed is not None and x._series is None and _reads_kernel_slices(module):
        window = _seed_window(module, x.seed.start, x.seed.stop, x.primal.shape, primal.shape)
        if window is not None:
            return _conv_seed_window(module, x, window, primal)
        response = _conv_seed_response(module, x.seed.start, x.seed.stop, x.primal.shape)
        return x.with_series(primal, response.unsqueeze(0).unsqueeze(2))
    return ar.map_batchwise(x, lambda s: module._conv_forward(s, module.weight, None), primal)


def _reads_kernel_slices(module: nn.modules.conv._ConvNd) -> bool:
    return module.padding_mode == "zeros" and not isinstance(module.padding, str)


def _seed_window(
    module: nn.modules.conv._ConvNd,
    start: int,
    stop: int,
    input_shape: torch.Size,
    output_shape: torch.Size,
) -> Window | None:
    """Where the outputs that input position ``p`` reaches sit, if that is a worthwhile window.

    With stride 1 and dilation 1, output ``o`` reads input ``o - padding + tap``, so ``p`` reaches
    outputs ``p + padding - (kernel - 1) .. p + padding``: a kernel-sized window.
    """
    if module.groups != 1 or any(s != 1 for s in module.stride):
        return None
    if any(d != 1 for d in module.dilation):
        return None
    spatial = input_shape[2:]
    index = torch.arange(start, stop, device=module.weight.device)
    positions = []
    for size in reversed(spatial):
        positions.append(index % size)
        index = index // size
    positions.reverse()
    kernel = module.weight.shape[2:]
    offsets = torch.stack(
        [p + pad - (k - 1) for p, pad, k in zip(positions, module.padding, kernel, strict=True)],
        dim=1,
    )
    window = Window(offsets, tuple(kernel), tuple(output_shape[2:]))
    return window if window.is_worthwhile() else None


def _conv_seed_window(
    module: nn.modules.conv._ConvNd, x: Jet, window: Window, primal: Tensor
) -> Jet:
    """The first convolution of an input's seed, as windows: entry ``e`` of the window of input
    ``(c, p)`` is output ``p + padding - (kernel - 1) + e``, read through tap ``kernel - 1 - e``,
    so the window is channel ``c`` of the flipped kernel (zeroed where it leaves the map)."""
    assert x.seed is not None
    num_positions = math.prod(x.primal.shape[2:])
    channel = torch.arange(x.seed.start, x.seed.stop, device=primal.device) // num_positions
    spatial_dims = tuple(range(2, module.weight.dim()))
    flipped = module.weight.flip(spatial_dims)  # (C', C, *kernel)
    windows = flipped[:, channel].movedim(1, 0)  # (D, C', *kernel)
    _, inside = window.layout()
    windows = windows * inside.reshape(inside.shape[0], 1, *window.size)
    return Jet(primal, windows.unsqueeze(0).unsqueeze(2), x.order, window=window)


def _conv_seed_response(
    module: nn.modules.conv._ConvNd, start: int, stop: int, input_shape: torch.Size
) -> Tensor:
    """Convolution of the one-hot images ``e_start..e_stop`` read off the kernel: ``(D, C', *out)``.

    Output ``(o, p)`` sees input position ``p * stride - padding + k * dilation`` through
    ``weight[o, c, k]``, so the one-hot at ``(c, r)`` contributes ``weight[o, c, k]`` where
    ``k = (r + padding - p * stride) / dilation`` is an integer in ``[0, kernel)``, and only to
    output channels of ``c``'s group. A gather, instead of a convolution per direction.
    """
    weight = module.weight
    channels, *spatial = input_shape[1:]
    groups, out_channels = module.groups, weight.shape[0]
    index = torch.arange(start, stop, device=weight.device)
    positions = []
    for size in reversed(spatial):
        positions.append(index % size)
        index = index // size
    positions.reverse()
    channel = index
    per_group = channels // groups
    gather = [slice(None), (channel % per_group).reshape(-1, *([1] * len(spatial)))]
    valid = (
        torch.arange(out_channels, device=weight.device) // (out_channels // groups)
        == (channel // per_group)[:, None]
    ).reshape(-1, out_channels, *([1] * len(spatial)))
    for axis, (position, kernel) in enumerate(zip(positions, weight.shape[2:], strict=True)):
        out_size = (
            spatial[axis] + 2 * module.padding[axis] - module.dilation[axis] * (kernel - 1) - 1
        ) // module.stride[axis] + 1
        outputs = torch.arange(out_size, device=weight.device)
        offset = position[:, None] + module.padding[axis] - outputs * module.stride[axis]
        hit = (offset % module.dilation[axis] == 0) & (offset >= 0)
        hit &= offset < kernel * module.dilation[axis]
        tap = (offset // module.dilation[axis]).clamp(0, kernel - 1)
        shape = [-1] + [1] * len(spatial)
        shape[axis + 1] = out_size
        gather.append(tap.reshape(shape))
        valid = valid & hit.reshape(shape).unsqueeze(1)
    response = weight[tuple(gather)].movedim(0, 1)  # (D, C', *out)
    return response * valid


def _conv_function(conv: Callable[..., Tensor]) -> Callable[..., Jet]:
    def rule(x: Jet, weight: Tensor, bias: Tensor | None = None, *args, **kwargs) -> Jet:
        primal = conv(x.primal, weight, bias, *args, **kwargs)
        return ar.map_batchwise(x, lambda s: conv(s, weight, None, *args, **kwargs), primal)

    return rule


for _conv in (
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
):
    register_rule(_conv)(_conv_function(_conv))


@register_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose_module(module: nn.modules.conv._ConvTransposeNd, x: Jet) -> Jet:
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[
        len(module.kernel_size)
    ]

    def apply(s: Tensor, bias: Tensor | None) -> Tensor:
        return conv(
            s,
            module.weight,
            bias,
            module.stride,
            module.padding,
            module.output_padding,
            module.groups,
            module.dilation,
        )

    return ar.map_batchwise(x, lambda s: apply(s, None), apply(x.primal, module.bias))


@register_rule(
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
def _linear_module_without_bias(module: nn.Module, x: Jet) -> Jet:
    primal = module(x.primal)
    if isinstance(module, nn.modules.pooling._AvgPoolNd):
        stride = _block_pooling_stride(module, x.primal.dim() - 2)
        if stride is not None and x.window is not None:
            series, window = x.window.average_pool(x._series, stride)
            return Jet(primal, series, x.order, window=window)
        if stride is not None:
            return x.with_series(primal, block_mean(_expanded(x), stride))
    return ar.map_batchwise(x, module, primal)


def _block_pooling_stride(module: nn.Module, num_spatial: int) -> tuple[int, ...] | None:
    """The stride of a pooling over disjoint blocks (kernel == stride, no padding or dilation,
    floor mode, plain mean), else ``None``."""

    def per_axis(value: int | tuple[int, ...]) -> tuple[int, ...]:
        return (value,) * num_spatial if isinstance(value, int) else tuple(value)

    kernel = per_axis(module.kernel_size)
    stride = per_axis(module.stride if module.stride else module.kernel_size)
    if kernel != stride or any(per_axis(module.padding)) or module.ceil_mode:
        return None
    if any(d != 1 for d in per_axis(getattr(module, "dilation", 1))):
        return None
    if getattr(module, "divisor_override", None) is not None:
        return None
    return stride


def _batchwise_function(fn: Callable[..., Tensor]) -> Callable[..., Jet]:
    def rule(x: Jet, *args, **kwargs) -> Jet:
        return ar.map_batchwise(x, lambda s: fn(s, *args, **kwargs), fn(x.primal, *args, **kwargs))

    return rule


for _pool in (
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
):
    register_rule(_pool)(_batchwise_function(_pool))


@register_rule(nn.modules.batchnorm._BatchNorm)
def _batch_norm_module(module: nn.modules.batchnorm._BatchNorm, x: Jet) -> Jet:
    if module.training or module.running_var is None:
        raise TrainingModeError(
            f"{type(module).__name__} normalizes with batch statistics (training mode or "
            "track_running_stats=False), which couples the examples of a batch. Call model.eval() "
            "on a model whose batch norms track running statistics."
        )
    return _batch_norm(
        x,
        module.running_mean,
        module.running_var,
        module.weight,
        module.bias,
        False,
        0.0,
        module.eps,
    )


@register_rule(F.batch_norm)
def _batch_norm(
    x: Jet,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Jet:
    if training or running_var is None:
        raise TrainingModeError(
            "batch_norm with training=True uses batch statistics; call model.eval()."
        )
    primal = F.batch_norm(x.primal, running_mean, running_var, weight, bias, False, 0.0, eps)
    gain = torch.rsqrt(running_var + eps)
    if weight is not None:
        gain = gain * weight
    gain = gain.reshape(-1, *([1] * (x.primal.dim() - 2)))
    return ar.scale(x, gain, primal)


@register_rule(
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
def _identity_module(module: nn.Module, x: Jet, *args, **kwargs) -> Jet:
    if module.training and isinstance(module, nn.modules.dropout._DropoutNd):
        raise TrainingModeError(f"{type(module).__name__} is in training mode; call model.eval().")
    return x


@register_rule(
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout
)
def _dropout(x: Jet, p: float = 0.5, training: bool = True, inplace: bool = False) -> Jet:
    if training and p > 0:
        raise TrainingModeError("dropout is called with training=True; call model.eval().")
    return x


# ============================================================================ structure
def _structural(fn: Callable[..., Tensor]) -> Callable[..., object]:
    """Rule for an op that only moves, selects or sums entries: linear, applied per sample."""

    def rule(*args, **kwargs) -> object:
        return ar.map_per_sample(fn, *args, **kwargs)

    return rule


def _reshaping(fn: Callable[..., Tensor]) -> Callable[..., Jet]:
    """Like :func:`_structural`, but a reshape of a seed that keeps the batch axis stays a seed."""
    structural = _structural(fn)

    def rule(x: Jet, *args, **kwargs) -> Jet:
        if x.seed is not None and x._series is None:
            primal = fn(x.primal, *args, **kwargs)
            if primal.shape[0] == x.primal.shape[0]:  # row-major order, hence direction order, kept
                return Jet(primal, None, x.order, x.seed)
        return structural(x, *args, **kwargs)

    return rule


for _targets, _fn in [
    ((torch.Tensor.view,), torch.Tensor.view),
    ((torch.reshape, torch.Tensor.reshape), torch.reshape),
    ((torch.flatten, torch.Tensor.flatten), torch.flatten),
    ((torch.Tensor.unflatten, torch.unflatten), torch.unflatten),
    ((torch.Tensor.contiguous,), torch.Tensor.contiguous),
]:
    register_rule(*_targets)(_reshaping(_fn))

for _targets, _fn in [
    ((torch.permute, torch.Tensor.permute), torch.Tensor.permute),
    ((torch.transpose, torch.Tensor.transpose), torch.Tensor.transpose),
    ((torch.squeeze, torch.Tensor.squeeze), torch.Tensor.squeeze),
    ((torch.unsqueeze, torch.Tensor.unsqueeze), torch.Tensor.unsqueeze),
    # Tensor methods accept both call forms: x.permute(0, 2, 1) and torch.permute(x, (0, 2, 1)).
    ((torch.Tensor.expand,), torch.Tensor.expand),
    ((torch.Tensor.repeat,), torch.Tensor.repeat),
    ((torch.flip, torch.Tensor.flip), torch.Tensor.flip),
    ((torch.roll, torch.Tensor.roll), torch.Tensor.roll),
    ((torch.narrow, torch.Tensor.narrow), torch.Tensor.narrow),
    ((operator.getitem,), operator.getitem),
    ((torch.cat, torch.concat, torch.concatenate), torch.cat),
    ((torch.stack,), torch.stack),
    ((torch.sum, torch.Tensor.sum), torch.sum),
    ((torch.mean, torch.Tensor.mean), torch.mean),
    ((F.pad,), F.pad),
]:
    register_rule(*_targets)(_structural(_fn))


@register_rule(nn.Flatten, nn.Unflatten)
def _flatten_module(module: nn.Module, x: Jet) -> Jet:
    return _reshaping(module)(x)


def _splitting(fn: Callable[..., tuple[Tensor, ...]]) -> Callable[..., tuple[Jet, ...]]:
    def rule(x: Jet, *args, **kwargs) -> tuple[Jet, ...]:
        pieces = len(fn(x.primal, *args, **kwargs))
        return tuple(
            ar.map_per_sample(lambda t, i=i: fn(t, *args, **kwargs)[i], x) for i in range(pieces)
        )

    return rule


for _targets, _fn in [
    ((torch.Tensor.chunk, torch.chunk), torch.chunk),
    ((torch.Tensor.split, torch.split), torch.split),
    ((torch.Tensor.unbind, torch.unbind), torch.unbind),
]:
    register_rule(*_targets)(_splitting(_fn))


def _primal_query(method: Callable[..., object]) -> Callable[..., object]:
    return lambda x, *args, **kwargs: method(x.primal, *args, **kwargs)


for _method in (
    torch.Tensor.size,
    torch.Tensor.dim,
    torch.Tensor.numel,
    torch.ones_like,
    torch.zeros_like,
    torch.full_like,
    torch.empty_like,
    torch.Tensor.new_zeros,
    torch.Tensor.new_ones,
    torch.Tensor.new_full,
    torch.Tensor.new_empty,
):
    # Shapes, and tensors built from a shape, do not depend on the input's values: constants.
    register_rule(_method)(_primal_query(_method))


@register_rule(getattr)
def _getattr(x: Jet, name: str) -> object:
    if name in ("shape", "dtype", "device", "ndim", "is_cuda", "layout"):
        return getattr(x.primal, name)
    if name in ("T", "mT"):
        return ar.map_per_sample(lambda t: getattr(t, name), x)
    raise AttributeError(
        f"hope_attr: attribute '{name}' of a tensor that depends on the input is "
        "not supported in a traced forward"
    )


def _conversion(method: Callable[..., Tensor]) -> Callable[..., Jet]:
    """dtype/device conversions and copies act on primal and series alike."""

    def rule(x: Jet, *args, **kwargs) -> Jet:
        return Jet(method(x.primal, *args, **kwargs), method(x.series, *args, **kwargs), x.order)

    return rule


for _method in (
    torch.Tensor.to,
    torch.Tensor.type_as,
    torch.Tensor.float,
    torch.Tensor.double,
    torch.Tensor.clone,
    torch.clone,
):
    register_rule(_method)(_conversion(_method))


@register_rule(torch.Tensor.detach, torch.detach)
def _detach(x: Jet) -> Tensor:
    # Autograd treats a detached tensor as a constant; so do we.
    return x.primal.detach()


# ============================================================================ arithmetic
@register_rule(operator.add, operator.iadd, torch.add, torch.Tensor.add)
def _add(a: object, b: object, *, alpha: float = 1.0) -> Jet:
    return ar.linear_combination(a, b, alpha)


@register_rule(operator.sub, operator.isub, torch.sub, torch.Tensor.sub, torch.subtract)
def _sub(a: object, b: object, *, alpha: float = 1.0) -> Jet:
    return ar.linear_combination(a, b, -alpha)


@register_rule(torch.Tensor.__rsub__, torch.rsub)
def _rsub(a: object, b: object, *, alpha: float = 1.0) -> Jet:
    return ar.linear_combination(b, a, -alpha)


@register_rule(operator.mul, operator.imul, torch.mul, torch.Tensor.mul, torch.multiply)
def _mul(a: object, b: object) -> Jet:
    return ar.mul(a, b)


@register_rule(
    operator.truediv,
    operator.itruediv,
    torch.div,
    torch.Tensor.div,
    torch.divide,
    torch.true_divide,
)
def _div(a: object, b: object, *, rounding_mode: str | None = None) -> Jet:
    if rounding_mode is not None:
        raise ValueError("rounding division is piecewise constant; it has no Taylor expansion")
    return ar.div(a, b)


@register_rule(operator.neg, torch.neg, torch.Tensor.neg)
def _neg(x: Jet) -> Jet:
    return -x


@register_rule(
    operator.matmul,
    torch.matmul,
    torch.Tensor.matmul,
    torch.bmm,
    torch.Tensor.bmm,
    torch.mm,
    torch.Tensor.mm,
)
def _matmul(a: object, b: object) -> Jet:
    return ar.matmul(a, b)


@register_rule(operator.pow, torch.pow, torch.Tensor.pow)
def _pow(base: object, exponent: object) -> Jet:
    if not ar.is_jet(exponent):
        if isinstance(exponent, Tensor):
            if exponent.numel() != 1:
                return ar.exp(ar.mul(ar.log(base), exponent))
            exponent = exponent.item()
        return ar.power(base, float(exponent))
    # c ** x = exp(x log c); x ** y = exp(y log x)
    log_base = ar.log(base) if ar.is_jet(base) else torch.log(torch.as_tensor(base))
    return ar.exp(ar.mul(exponent, log_base))


# ============================================================================ smooth elementwise
def _smooth(table: Callable[..., list[Tensor]]) -> Callable[..., Jet]:
    def rule(x: Jet, *args, **kwargs) -> Jet:
        return ar.elementwise(x, table(x.primal, x.order, *args, **kwargs))

    return rule


for _targets, _table in [
    ((torch.tanh, torch.Tensor.tanh, F.tanh), tables.tanh),
    ((torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid, torch.special.expit), tables.sigmoid),
    ((torch.exp, torch.Tensor.exp), tables.exp),
    ((torch.log, torch.Tensor.log), tables.log),
    ((torch.sin, torch.Tensor.sin), tables.sin),
    ((torch.cos, torch.Tensor.cos), tables.cos),
]:
    register_rule(*_targets)(_smooth(_table))


@register_rule(torch.sqrt, torch.Tensor.sqrt)
def _sqrt(x: Jet) -> Jet:
    return ar.power(x, 0.5)


@register_rule(torch.rsqrt, torch.Tensor.rsqrt)
def _rsqrt(x: Jet) -> Jet:
    return ar.power(x, -0.5)


@register_rule(torch.reciprocal, torch.Tensor.reciprocal)
def _reciprocal(x: Jet) -> Jet:
    return ar.reciprocal(x)


@register_rule(F.softplus)
def _softplus(x: Jet, beta: float = 1.0, threshold: float = 20.0) -> Jet:
    return ar.softplus(x, beta, threshold)


@register_rule(F.elu)
def _elu(x: Jet, alpha: float = 1.0, inplace: bool = False) -> Jet:
    return ar.elementwise(x, tables.elu(x.primal, x.order, alpha))


# SELU = scale * ELU(alpha); the constants are PyTorch's.
_SELU_CONSTANTS = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


@register_rule(F.selu, torch.selu)
def _selu(x: Jet, inplace: bool = False) -> Jet:
    alpha, scale = _SELU_CONSTANTS
    return ar.elementwise(x, tables.elu(x.primal, x.order, alpha, scale), F.selu(x.primal))


@register_rule(F.gelu)
def _gelu(x: Jet, approximate: str = "none") -> Jet:
    if approximate == "tanh":
        from hope_attr._compositions import gelu_tanh

        return gelu_tanh(x)
    return ar.elementwise(x, tables.gelu(x.primal, x.order), F.gelu(x.primal))


# Elementwise activation modules: thin wrappers of a functional (the paper's rule reuses this list).
ELEMENTWISE_ACTIVATIONS = (
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Hardtanh,
    nn.SiLU,
    nn.Mish,
)


def activation_table(module: nn.Module, primal: Tensor, order: int) -> list[Tensor] | None:
    """``[g(x), g'(x), g''(x)/2!, ..., g^(n)(x)/n!]`` of an activation module whose rule is the
    built-in one below and a plain table (``None`` for compositions such as SiLU, and for a rule
    a user registered instead): what the rule composes a jet with, without a jet."""
    if _registry.module_rule(type(module)) is not _activation_module:
        return None
    if isinstance(module, nn.Tanh):
        return tables.tanh(primal, order)
    if isinstance(module, nn.Sigmoid):
        return tables.sigmoid(primal, order)
    if isinstance(module, nn.Softplus):
        return tables.softplus(primal, order, module.beta, module.threshold)
    if isinstance(module, nn.ELU):
        return tables.elu(primal, order, module.alpha)
    if isinstance(module, nn.SELU):
        alpha, scale = _SELU_CONSTANTS
        return [F.selu(primal), *tables.elu(primal, order, alpha, scale)[1:]]
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return [F.gelu(primal), *tables.gelu(primal, order)[1:]]
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.Hardtanh)):
        # One slope: what the rule multiplies the series with (it stores one coefficient).
        unit = Jet(primal, torch.ones_like(primal).reshape(1, 1, *primal.shape), order)
        result = _activation_module(module, unit)
        zeros = [torch.zeros_like(primal)] * (order - 1)
        return [result.primal, result.series[0, 0].expand_as(primal), *zeros]
    return None


@register_rule(*ELEMENTWISE_ACTIVATIONS, nn.Softmax, nn.LogSoftmax)
def _activation_module(module: nn.Module, x: Jet) -> Jet:
    # Activation modules are thin wrappers of a functional; dispatch to its rule.
    if isinstance(module, nn.Tanh):
        return ar.tanh(x)
    if isinstance(module, nn.Sigmoid):
        return ar.sigmoid(x)
    if isinstance(module, nn.Softplus):
        return ar.softplus(x, module.beta, module.threshold)
    if isinstance(module, nn.SELU):
        return _selu(x)
    if isinstance(module, nn.ELU):
        return _elu(x, module.alpha)
    if isinstance(module, nn.GELU):
        return _gelu(x, module.approximate)
    if isinstance(module, nn.ReLU):
        return _relu(x)
    if isinstance(module, nn.LeakyReLU):
        return _leaky_relu(x, module.negative_slope)
    if isinstance(module, nn.Hardtanh):  # includes ReLU6
        return _hardtanh(x, module.min_val, module.max_val)
    from hope_attr import _compositions as comp

    if isinstance(module, nn.SiLU):
        return comp.silu(x)
    if isinstance(module, nn.Mish):
        return comp.mish(x)
    if isinstance(module, nn.Softmax):
        return comp.softmax(x, module.dim)
    return comp.log_softmax(x, module.dim)


# ============================================================================ piecewise linear
@register_rule(F.relu, torch.relu, torch.Tensor.relu)
def _relu(x: Jet, inplace: bool = False) -> Jet:
    _kinks.report(x, 0.0)
    return ar.scale(x, (x.primal > 0).to(x.primal.dtype), F.relu(x.primal))


@register_rule(F.leaky_relu)
def _leaky_relu(x: Jet, negative_slope: float = 0.01, inplace: bool = False) -> Jet:
    _kinks.report(x, 0.0)
    slope = torch.full_like(x.primal, negative_slope).masked_fill_(x.primal > 0, 1.0)
    return ar.scale(x, slope, F.leaky_relu(x.primal, negative_slope))


@register_rule(F.hardtanh)
def _hardtanh(x: Jet, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Jet:
    _kinks.report(x, min_val, max_val)
    inside = (x.primal > min_val) & (x.primal < max_val)
    return ar.scale(x, inside.to(x.primal.dtype), F.hardtanh(x.primal, min_val, max_val))


@register_rule(F.relu6)
def _relu6(x: Jet, inplace: bool = False) -> Jet:
    return _hardtanh(x, 0.0, 6.0)


@register_rule(torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip)
def _clamp(x: Jet, min: float | None = None, max: float | None = None) -> Jet:  # noqa: A002
    # Autograd passes the gradient where min <= x <= max (inclusive); so does this slope.
    _kinks.report(x, min, max)
    inside = torch.ones_like(x.primal, dtype=torch.bool)
    if min is not None:
        inside &= x.primal >= min
    if max is not None:
        inside &= x.primal <= max
    return ar.scale(x, inside.to(x.primal.dtype), torch.clamp(x.primal, min, max))


@register_rule(torch.where)
def _where(condition: Tensor, a: object, b: object) -> Jet:
    """Select per entry; the condition depends on the primal only, so it is a constant."""
    if ar.is_jet(condition):
        raise TypeError("torch.where needs a boolean condition, got a differentiable tensor")
    primal = torch.where(condition, ar.primal_of(a), ar.primal_of(b))
    jets = [v for v in (a, b) if ar.is_jet(v)]
    m = max(j.num_stored for j in jets)
    order, directions = jets[0].order, jets[0].num_directions

    def series(value: object) -> Tensor | float:
        if not ar.is_jet(value):
            return 0.0
        padded = ar._pad_orders(value.series, m)
        return padded.expand(m, directions, *value.primal.shape)

    return Jet(primal, torch.where(condition, series(a), series(b)), order)


def _selection(pick_first: Callable[[Tensor, Tensor], Tensor], name: str):
    """Elementwise max/min: the branch taken at the primal; at a tie, half of each argument,
    which is the slope PyTorch's autograd uses there."""

    def rule(a: object, b: object = None, *args: object, **kwargs: object) -> Jet:
        if not isinstance(b, (Tensor, Jet)) or args or kwargs:
            raise UnsupportedOperationError(
                f"torch.{name} over a dimension (a reduction) has no Taylor rule; the elementwise "
                f"torch.{name}imum(a, b) has one"
            )
        _kinks.report_pair(a, b)
        pa, pb = ar.primal_of(a), ar.primal_of(b)
        tie = ar.mul(ar.linear_combination(a, b), 0.5)
        return _where(pa == pb, tie, _where(pick_first(pa, pb), a, b))

    return rule


register_rule(torch.maximum, torch.Tensor.maximum, torch.max, torch.Tensor.max)(
    _selection(torch.gt, "max")
)
register_rule(torch.minimum, torch.Tensor.minimum, torch.min, torch.Tensor.min)(
    _selection(torch.lt, "min")
)


def _comparison(compare: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Comparisons are piecewise constant: evaluate them on the primal."""
    return lambda a, b: compare(ar.primal_of(a), ar.primal_of(b))


for _targets, _compare in [
    ((operator.gt, torch.gt, torch.Tensor.gt), torch.gt),
    ((operator.lt, torch.lt, torch.Tensor.lt), torch.lt),
    ((operator.ge, torch.ge, torch.Tensor.ge), torch.ge),
    ((operator.le, torch.le, torch.Tensor.le), torch.le),
    ((operator.eq, torch.eq, torch.Tensor.eq), torch.eq),
    ((operator.ne, torch.ne, torch.Tensor.ne), torch.ne),
]:
    register_rule(*_targets)(_comparison(_compare))


@register_rule(torch.square, torch.Tensor.square)
def _square(x: Jet) -> Jet:
    return ar.mul(x, x)


@register_rule(torch.abs, torch.Tensor.abs, operator.abs)
def _abs(x: Jet) -> Jet:
    _kinks.report(x, 0.0)
    return ar.scale(x, torch.sign(x.primal), torch.abs(x.primal))


def _max_pool_rule(pool: Callable[..., tuple[Tensor, Tensor]], spatial: int):
    """Max pooling selects one entry per window: the one that is largest at the primal."""

    def rule(x: Jet, *args, **kwargs) -> Jet | tuple[Jet, Tensor]:
        wants_indices = kwargs.pop("return_indices", False)
        _kinks.report_max_pool(x, pool, *args, **kwargs)
        primal, indices = pool(x.primal, *args, return_indices=True, **kwargs)
        series = _expanded(x).flatten(-spatial)
        index = indices.flatten(-spatial)
        index = index.expand(*series.shape[:2], *index.shape)
        gathered = series.gather(-1, index).reshape(*series.shape[:2], *primal.shape)
        out = Jet(primal, gathered, x.order)
        return (out, indices) if wants_indices else out

    return rule


for _pool, _spatial in [
    (F.max_pool1d, 1),
    (F.max_pool2d, 2),
    (F.max_pool3d, 3),
    (F.adaptive_max_pool1d, 1),
    (F.adaptive_max_pool2d, 2),
    (F.adaptive_max_pool3d, 3),
]:
    register_rule(_pool)(_max_pool_rule(_pool, _spatial))


_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


@register_rule(*_MAX_POOL)
def _max_pool_module(module: nn.modules.pooling._MaxPoolNd, x: Jet) -> Jet:
    spatial = next(d for d, cls in enumerate(_MAX_POOL, 1) if isinstance(module, cls))
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
    stride = _block_pooling_stride(module, spatial)
    _kinks.report_max_pool(
        x, fn, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode
    )
    if x.window is not None and stride is not None:
        primal, indices = fn(x.primal, module.kernel_size, module.stride, return_indices=True)
        series, window = x.window.max_pool(x._series, indices, stride)
        out = Jet(primal, series, x.order, window=window)
        return (out, indices) if module.return_indices else out
    return _max_pool_rule(fn, spatial)(
        x,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        ceil_mode=module.ceil_mode,
        return_indices=module.return_indices,
    )


_ADAPTIVE_MAX = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


@register_rule(*_ADAPTIVE_MAX)
def _adaptive_max_pool_module(module: nn.Module, x: Jet) -> Jet:
    spatial = (
        len(module.output_size)
        if isinstance(module.output_size, tuple)
        else {nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}[
            next(c for c in type(module).__mro__ if c in _ADAPTIVE_MAX)
        ]
    )
    fn = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[spatial]
    return _max_pool_rule(fn, spatial)(x, module.output_size, return_indices=module.return_indices)
