"""Taylor rules of pooling: average pooling is linear (a block mean over disjoint blocks, which
keeps receptive-field windows); max pooling selects the entry that is largest at the primal (the
branch taken at the expansion point, like ReLU).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine import registry as _registry
from hope_attr.engine.arithmetic import expanded_series as _expanded
from hope_attr.engine.jet import Jet
from hope_attr.engine.memo import cached
from hope_attr.engine.registry import register_rule
from hope_attr.engine.windows import block_mean

_AVG_POOL = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)


def _avg_pool_function(pool: Callable[..., Tensor]) -> Callable[..., Jet]:
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
    names += ("divisor_override",)

    spatial = _AVG_POOL.index(pool) + 1

    def rule(x: Jet, *args, **kwargs) -> Jet:
        arguments = {**dict(zip(names, args, strict=False)), **kwargs}
        if x.primal.dim() == spatial + 1:  # unbatched (C, *size): every coefficient pooled
            primal = cached(pool, x.primal, **arguments)
            return ar.map_batchwise(x, lambda s: pool(s, **arguments), primal)
        return _avg_pool(pool, x, **arguments)

    return rule


def _avg_pool(pool: Callable[..., Tensor], x: Jet, **arguments: object) -> Jet:
    """Average pooling; over disjoint blocks it keeps receptive-field windows, or is a block mean
    (cheaper than a strided convolution per coefficient)."""
    primal = cached(pool, x.primal, **arguments)
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
        primal = cached(fn, x.primal, *args, **kwargs)
        return ar.map_batchwise(x, lambda s: fn(s, *args, **kwargs), primal)

    return rule


for _pool in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d):
    register_rule(_pool)(_batchwise_function(_pool))


def _max_pool_rule(pool: Callable[..., tuple[Tensor, Tensor]], spatial: int):
    """Max pooling selects one entry per window: the one that is largest at the primal."""
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")

    def rule(x: Jet, *args, **kwargs) -> Jet | tuple[Jet, Tensor]:
        kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
        wants_indices = kwargs.pop("return_indices", False)
        geometry = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        _kinks.report_max_pool(x, pool, **{k: v for k, v in kwargs.items() if k in geometry})
        primal, indices = cached(pool, x.primal, return_indices=True, **kwargs)
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
