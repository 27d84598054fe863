"""Taylor rules of selections: ``max``/``min`` (full and over a dimension), ``amax``/``amin``,
``aminmax``, ``topk``, ``sort``, ``median``, ``kthvalue``, ``cummax``/``cummin``.

Which entry is selected is piecewise constant: it is decided on the primal, like a ReLU's branch,
and the value carries the series of the entry chosen there (a gather). At a tie PyTorch's autograd
convention applies: a reduction that returns indices (``max(x, dim)``, ``topk``, ``sort``...)
passes the chosen entry's series, one without (``amax``, ``max(x)``, ``median(x)``) the mean of
the tied entries' series. The choice changes where another entry overtakes the chosen one: each
rule tells Taylor continuation where that is (:mod:`hope_attr.engine.kinks`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine import scope as _scope
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import register_rule
from hope_attr.rules.checks import reduced_dims, refusal, warn_if_batch_coupled
from hope_attr.rules.elementwise import pairwise_selection

_SQUEEZE = object()  # marks "drop the reduced axes" for drop_reduced


def _series(x: Jet) -> Tensor:
    """``(m, D, *primal.shape)``: the stored coefficients with the batch axis materialized."""
    return ar.expanded_series(x)


def drop_reduced(jet: Jet, dims: tuple[int, ...], keepdim: bool) -> Jet:
    """Drop the reduced axes (kept until now) from a reduction's result unless ``keepdim``.

    Example:
        >>> import torch
        >>> from hope_attr import Jet
        >>> from hope_attr.rules.selections import drop_reduced
        >>> kept = Jet(torch.zeros(2, 1), torch.ones(1, 3, 2, 1), order=1)  # a sum over axis 1
        >>> tuple(drop_reduced(kept, (1,), keepdim=False).series.shape)
        (1, 3, 2)
    """
    if keepdim or jet.primal.dim() == 0:
        return jet
    series = jet.series.expand(*jet.series.shape[:2], *jet.primal.shape)
    return Jet(jet.primal.squeeze(dims), series.squeeze(tuple(d + 2 for d in dims)), jet.order)


def _take(x: Jet, dim: int, index: Tensor, primal: Tensor) -> Jet:
    """The entries of ``x`` at ``index`` along ``dim`` (``torch.gather``'s convention)."""
    series = _series(x)
    index = index.expand(*series.shape[:2], *index.shape)
    return Jet(primal, series.gather(dim + 2, index), x.order)


def _watching() -> bool:
    return _scope.current().watch is not None


# --------------------------------------------------------------------------- kinks
def _report_winner(x: Jet, chosen: Tensor, winner: Jet, dims: tuple[int, ...], largest: bool):
    """The selection changes where an entry that was not chosen reaches the chosen value.

    ``chosen``: where the winner sits (the tied entries of an even split stay in, at gap 0).
    """
    if not _watching():
        return
    if 0 in dims and x.primal.dim() > 0:
        _kinks.report_unlocated(x)  # crossings over the batch axis mix the points' times
        return
    unique = chosen & (chosen.sum(dims, keepdim=True) == 1)
    # The winner against itself would read as a tie: it takes -inf (+inf), which never crosses.
    others = torch.where(unique, -torch.inf if largest else torch.inf, x)
    _kinks.report_pair(others, winner)


def _report_order(ordered: Jet, dim: int, pairs: range | None = None) -> None:
    """A sorted order changes where two neighbours in it cross (``pairs``: the neighbours
    ``(i, i + 1)`` that matter; all of them by default)."""
    if not _watching():
        return
    size = ordered.primal.shape[dim] if ordered.primal.dim() else 1
    if dim == 0 or size < 2:
        if dim == 0 and size > 1:
            _kinks.report_unlocated(ordered)
        return
    pairs = range(size - 1) if pairs is None else pairs
    start, stop = max(pairs.start, 0), min(pairs.stop, size - 1)
    if stop > start:
        lower = torch.narrow(ordered, dim, start, stop - start)
        upper = torch.narrow(ordered, dim, start + 1, stop - start)
        _kinks.report_pair(lower, upper)


# --------------------------------------------------------------------------- reductions
def _extreme(x: Jet, dim: object, keepdim: bool, largest: bool, op: str) -> Jet:
    """``amax``/``amin`` over ``dim`` (all axes for ``None``): ties share the series evenly."""
    if x.primal.dim() == 0:
        return x
    dims = reduced_dims(x.primal.dim(), dim)
    warn_if_batch_coupled(x, dims, op)
    reduce = torch.amax if largest else torch.amin
    value = reduce(x.primal, dims, keepdim=True)
    chosen = x.primal == value
    count = chosen.sum(dims, keepdim=True)
    series = torch.where(chosen, _series(x), 0.0).sum(tuple(d + 2 for d in dims), keepdim=True)
    winner = Jet(value, series / count, x.order)
    _report_winner(x, chosen, winner, dims, largest)
    return drop_reduced(winner, dims, keepdim)


def _along(x: Jet, dim: int, keepdim: bool, select: Callable[..., tuple], op: str):
    """``(values, indices)`` of a selection along ``dim`` that returns indices."""
    if x.primal.dim() == 0:
        values, indices = select(x.primal, dim, keepdim=keepdim)
        return x, indices
    (dim,) = reduced_dims(x.primal.dim(), dim)
    warn_if_batch_coupled(x, (dim,), op)
    values, indices = select(x.primal, dim, keepdim=True)
    winner = _take(x, dim, indices, values)
    chosen = torch.zeros_like(x.primal, dtype=torch.bool).scatter_(dim, indices, True)
    _report_winner(x, chosen, winner, (dim,), largest=op.endswith(("max", "topk")))
    if keepdim:
        return winner, indices
    return drop_reduced(winner, (dim,), False), indices.squeeze(dim)


def _max_min(largest: bool) -> Callable[..., object]:
    name = "max" if largest else "min"
    returns = torch.return_types.max if largest else torch.return_types.min
    select = torch.max if largest else torch.min

    def rule(x: object, *args: object, **kwargs: object) -> object:
        if "out" in kwargs:
            raise refusal(f"torch.{name}(..., out=...)", "a jet cannot be written into `out`",
                          f"Use the returned value: y = torch.{name}(...).")  # fmt: skip
        other = args[0] if args else kwargs.get("other")
        if isinstance(other, (Tensor, Jet)) or not isinstance(x, Jet):
            return pairwise_selection(x, other, largest)  # torch.max(a, b): elementwise
        dim = args[0] if args else kwargs.get("dim")
        if dim is None:
            return _extreme(x, None, False, largest, f"torch.{name}")
        keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
        return returns(_along(x, dim, keepdim, select, f"torch.{name}"))

    return rule


register_rule(torch.max, torch.Tensor.max)(_max_min(largest=True))
register_rule(torch.min, torch.Tensor.min)(_max_min(largest=False))


@register_rule(torch.amax, torch.Tensor.amax)
def _amax(x: Jet, dim: object = (), keepdim: bool = False) -> Jet:
    return _extreme(x, dim, keepdim, True, "torch.amax")


@register_rule(torch.amin, torch.Tensor.amin)
def _amin(x: Jet, dim: object = (), keepdim: bool = False) -> Jet:
    return _extreme(x, dim, keepdim, False, "torch.amin")


@register_rule(torch.aminmax, torch.Tensor.aminmax)
def _aminmax(x: Jet, *, dim: int | None = None, keepdim: bool = False) -> object:
    low = _extreme(x, dim, keepdim, False, "torch.aminmax")
    return torch.return_types.aminmax((low, _extreme(x, dim, keepdim, True, "torch.aminmax")))


def _median(ignore_nan: bool) -> Callable[..., object]:
    name = "nanmedian" if ignore_nan else "median"
    full = torch.nanmedian if ignore_nan else torch.median

    def rule(x: Jet, dim: int | None = None, keepdim: bool = False) -> object:
        if dim is None:  # the lower median; PyTorch shares a tie's series evenly
            if x.primal.dim() == 0:
                return x
            warn_if_batch_coupled(x, None, f"torch.{name}")
            value = full(x.primal)
            chosen = x.primal == value
            series = torch.where(chosen, _series(x), 0.0).flatten(2).sum(2) / chosen.sum()
            median = Jet(value, series, x.order)
            if _watching():
                _kinks.report_unlocated(x)
            return median
        # The median changes identity where another entry crosses its value (as for max).
        return torch.return_types.median(_along(x, dim, keepdim, full, f"torch.{name}"))

    return rule


register_rule(torch.median, torch.Tensor.median)(_median(ignore_nan=False))
register_rule(torch.nanmedian, torch.Tensor.nanmedian)(_median(ignore_nan=True))


def _sorted(x: Jet, dim: int, descending: bool = False) -> Jet:
    values, indices = torch.sort(x.primal, dim, descending=descending, stable=True)
    return _take(x, dim % x.primal.dim(), indices, values)


@register_rule(torch.kthvalue, torch.Tensor.kthvalue)
def _kthvalue(x: Jet, k: int, dim: int = -1, keepdim: bool = False) -> object:
    select = lambda t, d, keepdim: torch.kthvalue(t, k, d, keepdim)  # noqa: E731
    return torch.return_types.kthvalue(_along(x, dim, keepdim, select, "torch.kthvalue"))


@register_rule(torch.topk, torch.Tensor.topk)
def _topk(
    x: Jet,
    k: int,
    dim: int = -1,
    largest: bool = True,
    sorted: bool = True,  # noqa: A002
) -> object:
    values, indices = torch.topk(x.primal, k, dim, largest, sorted)
    if x.primal.dim() == 0:
        return torch.return_types.topk((x, indices))
    dim = dim % x.primal.dim()
    warn_if_batch_coupled(x, (dim,), "torch.topk")
    if _watching():  # the set changes where the (k+1)-th overtakes the k-th; the order too
        _report_order(_sorted(x, dim, descending=largest), dim, range(0 if sorted else k - 1, k))
    return torch.return_types.topk((_take(x, dim, indices, values), indices))


@register_rule(torch.sort, torch.Tensor.sort)
def _sort(x: Jet, dim: int = -1, descending: bool = False, stable: bool | None = False) -> object:
    values, indices = torch.sort(x.primal, dim=dim, descending=descending, stable=stable)
    if x.primal.dim() == 0:
        return torch.return_types.sort((x, indices))
    dim = dim % x.primal.dim()
    warn_if_batch_coupled(x, (dim,), "torch.sort")
    out = _take(x, dim, indices, values)
    _report_order(out, dim)
    return torch.return_types.sort((out, indices))


@register_rule(torch.msort)
def _msort(x: Jet) -> Jet:
    return _sort(x, 0).values


def _cumulative_extreme(largest: bool) -> Callable[..., object]:
    name = "cummax" if largest else "cummin"
    select = torch.cummax if largest else torch.cummin
    returns = torch.return_types.cummax if largest else torch.return_types.cummin

    def rule(x: Jet, dim: int) -> object:
        values, indices = select(x.primal, dim)
        if x.primal.dim() == 0:
            return returns((x, indices))
        dim = dim % x.primal.dim()
        warn_if_batch_coupled(x, (dim,), f"torch.{name}")
        if _watching():  # the running winner changes where an entry overtakes an earlier one
            _kinks.report_unlocated(x)
        return returns((_take(x, dim, indices, values), indices))

    return rule


register_rule(torch.cummax, torch.Tensor.cummax)(_cumulative_extreme(largest=True))
register_rule(torch.cummin, torch.Tensor.cummin)(_cumulative_extreme(largest=False))


@register_rule(torch.unique, torch.Tensor.unique)
def _unique(
    x: Jet, sorted: bool = True, return_inverse: bool = False,  # noqa: A002
    return_counts: bool = False, dim: int | None = None,
) -> object:  # fmt: skip
    """The distinct values (or slices along ``dim``), each carrying the series of its first
    occurrence; which entries are equal is decided at the primal."""
    values, inverse, counts = torch.unique(
        x.primal, sorted=sorted, return_inverse=True, return_counts=True, dim=dim
    )
    warn_if_batch_coupled(x, None if dim is None else (dim,), "torch.unique")
    if _watching():
        _kinks.report_unlocated(x)  # the set changes where two entries meet
    flat = inverse.flatten()
    positions = torch.arange(flat.numel(), device=flat.device)
    first = torch.full_like(counts, flat.numel()).scatter_reduce(0, flat, positions, "amin")
    if dim is None:
        series = _series(x).flatten(2)[..., first]
    else:
        series = _series(x).index_select(dim % x.primal.dim() + 2, first)
    out = Jet(values, series, x.order)
    extra = ([inverse] if return_inverse else []) + ([counts] if return_counts else [])
    return (out, *extra) if extra else out
