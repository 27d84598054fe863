"""Where the branches of piecewise-linear operations change along a jet's directions.

A ReLU, clamp, abs, elementwise maximum or max pooling takes one branch per entry, chosen at the
primal; its jet is exact only until some entry crosses to another branch (a *kink*). Taylor
continuation (:mod:`hope_attr._continuation`) must step no further than the first kink of each
path. The piecewise-linear rules in :mod:`hope_attr._rules_elementwise` and
:mod:`hope_attr._rules_pooling` call :func:`report` (or
:func:`report_pair`, :func:`report_max_pool`) with their input jets; the call does nothing unless
a :func:`watch` context is active on this thread, so ordinary expansions pay one attribute lookup.

Crossings are computed from the first-order coefficient ``z1`` of each entry ``z(t) = z0 + z1 t``:
exact on piecewise-linear networks (every higher coefficient is zero there), and the linear
estimate of the crossing otherwise. Times are in units of the jet's direction, per point of the
batch (continuation gives every point one direction).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr._jet import Jet


class _Watch:
    """The earliest crossing seen so far, per point; ``seen`` once any rule reported."""

    def __init__(self, measure: bool) -> None:
        self.measure = measure
        self.seen = False
        self.first: Tensor | None = None  # (B,) earliest crossing time > 0, inf if none

    def add(self, times: Tensor) -> None:
        """``times``: ``(D, B, ...)`` crossing times, ``inf`` where an entry never crosses."""
        earliest = times.reshape(*times.shape[:2], -1).amin(2).amin(0)  # (B,)
        self.first = earliest if self.first is None else torch.minimum(self.first, earliest)


_state = threading.local()


@contextmanager
def watch(measure: bool = True) -> Iterator[_Watch]:
    """Record piecewise-linear operations run on this thread inside the block.

    Args:
        measure: compute each point's first crossing time; ``False`` only records that some
            piecewise-linear rule ran (cheap, works with windowed jets).
    """
    previous = getattr(_state, "watch", None)
    _state.watch = _Watch(measure)
    try:
        yield _state.watch
    finally:
        _state.watch = previous


def _active() -> _Watch | None:
    current = getattr(_state, "watch", None)
    if current is None:
        return None
    current.seen = True
    return current if current.measure else None


def _first_order(x: Jet) -> Tensor:
    """``(D, B, *S)``: the first coefficient of every entry, batch broadcast out."""
    series = x.series
    return series[0].expand(series.shape[1], *x.primal.shape)


def _crossing(gap: Tensor, rate: Tensor, rising_only: bool = False) -> Tensor:
    """Time at which ``gap + rate * t`` reaches zero, if it does for some ``t > 0``; else inf.

    An entry sitting exactly on a kink (``gap == 0``, common where blank image regions make
    units tie) that moves gets time 0: the rule chose its branch at the primal, which may be
    the wrong one for ``t > 0``, so continuation takes a tiny step to break the tie.
    ``rising_only``: only a positive ``rate`` leaves the branch (max pooling, where the rule's
    choice at a tie is the current maximum and only an entry rising faster overtakes it).
    """
    times = -gap / rate
    ahead = (times > 0) & torch.isfinite(times)
    leaving = (gap == 0) & ((rate > 0) if rising_only else (rate != 0))
    return torch.where(ahead, times, torch.where(leaving, 0.0, torch.inf))


def report(x: object, *thresholds: float | None) -> None:
    """A rule whose branch changes where the input crosses one of ``thresholds``."""
    watch_ = _active()
    if watch_ is None or not isinstance(x, Jet):
        return
    z1 = _first_order(x)
    for threshold in thresholds:
        if threshold is not None:
            watch_.add(_crossing(x.primal - threshold, z1))


def report_pair(a: object, b: object) -> None:
    """Elementwise ``maximum``/``minimum`` of ``a`` and ``b``: the branch changes at ``a = b``."""
    watch_ = _active()
    if watch_ is None or not (isinstance(a, Jet) or isinstance(b, Jet)):
        return
    jet = a if isinstance(a, Jet) else b
    shape = torch.broadcast_shapes(
        *(v.primal.shape if isinstance(v, Jet) else torch.as_tensor(v).shape for v in (a, b))
    )

    def parts(v: object) -> tuple[Tensor, Tensor | float]:
        if isinstance(v, Jet):
            return v.primal, _first_order(v)
        return torch.as_tensor(v, dtype=jet.primal.dtype, device=jet.primal.device), 0.0

    (pa, ra), (pb, rb) = parts(a), parts(b)
    gap = (pa - pb).expand(shape)
    watch_.add(_crossing(gap, torch.as_tensor(ra - rb).expand(jet.num_directions, *shape)))


def report_max_pool(
    x: object,
    pool: object,
    kernel_size: int | tuple[int, ...] = 1,
    stride: int | tuple[int, ...] | None = None,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    ceil_mode: bool = False,
) -> None:
    """Max pooling: the selection changes where another entry of a window overtakes the max."""
    watch_ = _active()
    if watch_ is None or not isinstance(x, Jet):
        return
    spatial = {F.max_pool1d: 1, F.max_pool2d: 2}.get(pool)  # type: ignore[call-overload]
    if spatial is None or ceil_mode:
        raise NotImplementedError(
            "Taylor continuation locates the kinks of max_pool1d/max_pool2d without ceil_mode "
            f"only, not of {getattr(pool, '__name__', pool)}"
            f"{' with ceil_mode' if ceil_mode else ''}; use method='exact' (or Captum's "
            "FeatureAblation) for this model"
        )

    def pair(value: int | tuple[int, ...] | None, default: tuple[int, int]) -> tuple[int, int]:
        if value is None:
            return default
        value = (value,) * spatial if isinstance(value, int) else tuple(value)
        return (1, *value) if spatial == 1 else value  # type: ignore[return-value]

    kernel = pair(kernel_size, (1, 1))
    step = pair(stride, kernel)
    pad = (0, *pair(padding, (0, 0))[1:]) if spatial == 1 else pair(padding, (0, 0))
    dil = pair(dilation, (1, 1))
    primal = x.primal if spatial == 2 else x.primal.unsqueeze(-2)
    rate = _first_order(x)
    rate = rate if spatial == 2 else rate.unsqueeze(-2)
    directions = rate.shape[0]
    # Windows as columns; padding is never selected, so it enters as -inf.
    padded = F.pad(primal, (pad[1], pad[1], pad[0], pad[0]), value=-torch.inf)
    padded_rate = F.pad(rate.flatten(0, 1), (pad[1], pad[1], pad[0], pad[0]))
    channels = primal.shape[-3]
    batch_shape = primal.shape[:-3]

    def columns(t: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, K, L)
        flat = t.reshape(-1, channels, *t.shape[-2:])
        cols = F.unfold(flat, kernel, dilation=dil, stride=step)
        return cols.reshape(flat.shape[0], channels, kernel[0] * kernel[1], -1)

    values = columns(padded)  # (B, C, K, L)
    rates = columns(padded_rate).reshape(directions, -1, *values.shape[1:])  # (D, B, C, K, L)
    chosen = values.argmax(2, keepdim=True)
    top = values.gather(2, chosen)
    top_rate = rates.gather(3, chosen.expand(directions, *chosen.shape))
    # Entry j overtakes the chosen one when top - v_j = (r_j - r_top) t.
    times = _crossing(values - top, rates - top_rate, rising_only=True)
    times = times.masked_fill(torch.isinf(values), torch.inf)  # padding
    watch_.add(times.reshape(directions, *batch_shape, -1))
