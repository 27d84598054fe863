"""Taylor rules of writes: ``x[i] = v``, ``index_put``, ``index_fill``, ``index_copy``,
``index_add``, ``scatter``, ``scatter_add``, ``scatter_reduce`` (sum, mean), ``masked_scatter``
and the ``*_scatter`` family.

A write is linear in the tensor written into and the values written: every coefficient is
written the same way (through ``torch.vmap``, so that indices keep their meaning in the model's
layout), and a value that does not depend on the input writes zeros into the series. In-place
forms (``x.index_put_(...)``, ``x[i] = v``) change the jet ``x`` itself; its views and the jet
it is a view of are then out of date (:meth:`hope_attr.Jet.assign`). A plain tensor cannot hold
a series: writing a jet into one in place is refused, with the out-of-place way to write it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import register_rule
from hope_attr.rules.checks import refusal


def written(fn: Callable[[Tensor, object], Tensor], target: object, value: object) -> Jet:
    """``fn(target, value)`` for a write ``fn`` that is linear in ``(target, value)`` jointly.

    Args:
        fn: the write, on plain tensors (``lambda t, v: t.index_fill(1, index, v)``).
        target: the tensor written into (a jet or a constant).
        value: what is written (a jet, a tensor or a number).

    Returns:
        The jet of the result: a constant part (target or value) enters its primal only.

    Example:
        >>> import torch
        >>> import hope_attr
        >>> from hope_attr.rules.indexing import written
        >>> x = hope_attr.Jet(torch.ones(1, 3), torch.ones(1, 1, 1, 3), order=1)
        >>> y = written(lambda t, v: t.index_fill(1, torch.tensor([0]), v), x, 5.0)
        >>> y.primal.tolist(), y.series.flatten().tolist()
        ([[5.0, 1.0, 1.0]], [0.0, 1.0, 1.0])
    """
    jets = [v for v in (target, value) if isinstance(v, Jet)]
    order, directions = jets[0].order, jets[0].num_directions
    stored = max(j.num_stored for j in jets)
    primal = fn(ar.primal_of(target), ar.primal_of(value))

    def series(v: Jet) -> Tensor:  # (m * D, *shape): orders and directions as one vmap axis
        return v.full_series()[:stored].flatten(0, 1)

    base = ar.primal_of(target)
    # The target always gets a series (zeros for a constant): vmap writes into a batched tensor.
    target_series = (
        series(target)
        if isinstance(target, Jet)
        else base.new_zeros((stored * directions, *base.shape))
    )
    if isinstance(value, Jet):
        out = torch.vmap(fn)(target_series, series(value))
    else:
        zero = torch.zeros_like(value) if isinstance(value, Tensor) else 0.0
        out = torch.vmap(lambda t: fn(t, zero))(target_series)
    return Jet(primal, out.unflatten(0, (stored, directions)), order)


def _assigned(index: object) -> Callable[[Tensor, object], Tensor]:
    def write(t: Tensor, v: object) -> Tensor:
        t = t.clone()
        t[index] = v
        return t

    return write


@register_rule(torch.Tensor.__setitem__)
def _setitem(target: object, index: object, value: object) -> None:
    index = ar.replace_jets(index)  # an index computed from the input is read at the primal
    if not isinstance(target, Jet):
        raise refusal(
            "out[...] = value",
            "the value depends on the input and `out` does not, and a plain tensor cannot hold "
            "a Taylor series",
            "Build `out` from the input instead (out = h * 0 in place of torch.zeros_like(h)), "
            "or write it out of place: torch.cat, torch.where or out = out.index_put(...).",
        )
    target.assign(written(_assigned(index), target, value))


@register_rule(torch.index_put, torch.Tensor.index_put)
def _index_put(x: object, indices: tuple, values: object, accumulate: bool = False) -> Jet:
    indices = ar.replace_jets(indices)
    return written(lambda t, v: torch.index_put(t, indices, v, accumulate), x, values)


@register_rule(torch.index_fill, torch.Tensor.index_fill)
def _index_fill(x: object, dim: int, index: Tensor, value: object) -> Jet:
    return written(lambda t, v: torch.index_fill(t, dim, index, v), x, value)


@register_rule(torch.index_copy, torch.Tensor.index_copy)
def _index_copy(x: object, dim: int, index: Tensor, source: object) -> Jet:
    return written(lambda t, v: torch.index_copy(t, dim, index, v), x, source)


@register_rule(torch.index_add, torch.Tensor.index_add)
def _index_add(x: object, dim: int, index: Tensor, source: object, *, alpha: float = 1) -> Jet:
    return written(lambda t, v: torch.index_add(t, dim, index, v, alpha=alpha), x, source)


@register_rule(torch.masked_scatter, torch.Tensor.masked_scatter)
def _masked_scatter(x: object, mask: Tensor, source: object) -> Jet:
    return written(lambda t, v: torch.masked_scatter(t, mask, v), x, source)


@register_rule(torch.scatter, torch.Tensor.scatter)
def _scatter(
    x: object, dim: int, index: Tensor, src: object = None, value: object = None, *,
    reduce: str | None = None,
) -> Jet:  # fmt: skip
    source = src if src is not None else value
    if reduce not in (None, "add"):
        raise refusal(
            f"torch.scatter(..., reduce={reduce!r})",
            "a product of scattered entries is not a linear write (its series would need the "
            "products' Cauchy sums per target entry)",
            "Use reduce='add', or torch.scatter_reduce with 'sum' or 'mean'.",
        )
    kwargs = {} if reduce is None else {"reduce": reduce}
    return written(lambda t, v: torch.scatter(t, dim, index, v, **kwargs), x, source)


@register_rule(torch.scatter_add, torch.Tensor.scatter_add)
def _scatter_add(x: object, dim: int, index: Tensor, src: object) -> Jet:
    return written(lambda t, v: torch.scatter_add(t, dim, index, v), x, src)


@register_rule(torch.scatter_reduce, torch.Tensor.scatter_reduce)
def _scatter_reduce(
    x: object, dim: int, index: Tensor, src: object, reduce: str, *, include_self: bool = True
) -> Jet:
    if reduce not in ("sum", "mean"):
        raise refusal(
            f"torch.scatter_reduce(..., reduce={reduce!r})",
            "only its 'sum' and 'mean' are linear writes",
            "For 'amax'/'amin' select on the primal (torch.gather with indices from "
            "scatter_reduce of the plain values), or use 'sum'/'mean'.",
        )
    return written(
        lambda t, v: torch.scatter_reduce(t, dim, index, v, reduce, include_self=include_self),
        x, src,
    )  # fmt: skip


@register_rule(torch.select_scatter)
def _select_scatter(x: object, src: object, dim: int, index: int) -> Jet:
    return written(lambda t, v: torch.select_scatter(t, v, dim, index), x, src)


@register_rule(torch.slice_scatter)
def _slice_scatter(
    x: object, src: object, dim: int = 0, start: int | None = None, end: int | None = None,
    step: int = 1,
) -> Jet:  # fmt: skip
    return written(lambda t, v: torch.slice_scatter(t, v, dim, start, end, step), x, src)


@register_rule(torch.diagonal_scatter)
def _diagonal_scatter(x: object, src: object, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Jet:
    return written(lambda t, v: torch.diagonal_scatter(t, v, offset, dim1, dim2), x, src)
