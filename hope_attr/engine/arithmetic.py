"""Arithmetic on jets: the building blocks every rule is written with.

Three families cover every rule in the package (the jet convention is in
:mod:`hope_attr.engine.jet`):

* **linear maps** (:func:`map_batchwise`, :func:`map_per_sample`, :func:`linear_combination`):
  applied to each coefficient, a bias only to the primal;
* **products** (:func:`mul`, :func:`matmul`): Cauchy products of the two series;
* **elementwise functions** (:func:`elementwise`, :func:`riccati`, :func:`scale`): composition
  with the table ``g^(j)(x)/j!`` of the function at the primal, the series form of the ODE that
  tanh, sigmoid and exp solve, or, for piecewise-linear functions, one slope.

Arguments that are not jets are constants: they carry no series.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from hope_attr.engine import taylor_tables as tables
from hope_attr.engine.jet import Jet
from hope_attr.engine.memo import cached
from hope_attr.engine.series import cauchy_product, compose_series, matmul_series, riccati_series


def is_jet(value: object) -> bool:
    return isinstance(value, Jet)


def primal_of(value: object) -> object:
    return value.primal if isinstance(value, Jet) else value


def _pad_orders(series: Tensor, m: int) -> Tensor:
    if series.shape[0] == m:
        return series
    return torch.cat([series, series.new_zeros((m - series.shape[0], *series.shape[1:]))])


def expanded_series(jet: Jet) -> Tensor:
    """The stored coefficients with the batch axis materialized (a view, no copy)."""
    series = jet.series
    return series.expand(*series.shape[:2], *jet.primal.shape)


def lifted_series(jet: Jet, ndim: int) -> Tensor:
    """``jet.series`` laid out for a result of rank ``ndim`` that ``jet`` broadcasts into.

    Broadcasting prepends axes to the model's layout; in the series they go after the order and
    direction axes. The old leading axis is materialized first: only the new leading axis may be
    a broadcast 1 (the jet convention).
    """
    series = jet.series
    extra = ndim - jet.primal.dim()
    if extra <= 0:
        return series
    if jet.primal.dim() and series.shape[2] != jet.primal.shape[0]:
        series = series.expand(*series.shape[:2], *jet.primal.shape)
    return series.reshape(*series.shape[:2], *([1] * extra), *series.shape[2:])


def _broadcast_series(series: Tensor, primal_shape: torch.Size) -> Tensor:
    """Broadcast ``(m, D, B|1, *S)`` to the layout of a (possibly broadcast) result."""
    if not primal_shape:  # a 0-d result (h.sum() * 2): no batch axis
        return series.expand(*series.shape[:2])
    batch = series.shape[2] if series.shape[2] == 1 else primal_shape[0]
    return series.expand(*series.shape[:2], batch, *primal_shape[1:])


# --------------------------------------------------------------------------- linear maps
def map_batchwise(jet: Jet, linear: Callable[[Tensor], Tensor], primal: Tensor) -> Jet:
    """Apply a linear map that treats axis 0 as independent examples to every coefficient.

    ``primal`` is the map's output on the primal (with any bias); ``linear`` must omit the bias.
    Orders and directions are folded into the batch axis, so one call serves every coefficient.
    """
    series = jet.series
    m, d, b = series.shape[:3]
    out = linear(series.reshape(m * d * b, *series.shape[3:]))
    return jet.with_series(primal, out.reshape(m, d, b, *out.shape[1:]))


def map_per_sample(
    fn: Callable[..., Tensor], *args: object, keep_constants: bool = False, **kwargs: object
) -> Jet:
    """Apply ``fn`` -- jointly linear in its jet arguments -- through ``torch.vmap``.

    For structural ops whose arguments refer to the model's own layout (``view(B, -1)``,
    ``permute(0, 2, 1)``, ``cat(dim=1)``, indexing): ``vmap`` hides the order and direction axes
    so those arguments keep their meaning. Tensor constants among ``args`` enter the series as
    zeros (they shift the primal only), which is right for ``cat``, ``stack``, ``add``, ``sub``;
    ``keep_constants`` passes them unchanged instead, for ops where a constant is an index or a
    factor (``gather``'s index, ``einsum`` with a weight).
    """
    jets = [a for a in _flatten(args) if is_jet(a)]
    order = jets[0].order
    m = max(j.num_stored for j in jets)
    primal = fn(*_replace(args, primal_of), **kwargs)
    stacked = [_pad_orders(j.full_series()[: j.num_stored], m).flatten(0, 1) for j in jets]
    d = jets[0].num_directions

    def per_sample(*series: Tensor) -> Tensor:
        it = iter(series)
        replaced = _replace(
            args,
            lambda a: (
                next(it)
                if is_jet(a)
                else (torch.zeros_like(a) if isinstance(a, Tensor) and not keep_constants else a)
            ),
        )
        return fn(*replaced, **kwargs)

    out = torch.vmap(per_sample)(*stacked)
    return Jet(primal, out.unflatten(0, (m, d)), order)


def linear_combination(a: object, b: object, alpha: float = 1.0) -> Jet:
    """``a + alpha * b`` where either may be a constant (tensor or number)."""
    primal = cached(_combined, primal_of(a), primal_of(b), alpha)
    shape = primal.shape
    parts = []
    for value, weight in ((a, 1.0), (b, alpha)):
        if is_jet(value):
            parts.append((lifted_series(value, primal.dim()), weight))
    order = next(v.order for v in (a, b) if is_jet(v))
    m = max(s.shape[0] for s, _ in parts)
    total = None
    for series, weight in parts:
        term = _pad_orders(series, m)
        term = term if weight == 1.0 else weight * term
        total = term if total is None else total + term
    if not shape:  # a 0-d result: no batch axis
        return Jet(primal, total.expand(*total.shape[:2]), order)
    batch = 1 if all(s.shape[2] == 1 for s, _ in parts) else shape[0]
    return Jet(primal, total.expand(*total.shape[:2], batch, *shape[1:]), order)


def _combined(a: object, b: object, alpha: float) -> Tensor:
    return a + alpha * b


def add(a: object, b: object) -> Jet:
    return linear_combination(a, b)


def sub(a: object, b: object) -> Jet:
    return linear_combination(a, b, alpha=-1.0)


# --------------------------------------------------------------------------- products
def mul(a: object, b: object) -> Jet:
    if is_jet(a) and is_jet(b):
        primal = cached(operator.mul, a.primal, b.primal)
        ndim = primal.dim()
        series = cauchy_product(
            a.primal, lifted_series(a, ndim), b.primal, lifted_series(b, ndim), a.order
        )
        return Jet(primal, _broadcast_series(series, primal.shape), a.order)
    jet, const = (a, b) if is_jet(a) else (b, a)
    primal = cached(operator.mul, jet.primal, const)
    series = lifted_series(jet, primal.dim()) * const
    return Jet(primal, _broadcast_series(series, primal.shape), jet.order)


def div(a: object, b: object) -> Jet:
    if is_jet(b):
        return mul(a, reciprocal(b)) if is_jet(a) else mul(reciprocal(b), a)
    primal = cached(operator.truediv, a.primal, b)
    series = lifted_series(a, primal.dim()) / b
    return Jet(primal, _broadcast_series(series, primal.shape), a.order)


def matmul(a: object, b: object) -> Jet:
    """``torch.matmul`` with a jet on either or both sides (batch axes broadcast as usual)."""
    if is_jet(a) and is_jet(b):
        primal = torch.matmul(a.primal, b.primal)
        series = matmul_series(a.primal, a.series, b.primal, b.series, a.order)
        return Jet(primal, series, a.order)
    if is_jet(a):
        return Jet(torch.matmul(a.primal, b), torch.matmul(a.series, b), a.order)
    return Jet(torch.matmul(a, b.primal), torch.matmul(a, b.series), b.order)


# --------------------------------------------------------------------------- elementwise
def elementwise(jet: Jet, table: Sequence[Tensor], primal: Tensor | None = None) -> Jet:
    """Compose a smooth elementwise function, given its table ``g^(j)(x0)/j!``, ``j = 0..n``."""
    primal = table[0] if primal is None else primal
    if _keeps_window(jet, primal):
        # Only the table entries under each direction's window matter.
        window = jet.window
        entries = window.gather(cached(_stacked, list(table[1:]), primal))
        series = compose_series([table[0], *entries.unbind(0)], jet._series, jet.order)
        return Jet(primal, series, jet.order, window=window)
    series = compose_series(list(table), jet.series, jet.order)
    return Jet(primal, series, jet.order)


def riccati(jet: Jet, value: Tensor, slope: Tensor, linear: float, quadratic: float) -> Jet:
    """A smooth elementwise ``g`` with ``g' = a + linear g + quadratic g^2`` (tanh, sigmoid,
    exp), given ``g`` and ``g'`` at the primal: ``O(n^2)`` per element instead of the table
    composition's ``O(n^3)``, which pays once the argument has more than one order stored."""
    if _keeps_window(jet, value):
        window = jet.window
        series = riccati_series(
            window.gather(value), window.gather(slope), jet._series, jet.order, linear, quadratic
        )
        return Jet(value, series, jet.order, window=window)
    series = riccati_series(value, slope, jet.series, jet.order, linear, quadratic)
    return Jet(value, series, jet.order)


def scale(jet: Jet, slope: Tensor, primal: Tensor) -> Jet:
    """A function that is linear near the primal (the branch of a piecewise-linear function)."""
    if _keeps_window(jet, primal):
        slope = jet.window.gather(_broadcast_to(slope, primal))
        return Jet(primal, jet._series * slope, jet.order, window=jet.window)
    return Jet(primal, jet.series * slope, jet.order)


def _stacked(entries: list[Tensor | float], primal: Tensor) -> Tensor:
    """Table entries stacked ``(n, *primal.shape)``: one window gather serves them all."""
    return torch.stack([_broadcast_to(t, primal) for t in entries])


def _keeps_window(jet: Jet, primal: Tensor) -> bool:
    return jet.window is not None and primal.shape == jet.primal.shape


def _broadcast_to(value: Tensor | float, primal: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.expand_as(primal)
    return torch.full_like(primal, value)


def reciprocal(jet: Jet) -> Jet:
    return elementwise(jet, tables.power(jet.primal, -1.0, jet.order))


def power(jet: Jet, exponent: float) -> Jet:
    return elementwise(jet, tables.power(jet.primal, exponent, jet.order))


def exp(jet: Jet) -> Jet:
    if jet.num_stored > 1:
        value = cached(torch.exp, jet.primal)
        return riccati(jet, value, value, linear=1.0, quadratic=0.0)
    return elementwise(jet, cached(tables.exp, jet.primal, jet.order))


def log(jet: Jet) -> Jet:
    return elementwise(jet, cached(tables.log, jet.primal, jet.order))


def tanh(jet: Jet) -> Jet:
    if jet.num_stored > 1:
        value, slope = cached(_tanh_slope, jet.primal)
        return riccati(jet, value, slope, linear=0.0, quadratic=-1.0)
    return elementwise(jet, cached(tables.tanh, jet.primal, jet.order))


def _tanh_slope(primal: Tensor) -> tuple[Tensor, Tensor]:
    value = torch.tanh(primal)
    return value, 1 - value * value


def sigmoid(jet: Jet) -> Jet:
    if jet.num_stored > 1:
        value, slope = cached(_sigmoid_slope, jet.primal)
        return riccati(jet, value, slope, linear=1.0, quadratic=-1.0)
    return elementwise(jet, cached(tables.sigmoid, jet.primal, jet.order))


def _sigmoid_slope(primal: Tensor) -> tuple[Tensor, Tensor]:
    value = torch.sigmoid(primal)
    return value, value - value * value


def softplus(jet: Jet, beta: float = 1.0, threshold: float = 20.0) -> Jet:
    return elementwise(jet, cached(tables.softplus, jet.primal, jet.order, beta, threshold))


# --------------------------------------------------------------------------- pytree helpers
def _flatten(value: object) -> list[object]:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _flatten(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _flatten(item)]
    return [value]


def _replace(value: object, fn: Callable[[object], object]) -> object:
    if isinstance(value, tuple):
        return tuple(_replace(v, fn) for v in value)
    if isinstance(value, list):
        return [_replace(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _replace(v, fn) for k, v in value.items()}
    return fn(value)


def replace_jets(values: object) -> object:
    """``values`` (nested tuples, lists, dicts) with every jet replaced by its primal."""
    return _replace(values, primal_of)


def contains_jet(*values: object) -> bool:
    return any(is_jet(leaf) for leaf in _flatten(values))
