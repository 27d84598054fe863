"""Where the branches of piecewise-linear operations and comparisons may change along a jet.

A ReLU, clamp, abs, elementwise maximum, max pooling or comparison (``x > 0.3`` feeding
``torch.where`` or ``masked_fill``) takes one branch per entry, chosen at the primal; the jet is
exact only until some entry crosses to another branch (a *kink*). Taylor continuation
(:mod:`hope_attr.attribution.continuation`) must know, per path, how far it may go before the first
one. The rules in :mod:`hope_attr.rules.elementwise`, :mod:`hope_attr.rules.pooling` and
:mod:`hope_attr.rules.structure` call :func:`report` (or :func:`report_pair`,
:func:`report_max_pool`, :func:`report_unlocated`) with their input jets; the call does nothing
unless a :func:`watch` context is active on this thread, so ordinary expansions pay one attribute
lookup.

Each entry is ``z(t) = z0 + z1 t + r(t)`` with ``|r(t)| <= R t^2`` for ``0 <= t <= 1``, where
``R = sum_{k>=2} |z_k|`` (twice that, as a margin for the orders the jet does not hold). The time
reported is the earliest ``t`` at which ``z`` *can* reach its threshold under that bound: exact
where ``R = 0`` (piecewise-linear networks, whose higher coefficients vanish), a lower bound
otherwise, so a crossing that the curvature brings forward is never stepped over. Decisions whose
crossing cannot be located (``argmax``, ``argsort``, ``.item()`` on a jet...) set
``everywhere``: every point may change branch at once. Times are in units of the jet's
direction, per point of the batch (continuation gives every point one direction).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import scope as _scope
from hope_attr.engine.jet import Jet


class _Watch:
    """The earliest crossing seen so far, per point; ``seen`` once any rule reported."""

    def __init__(self, measure: bool) -> None:
        self.measure = measure
        self.seen = False
        self.first: Tensor | None = None  # (B,) earliest crossing time > 0, inf if none
        self.everywhere = False  # an unlocated decision: every point may change branch at once

    def add(self, times: Tensor) -> None:
        """``times``: ``(D, B, ...)`` crossing times, ``inf`` where an entry never crosses."""
        earliest = times.reshape(*times.shape[:2], -1).amin(2).amin(0)  # (B,)
        self.first = earliest if self.first is None else torch.minimum(self.first, earliest)


@contextmanager
def watch(measure: bool = True) -> Iterator[_Watch]:
    """Record piecewise-linear operations run on this thread inside the block.

    Args:
        measure: compute each point's first crossing time; ``False`` only records that some
            piecewise-linear rule ran (cheap, works with windowed jets).
    """
    with _scope.active(watch=_Watch(measure)) as state:
        yield state.watch


def _active() -> _Watch | None:
    current = _scope.current().watch
    if current is None:
        return None
    current.seen = True
    return current if current.measure else None


# Margin on the curvature bound for the orders past the jet's (estimates, as in _convergence).
_CURVATURE_MARGIN = 2.0


def _first_order(x: Jet) -> Tensor:
    """``(D, B, *S)``: the first coefficient of every entry, batch broadcast out."""
    series = x.series
    return series[0].expand(series.shape[1], *x.primal.shape)


def _curvature(x: Jet) -> Tensor | float:
    """``(D, B, *S)``: ``R``, the margin times ``sum_{k>=2} |z_k|`` (0.0 for a linear jet)."""
    series = x.series
    if series.shape[0] < 2:
        return 0.0
    bound = series[1:].abs().sum(0) * _CURVATURE_MARGIN
    return bound.expand(series.shape[1], *x.primal.shape)


def _crossing(
    gap: Tensor, rate: Tensor, curvature: Tensor | float = 0.0, rising_only: bool = False
) -> Tensor:
    """Earliest ``t > 0`` at which ``gap + rate * t + r(t)``, ``|r(t)| <= curvature * t^2``, can
    reach zero; inf if it cannot. With ``curvature = 0`` the exact crossing of the line.

    An entry sitting exactly on a kink (``gap == 0``, common where blank image regions make
    units tie) that moves gets time 0: the rule chose its branch at the primal, which may be
    the wrong one for ``t > 0``. ``rising_only``: only a positive ``rate`` leaves the branch
    (max pooling, where the rule's choice at a tie is the current maximum and only an entry
    rising faster overtakes it).
    """
    size = gap.abs()
    approach = -torch.sign(gap) * rate  # > 0: the line heads for the threshold
    bent = torch.as_tensor(curvature, dtype=gap.dtype, device=gap.device)
    root = torch.sqrt(approach**2 + 4 * bent * size)
    # The positive root of bent t^2 + approach t - size, in its cancellation-free form.
    towards = 2 * size / (approach + root)
    away = torch.where(
        bent > 0, (root - approach) / bent.clamp_min(torch.finfo(gap.dtype).tiny) / 2, torch.inf
    )
    times = torch.where(approach > 0, towards, away)
    moving = ((rate > 0) if rising_only else (rate != 0)) | (bent > 0)
    on_kink = torch.where(moving, 0.0, torch.inf)
    return torch.where(gap == 0, on_kink, torch.nan_to_num(times, nan=torch.inf))


def report(x: object, *thresholds: float | Tensor | None) -> None:
    """A rule whose branch changes where the input crosses one of ``thresholds``."""
    watch_ = _active()
    if watch_ is None or not isinstance(x, Jet):
        return
    z1, bent = _first_order(x), _curvature(x)
    for threshold in thresholds:
        if threshold is not None:
            watch_.add(_crossing(x.primal - threshold, z1, bent))


def report_pair(a: object, b: object) -> None:
    """Elementwise ``maximum``/``minimum`` or a comparison of ``a`` and ``b``: the branch (the
    truth value) changes at ``a = b``."""
    watch_ = _active()
    if watch_ is None or not (isinstance(a, Jet) or isinstance(b, Jet)):
        return
    jet = a if isinstance(a, Jet) else b
    shape = torch.broadcast_shapes(
        *(v.primal.shape if isinstance(v, Jet) else torch.as_tensor(v).shape for v in (a, b))
    )

    def parts(v: object) -> tuple[Tensor, Tensor | float, Tensor | float]:
        if isinstance(v, Jet):
            return v.primal, _first_order(v), _curvature(v)
        return torch.as_tensor(v, dtype=jet.primal.dtype, device=jet.primal.device), 0.0, 0.0

    (pa, ra, ca), (pb, rb, cb) = parts(a), parts(b)
    gap = (pa - pb).expand(shape)
    full = (jet.num_directions, *shape)
    rate = torch.as_tensor(ra - rb).expand(full)
    bent = torch.as_tensor(ca + cb).expand(full)
    watch_.add(_crossing(gap, rate, bent))


def report_unlocated(*args: object) -> None:
    """A decision on a jet whose crossing this module cannot locate (argmax, ``.item()``...):
    every point may change branch at once, so continuation must not step past its start."""
    watch_ = _active()
    if watch_ is None:
        return
    if any(isinstance(v, Jet) for v in args):
        watch_.everywhere = True


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
    rate, bent = _first_order(x), _curvature(x)
    rate = rate if spatial == 2 else rate.unsqueeze(-2)
    if isinstance(bent, Tensor):
        bent = bent if spatial == 2 else bent.unsqueeze(-2)
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
    curvature: Tensor | float = 0.0
    if isinstance(bent, Tensor):  # entry j and the chosen one both bend: R_j + R_top
        padded_bent = F.pad(bent.flatten(0, 1), (pad[1], pad[1], pad[0], pad[0]))
        bents = columns(padded_bent).reshape(rates.shape)
        curvature = bents + bents.gather(3, chosen.expand(directions, *chosen.shape))
    # Entry j overtakes the chosen one when top - v_j = (r_j - r_top) t (+ the curvature).
    times = _crossing(values - top, rates - top_rate, curvature, rising_only=True)
    times = times.masked_fill(torch.isinf(values), torch.inf)  # padding
    watch_.add(times.reshape(directions, *batch_shape, -1))
