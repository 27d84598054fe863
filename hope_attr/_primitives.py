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
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_attr import _arithmetic as ar
from hope_attr import _kinks, _registry
from hope_attr import _taylor_tables as tables
from hope_attr._jet import Jet, cauchy_product
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


@dataclass(frozen=True)
class _ConvCall:
    """One convolution's weight and geometry, from a module or from an ``F.convNd`` call (the
    seed rules below read the same attribute names as ``nn.Conv2d`` has)."""

    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str = "zeros"

    @classmethod
    def of_module(cls, module: nn.modules.conv._ConvNd) -> _ConvCall:
        padding = module.padding
        return cls(
            module.weight, module.bias, module.stride, padding, module.dilation, module.groups,
            module.padding_mode,
        )  # fmt: skip

    @classmethod
    def of_arguments(
        cls, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups=1
    ) -> _ConvCall:  # noqa: ANN001
        spatial = weight.dim() - 2

        def per_axis(value: object) -> tuple[int, ...] | str:
            if isinstance(value, str):
                return value
            return (value,) * spatial if isinstance(value, int) else tuple(value)

        return cls(weight, bias, per_axis(stride), per_axis(padding), per_axis(dilation), groups)

    def __call__(self, x: Tensor, with_bias: bool = True) -> Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.weight.dim() - 3]
        bias = self.bias if with_bias else None
        return conv(x, self.weight, bias, self.stride, self.padding, self.dilation, self.groups)


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_module(module: nn.modules.conv._ConvNd, x: Jet) -> Jet:
    if module.padding_mode != "zeros":  # padded by the module itself, then an unpadded conv
        return ar.map_batchwise(
            x, lambda s: module._conv_forward(s, module.weight, None), module(x.primal)
        )
    return _conv(_ConvCall.of_module(module), x)


def _conv_function(x: Jet, weight: Tensor, *args, **kwargs) -> Jet:
    return _conv(_ConvCall.of_arguments(weight, *args, **kwargs), x)


for _target in (F.conv1d, F.conv2d, F.conv3d):
    register_rule(_target)(_conv_function)


def _conv(call: _ConvCall, x: Jet) -> Jet:
    primal = call(x.primal)
    if x.seed is not None and x._series is None and not isinstance(call.padding, str):
        # A model input's one-pixel directions: read the kernel instead of convolving one-hots.
        window = _seed_window(call, x.seed.start, x.seed.stop, x.primal.shape, primal.shape)
        if window is not None:
            return _conv_seed_window(call, x, window, primal)
        response = _conv_seed_response(call, x.seed.start, x.seed.stop, x.primal.shape)
        return x.with_series(primal, response.unsqueeze(0).unsqueeze(2))
    return ar.map_batchwise(x, lambda s: call(s, with_bias=False), primal)


def _seed_window(
    module: _ConvCall,
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


def _conv_seed_window(module: _ConvCall, x: Jet, window: Window, primal: Tensor) -> Jet:
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
    module: _ConvCall, start: int, stop: int, input_shape: torch.Size
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


def _conv_transpose_function(conv: Callable[..., Tensor]) -> Callable[..., Jet]:
    def rule(x: Jet, weight: Tensor, bias: Tensor | None = None, *args, **kwargs) -> Jet:
        primal = conv(x.primal, weight, bias, *args, **kwargs)
        return ar.map_batchwise(x, lambda s: conv(s, weight, None, *args, **kwargs), primal)

    return rule


for _target in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):
    register_rule(_target)(_conv_transpose_function(_target))


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


_AVG_POOL = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)


@register_rule(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _avg_pool_module(module: nn.modules.pooling._AvgPoolNd, x: Jet) -> Jet:
    spatial = x.primal.dim() - 2
    arguments = dict(
        kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
        ceil_mode=module.ceil_mode, count_include_pad=module.count_include_pad,
    )  # fmt: skip
    if not isinstance(module, nn.AvgPool1d):
        arguments["divisor_override"] = module.divisor_override
    return _avg_pool(_AVG_POOL[spatial - 1], x, **arguments)


def _avg_pool_function(pool: Callable[..., Tensor]) -> Callable[..., Jet]:
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
    names += ("divisor_override",)

    def rule(x: Jet, *args, **kwargs) -> Jet:
        return _avg_pool(pool, x, **dict(zip(names, args, strict=False)), **kwargs)

    return rule


def _avg_pool(pool: Callable[..., Tensor], x: Jet, **arguments: object) -> Jet:
    """Average pooling; over disjoint blocks it keeps receptive-field windows, or is a block mean
    (cheaper than a strided convolution per coefficient)."""
    primal = pool(x.primal, **arguments)
    stride = _block_pooling_stride(SimpleNamespace(**arguments), x.primal.dim() - 2)
    if stride is not None and x.window is not None:
        series, window = x.window.average_pool(x._series, stride)
        return Jet(primal, series, x.order, window=window)
    if stride is not None:
        return x.with_series(primal, block_mean(_expanded(x), stride))
    return ar.map_batchwise(x, lambda s: pool(s, **arguments), primal)


for _pool in _AVG_POOL:
    register_rule(_pool)(_avg_pool_function(_pool))


def _block_pooling_stride(pooling: object, num_spatial: int) -> tuple[int, ...] | None:
    """The stride of a pooling over disjoint blocks (kernel == stride, no padding or dilation,
    floor mode, plain mean), else ``None``. ``pooling`` has the attributes of a pooling module."""

    def per_axis(value: int | tuple[int, ...]) -> tuple[int, ...]:
        return (value,) * num_spatial if isinstance(value, int) else tuple(value)

    kernel = per_axis(pooling.kernel_size)
    stride = per_axis(getattr(pooling, "stride", None) or pooling.kernel_size)
    if kernel != stride or any(per_axis(getattr(pooling, "padding", 0))):
        return None
    if getattr(pooling, "ceil_mode", False):
        return None
    if any(d != 1 for d in per_axis(getattr(pooling, "dilation", 1))):
        return None
    if getattr(pooling, "divisor_override", None) is not None:
        return None
    return stride


def _batchwise_function(fn: Callable[..., Tensor]) -> Callable[..., Jet]:
    def rule(x: Jet, *args, **kwargs) -> Jet:
        return ar.map_batchwise(x, lambda s: fn(s, *args, **kwargs), fn(x.primal, *args, **kwargs))

    return rule


@register_rule(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
def _adaptive_avg_pool_module(module: nn.Module, x: Jet) -> Jet:
    return ar.map_batchwise(x, module, module(x.primal))


for _pool in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
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


def _selecting(fn: Callable[..., Tensor]) -> Callable[..., object]:
    """Like :func:`_structural`, for ops whose tensor constants are indices or factors."""

    def rule(*args, **kwargs) -> object:
        return ar.map_per_sample(fn, *args, keep_constants=True, **kwargs)

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
    # The method accepts both call forms: x.reshape(2, 3) and torch.reshape(x, (2, 3)).
    ((torch.reshape, torch.Tensor.reshape), torch.Tensor.reshape),
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
    ((operator.getitem, torch.Tensor.__getitem__), operator.getitem),
    ((torch.sum, torch.Tensor.sum), torch.sum),
    ((torch.mean, torch.Tensor.mean), torch.mean),
    ((F.pad,), F.pad),
]:
    register_rule(*_targets)(_selecting(_fn))

# Concatenating jets with constant blocks: a constant block has a zero series.
register_rule(torch.cat, torch.concat, torch.concatenate)(_structural(torch.cat))
register_rule(torch.stack)(_structural(torch.stack))


# More ops that only move, select, repeat or sum entries (each linear, applied per sample). Their
# tensor arguments are indices or counts, never added to the result: passed unchanged.
for _targets, _fn in [
    ((torch.gather, torch.Tensor.gather), torch.gather),
    ((torch.index_select, torch.Tensor.index_select), torch.index_select),
    ((torch.take_along_dim, torch.Tensor.take_along_dim), torch.take_along_dim),
    ((torch.select, torch.Tensor.select), torch.select),
    ((torch.tril, torch.Tensor.tril), torch.tril),
    ((torch.triu, torch.Tensor.triu), torch.triu),
    ((torch.repeat_interleave, torch.Tensor.repeat_interleave), torch.repeat_interleave),
    ((torch.cumsum, torch.Tensor.cumsum), torch.cumsum),
    ((torch.diagonal, torch.Tensor.diagonal), torch.diagonal),
    ((torch.movedim, torch.Tensor.movedim, torch.moveaxis), torch.movedim),
    ((torch.swapaxes, torch.Tensor.swapaxes, torch.swapdims), torch.swapaxes),
    ((torch.t, torch.Tensor.t), torch.t),
    ((torch.tile, torch.Tensor.tile), torch.tile),
    ((torch.Tensor.unfold,), torch.Tensor.unfold),
    ((torch.Tensor.expand_as,), lambda x, other: x.expand(other.shape)),
    ((torch.Tensor.view_as,), lambda x, other: x.view(other.shape)),
    ((torch.Tensor.reshape_as,), lambda x, other: x.reshape(other.shape)),
    ((F.unfold,), F.unfold),
    ((F.fold,), F.fold),
    ((F.pixel_shuffle,), F.pixel_shuffle),
    ((F.pixel_unshuffle,), F.pixel_unshuffle),
]:
    register_rule(*_targets)(_selecting(_fn))


_LINEAR_RESAMPLING = (
    "nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area",
)  # fmt: skip


@register_rule(torch.einsum)
def _einsum(equation: str, *operands: object) -> Jet:
    """Linear in one jet operand; two jet operands form a product (a Cauchy product of their
    series, with the order and direction axes carried by an ellipsis)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    jets = [o for o in operands if ar.is_jet(o)]
    if len(jets) == 1:  # the other operands are factors: kept, not zeroed
        return ar.map_per_sample(
            lambda *ops: torch.einsum(equation, *ops), *operands, keep_constants=True
        )
    compact = equation.replace(" ", "")
    if len(operands) != 2 or "->" not in compact or "..." in compact:
        raise UnsupportedOperationError(
            f"torch.einsum({equation!r}) of {len(jets)} tensors that depend on the input has no "
            "Taylor rule: hope_attr handles two operands with an explicit '->' output and no "
            "'...'; write it as matmul or as two einsums"
        )
    inputs, output = compact.split("->")
    first, second = inputs.split(",")
    lifted = f"...{first},...{second}->...{output}"
    a, b = operands
    primal = torch.einsum(compact, a.primal, b.primal)
    series = cauchy_product(
        a.primal, _expanded(a), b.primal, _expanded(b), a.order,
        op=lambda x, y: torch.einsum(lifted, x, y),
    )  # fmt: skip
    return Jet(primal, series, a.order)


@register_rule(F.interpolate, F.upsample)
def _interpolate(x: Jet, *args, **kwargs) -> Jet:
    # Nearest, (bi/tri)linear, bicubic and area resampling are linear maps of the input.
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "nearest")
    if mode not in _LINEAR_RESAMPLING:
        raise UnsupportedOperationError(f"F.interpolate(mode={mode!r}) has no Taylor rule")
    return ar.map_batchwise(
        x, lambda s: F.interpolate(s, *args, **kwargs), F.interpolate(x.primal, *args, **kwargs)
    )


@register_rule(torch.masked_fill, torch.Tensor.masked_fill)
def _masked_fill(x: Jet, mask: Tensor, value: object) -> Jet:
    if ar.is_jet(value):
        return torch.where(mask, value, x)
    primal = x.primal.masked_fill(mask, value)
    series = ar.lifted_series(x, primal.dim()).masked_fill(mask, 0.0)
    return Jet(primal, series.expand(*series.shape[:2], *primal.shape), x.order)


@register_rule(torch.clamp_min, torch.Tensor.clamp_min)
def _clamp_min(x: Jet, min: float) -> Jet:  # noqa: A002
    return _clamp(x, min=min)


@register_rule(torch.clamp_max, torch.Tensor.clamp_max)
def _clamp_max(x: Jet, max: float) -> Jet:  # noqa: A002
    return _clamp(x, max=max)


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


# Piecewise-constant results (indices, signs, truth values, integers): read off the primal, they
# are constants with no series, like the branch of a ReLU. Python's `if` on them, `.item()` and
# `.tolist()` therefore see the values at the expansion point.
for _name in (
    "any", "all", "argmax", "argmin", "argsort", "isnan", "isinf", "isfinite", "isneginf",
    "isposinf", "sign", "signbit", "nonzero", "count_nonzero", "equal", "allclose", "isclose",
    "bucketize", "searchsorted", "floor", "ceil", "round", "trunc", "logical_not",
    "logical_and", "logical_or", "logical_xor", "bincount", "unique", "histc",
):  # fmt: skip
    for _home in (torch, torch.Tensor):
        _target = getattr(_home, _name, None)
        if _target is not None:
            register_rule(_target)(lambda *a, _f=_target, **k: _f(*ar.replace_jets(a), **k))
for _method in (
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.long,
    torch.Tensor.int, torch.Tensor.bool, torch.Tensor.short, torch.Tensor.byte,
    torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
    torch.Tensor.__len__,
):  # fmt: skip
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


# tanh, sigmoid and exp solve Riccati ODEs: their series cost O(n^2) (hope_attr._arithmetic).
register_rule(torch.tanh, torch.Tensor.tanh, F.tanh)(lambda x: ar.tanh(x))
register_rule(torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid, torch.special.expit)(
    lambda x: ar.sigmoid(x)
)
register_rule(torch.exp, torch.Tensor.exp)(lambda x: ar.exp(x))

for _targets, _table in [
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
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")

    def rule(x: Jet, *args, **kwargs) -> Jet | tuple[Jet, Tensor]:
        kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
        wants_indices = kwargs.pop("return_indices", False)
        geometry = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        _kinks.report_max_pool(x, pool, **{k: v for k, v in kwargs.items() if k in geometry})
        primal, indices = pool(x.primal, return_indices=True, **kwargs)
        stride = None
        if kwargs.get("kernel_size") is not None:
            stride = _block_pooling_stride(SimpleNamespace(**kwargs), spatial)
        if x.window is not None and stride is not None:
            series, window = x.window.max_pool(x._series, indices, stride)
            out = Jet(primal, series, x.order, window=window)
            return (out, indices) if wants_indices else out
        series = _expanded(x).flatten(-spatial)
        index = indices.flatten(-spatial)
        index = index.expand(*series.shape[:2], *index.shape)
        gathered = series.gather(-1, index).reshape(*series.shape[:2], *primal.shape)
        out = Jet(primal, gathered, x.order)
        return (out, indices) if wants_indices else out

    return rule


_MAX_POOL = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
for _spatial, _pool in enumerate(_MAX_POOL, 1):
    register_rule(_pool)(_max_pool_rule(_pool, _spatial))


def _with_indices(rule: Callable[..., object]) -> Callable[..., object]:
    # F.max_pool2d(..., return_indices=True) dispatches to F.max_pool2d_with_indices.
    return lambda x, *args, **kwargs: rule(x, *args, **{**kwargs, "return_indices": True})


for _target, _pool in (
    (F.max_pool1d_with_indices, F.max_pool1d),
    (F.max_pool2d_with_indices, F.max_pool2d),
    (F.max_pool3d_with_indices, F.max_pool3d),
):
    register_rule(_target)(_with_indices(_registry.function_rule(_pool)))


def _adaptive_max_pool_rule(pool: Callable[..., tuple[Tensor, Tensor]], spatial: int):
    def with_indices(t: Tensor, return_indices: bool, output_size: object) -> tuple:
        return pool(t, output_size, True)

    gather = _max_pool_rule(with_indices, spatial)

    def rule(x: Jet, output_size: object, return_indices: bool = False) -> object:
        return gather(x, output_size=output_size, return_indices=return_indices)

    return rule


for _spatial, _pool in enumerate(
    (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d), 1
):
    register_rule(_pool)(_adaptive_max_pool_rule(_pool, _spatial))
for _target, _pool in (
    (F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool1d),
    (F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool2d),
    (F.adaptive_max_pool3d_with_indices, F.adaptive_max_pool3d),
):
    register_rule(_target)(_with_indices(_registry.function_rule(_pool)))


@register_rule(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
def _max_pool_module(module: nn.modules.pooling._MaxPoolNd, x: Jet) -> Jet:
    pool = _MAX_POOL[x.primal.dim() - 3]
    return _registry.function_rule(pool)(
        x, module.kernel_size, module.stride, module.padding, module.dilation,
        ceil_mode=module.ceil_mode, return_indices=module.return_indices,
    )  # fmt: skip


@register_rule(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
def _adaptive_max_pool_module(module: nn.Module, x: Jet) -> Jet:
    pool = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[x.primal.dim() - 3]
    return _registry.function_rule(pool)(x, module.output_size, module.return_indices)
