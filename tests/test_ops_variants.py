"""Argument variants of the rule families (selections, reductions, writes, norms and distances,
functions, Fourier transforms, recurrent cells, sampling) that a real model uses: keyword forms
and defaults, negative and tuple dims, ties, exact zeros, NaN and infinite entries, duplicate and
negative indices, reduction modes, batch-1 series against batch-B constants, series that hold
only the first order, float32 jets against float64 constants.

tests/test_rule_properties.py runs every rule once with the first argument list that
tests/_op_calls.find_call finds; this file runs the variants. Every case is compared with an
independent reference: nested ``torch.func.jvp`` in float64 (tests/oracle.py), with the function
written out in elementary operations where PyTorch's own forward-mode formula is missing or wrong
(``cdist``, ``glu``, ``prod``/``cumprod`` at an exact zero, ``grid_sample``), or autograd's
gradient where the question is a convention at a tie or a kink. The review of issue 29 found nine
variants wrong; each test of this file that names a rule bug guards its fix.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hope_attr
from hope_attr.rules.checks import BatchCouplingWarning
from tests.oracle import (
    ComposedReference,
    _directional,
    relative_error,
    unmixed_reference,
    unmixed_reference_autograd,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ORDER = 3
TOLERANCE = 1e-10
Case = Callable[[Tensor], Tensor]


def _weights(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


W = _weights(4, 6, seed=3)
X = _weights(2, 4, seed=0)  # the expansion point of every case
C6 = _weights(2, 6, seed=7)  # a batch-B constant
INDEX = torch.tensor([[0, 0, 3], [1, 1, 1]])  # duplicate targets


def h(t: Tensor) -> Tensor:
    """``(B, 6)``, every entry curved (a batch-B series)."""
    return torch.tanh(t @ W)


def g(t: Tensor) -> Tensor:
    """``(B, 2, 3)``."""
    return torch.sin(t @ W).reshape(-1, 2, 3) + 0.3


def _moved_zeros(t: Tensor, k: int) -> Tensor:
    """``k`` entries that are exactly 0 at ``X`` and move with the input, then ``h``."""
    return torch.cat([t[:, :k] - X[:, :k], h(t)], 1)


def _chain(y: Tensor) -> Tensor:
    """The product over axis 1 as a chain of multiplications (nested jvp of ``torch.prod`` is
    wrong at an exact zero from order 2)."""
    out = y[:, 0]
    for i in range(1, y.shape[1]):
        out = out * y[:, i]
    return out


def _running_chain(y: Tensor) -> Tensor:
    running = [y[:, 0]]
    for i in range(1, y.shape[1]):
        running.append(running[-1] * y[:, i])
    return torch.stack(running, 1)


def _assert_close(actual: Tensor, expected: Tensor, tolerance: float = TOLERANCE) -> None:
    """``relative_error`` within ``tolerance``, and NaN exactly where the reference has NaN
    (``relative_error`` alone reads a NaN result as error 0)."""
    assert actual.shape == expected.shape
    assert torch.equal(actual.isnan(), expected.isnan())
    assert relative_error(actual.nan_to_num(), expected.nan_to_num()) <= tolerance


def _assert_exact(f: Case, reference: Case | None = None, x: Tensor = X, order: int = ORDER):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchCouplingWarning)
        actual = hope_attr.unmixed_derivatives(f, x, order)
    with ComposedReference():
        expected = unmixed_reference(reference or f, x, order)
    _assert_close(actual, expected)


def _check_table(table: dict[str, object], name: str) -> None:
    entry = table[name]
    f, reference = entry if isinstance(entry, tuple) else (entry, None)
    _assert_exact(f, reference)


# --------------------------------------------------------------------------- selections
SELECTIONS: dict[str, object] = {
    "max(dim=-1, keepdim=True)": lambda t: torch.max(h(t), dim=-1, keepdim=True).values,
    "max(1, False) positional": lambda t: h(t).max(1, False)[0],
    "min(dim=1)": lambda t: h(t).min(dim=1).values,
    "amax(dim=None) of one example": lambda t: torch.amax(h(t)[:1], dim=None) * t,
    "amax(-1, True)": lambda t: torch.amax(g(t), -1, True),
    "amax((-1, -2))": lambda t: torch.amax(g(t), (-1, -2)),
    "amin([1, 2])": lambda t: torch.amin(g(t), [1, 2]),
    "aminmax() of one example": lambda t: (lambda r: r.min * r.max)(torch.aminmax(h(t)[:1])) * t,
    "aminmax(dim=-1, keepdim=True)": lambda t: sum(torch.aminmax(g(t), dim=-1, keepdim=True)),
    "topk(largest=False, sorted=False)": lambda t: torch.topk(h(t), 3, 1, False, False).values,
    "topk(k=2, dim=-1)": lambda t: h(t).topk(k=2, dim=-1).values,
    "topk over axis 1 of 3-d": lambda t: g(t).topk(1, 1).values,
    "sort(dim=1, descending=True)": lambda t: torch.sort(h(t), dim=1, descending=True).values,
    "sort(stable=True) default dim": lambda t: torch.sort(h(t), stable=True).values,
    "sort(-2) of 3-d": lambda t: torch.sort(g(t), -2).values,
    "gather with argsort": lambda t: torch.gather(h(t), 1, torch.argsort(h(t), 1)),
    "median() of one example": lambda t: h(t)[:1].median() * t,
    "median(dim=-1, keepdim=True)": lambda t: h(t).median(dim=-1, keepdim=True).values,
    "nanmedian() of one example": lambda t: h(t)[:1].nanmedian() * t,
    "kthvalue(k=3, dim=-1, keepdim=True)": lambda t: torch.kthvalue(h(t), 3, -1, True)[0],
    "cummax(dim=-1) of 3-d": lambda t: torch.cummax(g(t), dim=-1).values,
    "cummin(dim=1)": lambda t: g(t).cummin(dim=1)[0],
    "msort of a 3-d tensor moved": lambda t: torch.msort(g(t).transpose(0, 1)).transpose(0, 1),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_selection_variants_match_nested_jvp(name: str) -> None:
    _check_table(SELECTIONS, name)


TIED = torch.tensor([[0.5, -1.0, 0.5, 0.2, 0.5, -1.0]], dtype=torch.float64)
# Each reduction at a point with tied entries: its first derivatives must be autograd's gradient
# (a reduction that returns indices passes the slope to that index, one without shares it).
TIES: dict[str, Case] = {
    "max()": lambda v: v.max().reshape(1, 1),
    "min()": lambda v: v.min().reshape(1, 1),
    "amax(1)": lambda v: v.amax(1, keepdim=True),
    "amin(1)": lambda v: v.amin(1, keepdim=True),
    "aminmax().max": lambda v: torch.aminmax(v).max.reshape(1, 1),
    "aminmax(dim=1).min": lambda v: torch.aminmax(v, dim=1).min.reshape(1, 1),
    "max(1)": lambda v: v.max(1, keepdim=True).values,
    "min(1)": lambda v: v.min(1, keepdim=True).values,
    "median() (tied median)": lambda v: v[:, :5].median().reshape(1, 1),
    "nanmedian()": lambda v: v.nanmedian().reshape(1, 1),
    "median(1)": lambda v: v.median(1, keepdim=True).values,
    "kthvalue(2)": lambda v: v.kthvalue(2, 1, keepdim=True).values,
    "kthvalue(4)": lambda v: v.kthvalue(4, 1, keepdim=True).values,
    "topk(2)": lambda v: v.topk(2, 1).values,
    "topk(2, largest=False)": lambda v: v.topk(2, 1, largest=False).values,
    "topk(2, sorted=False)": lambda v: v.topk(2, 1, sorted=False).values,
    "sort": lambda v: v.sort(1).values,
    "sort(stable=True)": lambda v: v.sort(dim=1, stable=True).values,
    "sort(descending=True)": lambda v: v.sort(1, descending=True).values,
    "cummax": lambda v: v.cummax(1).values,
    "cummin": lambda v: v.cummin(1).values,
    "vector_norm(inf)": lambda v: torch.linalg.vector_norm(v, math.inf, 1, keepdim=True),
    "vector_norm(-inf)": lambda v: torch.linalg.vector_norm(v, -math.inf, 1, keepdim=True),
    "maximum(v, flip(v))": lambda v: torch.maximum(v, v.flip(1)),
    "fmax(v, flip(v))": lambda v: torch.fmax(v, v.flip(1)),
    "clamp with a tensor bound": lambda v: torch.clamp(v, torch.full((6,), 0.5, dtype=v.dtype)),
}


def _autograd_jacobian(f: Case, x: Tensor) -> Tensor:
    """``(B, O, I)`` by reverse mode (the examples are independent: one pass per output)."""
    v = x.clone().requires_grad_(True)
    out = f(v).reshape(x.shape[0], -1)
    rows = []
    for o in range(out.shape[1]):
        (grad,) = torch.autograd.grad(out[:, o].sum(), v, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(v) if grad is None else grad)  # not used: a constant
    return torch.stack(rows, 1).flatten(2)


@pytest.mark.parametrize("name", list(TIES))
def test_ties_take_autograds_slope(name: str) -> None:
    expected = _autograd_jacobian(TIES[name], TIED)
    actual = hope_attr.unmixed_derivatives(TIES[name], TIED, 1)[0].reshape(expected.shape)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- reductions
def _with_minus_inf(t: Tensor) -> Tensor:
    return h(t).masked_fill(torch.tensor([True, False, False, True, False, False]), -math.inf)


REDUCTIONS: dict[str, object] = {
    "sum(dtype=float64) of one example": lambda t: h(t)[:1].sum(dtype=torch.float64) * t,
    "sum(axis=(1, 2))": lambda t: torch.sum(g(t), axis=(1, 2)),
    "sum(-1, keepdim=True)": lambda t: g(t).sum(-1, keepdim=True),
    "mean([-1, 1])": lambda t: torch.mean(g(t), [-1, 1]),
    "cumsum(dim=-1, dtype=)": lambda t: torch.cumsum(g(t), dim=-1, dtype=torch.float64),
    "nansum() of one example": lambda t: torch.nansum(h(t)[:1]) * t,
    "nansum(dim=(1, 2), keepdim=True)": lambda t: g(t).nansum(dim=(1, 2), keepdim=True),
    "nansum and nanmean over NaN entries": lambda t: (
        torch.nansum(torch.cat([h(t), torch.full_like(t[:, :1], math.nan)], 1), 1)
        * torch.nanmean(torch.cat([torch.log(h(t)[:, :2] - 5), h(t)], 1), -1)
    ),
    "prod() of one example": lambda t: torch.prod(h(t)[:1]) * t,
    "prod(-1, keepdim=True)": lambda t: torch.prod(g(t), -1, keepdim=True),
    "prod(1, dtype=)": lambda t: torch.prod(h(t), 1, dtype=torch.float64),
    "prod with one exact zero": (lambda t: _moved_zeros(t, 1).prod(1),
                                 lambda t: _chain(_moved_zeros(t, 1))),
    "prod with two exact zeros": (lambda t: _moved_zeros(t, 2).prod(1),
                                  lambda t: _chain(_moved_zeros(t, 2))),
    "cumprod with one exact zero": (lambda t: torch.cumprod(_moved_zeros(t, 1), 1),
                                    lambda t: _running_chain(_moved_zeros(t, 1))),
    "cumprod with two exact zeros": (lambda t: _moved_zeros(t, 2).cumprod(-1),
                                     lambda t: _running_chain(_moved_zeros(t, 2))),
    "logsumexp with -inf entries": lambda t: torch.logsumexp(_with_minus_inf(t), -1),
    "logsumexp((1, 2))": lambda t: torch.logsumexp(g(t), (1, 2)),
    "logcumsumexp after -inf (finite part)": (
        lambda t: torch.logcumsumexp(_with_minus_inf(t), 1)[:, 1:],
        lambda t: torch.stack(
            [torch.logsumexp(_with_minus_inf(t)[:, : i + 1], 1) for i in range(1, 6)], 1
        ),
    ),
    "var(1, correction=0)": lambda t: torch.var(h(t), 1, correction=0),
    "var(dim=1, correction=2, keepdim=True)": lambda t: torch.var(h(t), dim=1, correction=2,
                                                                 keepdim=True),
    "var(1, unbiased=False)": lambda t: torch.var(h(t), 1, unbiased=False),
    "var(False) of one example": lambda t: h(t)[:1].var(False) * t,
    "var of one element, correction=0": lambda t: h(t) + torch.var(h(t)[:, :1], 1, False, True),
    "std(1, correction=0)": lambda t: torch.std(h(t), 1, correction=0),
    "std([1, 2], keepdim=True)": lambda t: torch.std(g(t), [1, 2], keepdim=True),
    "std_mean(-1, correction=0)": lambda t: torch.mul(*torch.std_mean(g(t), -1, correction=0)),
    "var_mean(-1, False)": lambda t: torch.mul(*torch.var_mean(g(t), -1, False)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction_variants_match_nested_jvp(name: str) -> None:
    _check_table(REDUCTIONS, name)


# --------------------------------------------------------------------------- writes
def _written(write: Callable[[Tensor, Tensor], None], base: Case) -> Case:
    def f(t: Tensor) -> Tensor:
        y = base(t)
        write(y, t)
        return y

    return f


def _set(index: object, value: Case) -> Callable[[Tensor, Tensor], None]:
    return lambda y, t: y.__setitem__(index, value(t))


MASK = torch.tensor(
    [[True, False, True, False, True, True], [False, True, True, False, False, True]]
)
WRITES: dict[str, object] = {
    # `t * 1.0` keeps the input's batch-1 series; h(t) has a batch-B one.
    "setitem a batch-B value into a batch-1 target": (
        _written(_set((slice(None), 0), lambda t: h(t)[:, 0]), lambda t: t * 1.0),
        lambda t: torch.cat([h(t)[:, :1], t[:, 1:]], 1),
    ),
    "setitem a row from another example": (
        _written(_set(0, lambda t: h(t)[1, :4]), lambda t: t * 1.0),
        lambda t: torch.cat([h(t)[1:, :4], t[1:]], 0),
    ),
    "setitem constants into a batch-1 target": (
        _written(_set((slice(None), slice(1, 3)), lambda t: 0.0), lambda t: t * 1.0),
        lambda t: torch.cat([t[:, :1], torch.zeros_like(t[:, 1:3]), t[:, 3:]], 1),
    ),
    "setitem with a boolean mask": _written(
        _set(X > 0, lambda t: (torch.sin(t) * h(t)[:, :4])[X > 0]), lambda t: t.clone()
    ),
    "setitem with advanced indices": _written(
        _set(([0, 1], [2, 3]), lambda t: h(t)[:, 0] ** 2), lambda t: h(t) * 1.0
    ),
    "setitem with a boolean mask on axis 1": _written(
        _set((slice(None), MASK[0]), lambda t: t[:, :4] ** 2), lambda t: h(t) * 1.0
    ),
    "setitem negative indices and a broadcast column": _written(
        lambda y, t: (y.__setitem__((slice(None), -1), t[:, -1] * 3),
                      y.__setitem__((Ellipsis, slice(-3, -1)), t[:, :1] ** 2)),
        lambda t: h(t) * 1.0,
    ),
    "index_put(accumulate=True) duplicates": lambda t: torch.index_put(
        h(t), (torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 3, 3])),
        h(t)[:, :2].reshape(-1), accumulate=True),
    "index_put(accumulate=True) into a batch-1 target": lambda t: (t * 1.0).index_put(
        (torch.tensor([0, 0, 1]), torch.tensor([1, 1, 3])), h(t)[:, :3].sum(0), accumulate=True),
    "index_put_ negative indices": lambda t: h(t).clone().index_put_(
        (torch.tensor([-1]), torch.tensor([-2])), t[0, 0] * 3, accumulate=True),
    "index_put with a boolean index": lambda t: h(t).index_put(
        (MASK,), torch.sin(t).repeat(1, 2)[:, :6][MASK]),
    "index_add(alpha=-2.5) of a batch-1 source": lambda t: torch.index_add(
        h(t), 1, torch.tensor([0, 0, 5, 2]), t, alpha=-2.5),
    "index_add into a batch-1 target": lambda t: torch.index_add(
        t * 1.0, 1, torch.tensor([3, 3]), h(t)[:, :2], alpha=2),
    "index_add over axis 0": lambda t: torch.index_add(h(t), 0, torch.tensor([1, 1]), h(t) ** 2),
    "index_copy of a batch-1 source": lambda t: h(t).index_copy(1, torch.tensor([0, 5, 2, 1]), t),
    "index_copy into a batch-1 target": lambda t: (t * 2).index_copy(
        1, torch.tensor([3, 0]), h(t)[:, :2]),
    "index_fill(-1, ...)": lambda t: torch.index_fill(h(t), -1, torch.tensor([0, 3]), 0.5),
    "index_fill with a 0-d tensor": lambda t: torch.index_fill(
        h(t), 1, torch.tensor([2]), torch.tensor(3.0, dtype=t.dtype)),
    "masked_scatter of a batch-1 source": lambda t: h(t).masked_scatter(MASK, t.repeat(1, 2)),
    "masked_scatter into a batch-1 target, broadcast mask": lambda t: (t * 1.0).masked_scatter(
        torch.tensor([True, False, True, False]), h(t)),
    "scatter of a batch-1 source": lambda t: h(t).scatter(1, INDEX[:, :2], t[:, :2] * 2),
    "scatter into a batch-1 target": lambda t: (t * 1.0).scatter(
        1, torch.tensor([[0, 2], [3, 1]]), h(t)[:, :2]),
    "scatter(value=0.5)": lambda t: torch.scatter(h(t), 1, INDEX, value=0.5),
    "scatter(-1, ...)": lambda t: torch.scatter(h(t), -1, INDEX, h(t)[:, 2:5] ** 2),
    "scatter(reduce='add') of a number": (
        lambda t: torch.scatter(h(t), 1, INDEX, 0.5, reduce="add"),
        lambda t: h(t).scatter_add(1, INDEX, torch.full((2, 3), 0.5, dtype=t.dtype)),
    ),
    "scatter(reduce='add') of a batch-1 source": (
        lambda t: torch.scatter(h(t), 1, INDEX, t[:, :3] ** 2, reduce="add"),
        lambda t: h(t).scatter_add(1, INDEX, t[:, :3] ** 2),
    ),
    "scatter_add of a batch-1 source": lambda t: h(t).scatter_add(
        1, torch.tensor([[0, 0, 3, 5], [1, 1, 1, 1]]), t),
    "scatter_reduce into a batch-1 target": lambda t: (t * 1.0).scatter_reduce(
        1, INDEX, h(t)[:, :3], "mean"),
    "select_scatter into a batch-1 target": lambda t: torch.select_scatter(
        t * 1.0, h(t)[:, 0], 1, -1),
    "slice_scatter into a batch-1 target": lambda t: torch.slice_scatter(
        t * 1.0, h(t)[:, :2], 1, 1, 3),
    "diagonal_scatter into a batch-1 target": lambda t: torch.diagonal_scatter(
        (t * 1.0).reshape(2, 2, 2), h(t)[:, :2], 0, 1, 2).flatten(1),
    "take_along_dim without dim, one example": lambda t: torch.take_along_dim(
        h(t)[:1], torch.tensor([5, 0, 1])) * t[:, :1],
    "take with negative indices": lambda t: torch.take(
        h(t)[:1], torch.tensor([[5, 0], [-1, 2]])).reshape(1, 4) * t,
    "indexing with negative long indices": lambda t: h(t)[:, torch.tensor([-1, 0, -1])],
}  # fmt: skip
for _mode in ("sum", "mean"):
    for _include in (True, False):
        WRITES[f"scatter_reduce('{_mode}', include_self={_include})"] = (
            lambda t, m=_mode, i=_include: h(t).scatter_reduce(
                1, INDEX, torch.sin(t[:, :3]) + 1, m, include_self=i
            )
        )


@pytest.mark.parametrize("name", list(WRITES))
def test_write_variants_match_nested_jvp(name: str) -> None:
    _check_table(WRITES, name)


@pytest.mark.parametrize("mode", ["prod", "amax", "amin"])
@pytest.mark.parametrize("include_self", [True, False])
def test_nonlinear_scatter_reduce_modes_are_refused(mode: str, include_self: bool) -> None:
    with pytest.raises(hope_attr.UnsupportedOperationError, match=f"reduce='{mode}'"):
        hope_attr.unmixed_derivatives(
            lambda t: h(t).scatter_reduce(1, INDEX, h(t)[:, :3], mode, include_self=include_self),
            X, 1,
        )  # fmt: skip


# --------------------------------------------------------------------------- norms, distances
def _cdist_composed(a: Tensor, b: Tensor, p: float = 2.0, **kwargs: object) -> Tensor:
    """``torch.cdist`` from elementary ops (it has no forward-mode formula)."""
    difference = a.unsqueeze(-2) - b.unsqueeze(-3)
    if p == 0:
        return (difference != 0).to(a.dtype).sum(-1)
    return torch.linalg.vector_norm(difference, p, -1)


def _cdist_case(p: float, **kwargs: object) -> tuple[Case, Case]:
    return (
        lambda t: torch.cdist(g(t), torch.cos(g(t)), p=p, **kwargs).flatten(1),
        lambda t: _cdist_composed(g(t), torch.cos(g(t)), p).flatten(1),
    )


NORMS: dict[str, object] = {
    **{f"vector_norm(ord={o})": (lambda t, o=o: torch.linalg.vector_norm(h(t), o, dim=1))
       for o in (0, 1, 2, 3, 0.5, -1, -2, math.inf, -math.inf)},
    "vector_norm(2, dim=(1, 2), keepdim=True)": lambda t: torch.linalg.vector_norm(
        g(t), 2, dim=(1, 2), keepdim=True),
    "vector_norm(ord=3) with an exact zero entry": lambda t: torch.linalg.vector_norm(
        _moved_zeros(t, 1), 3, dim=1),
    "vector_norm(ord=1) with an exact zero entry": lambda t: torch.linalg.vector_norm(
        _moved_zeros(t, 1), 1, dim=1),
    "norm(p=inf, dim=1)": lambda t: h(t).norm(p=math.inf, dim=1),
    "Tensor.norm(dim=-1, keepdim=True)": lambda t: h(t).norm(dim=-1, keepdim=True),
    "linalg.norm(ord=-inf, dim=-1)": lambda t: torch.linalg.norm(h(t), -math.inf, dim=-1),
    "linalg.norm(ord=0, dim=-1) (a count)": lambda t: torch.linalg.norm(h(t), 0, -1, True) * h(t),
    "linalg.norm of 2-d, ord=1 (a matrix norm)": lambda t: torch.linalg.norm(g(t)[0], 1) * t,
    "linalg.norm of 2-d, ord=inf (a matrix norm)": lambda t: torch.linalg.norm(g(t)[0], math.inf)
    * t,
    "linalg.norm(ord=-inf, dim=(-2, -1), keepdim=True)": lambda t: torch.linalg.norm(
        g(t), -math.inf, dim=(-2, -1), keepdim=True),
    "matrix_norm(ord=1, dim=(2, 1))": lambda t: torch.linalg.matrix_norm(g(t), 1, dim=(2, 1)),
    "matrix_norm(ord=-1)": lambda t: torch.linalg.matrix_norm(g(t), -1),
    "F.normalize(p=1)": lambda t: F.normalize(h(t), p=1, dim=1),
    "F.normalize of an exact zero column": lambda t: F.normalize(_moved_zeros(t, 2), dim=0),
    "cosine_similarity default dim": lambda t: F.cosine_similarity(h(t), torch.cos(h(t))),
    "cosine_similarity(dim=-1) of 3-d": lambda t: F.cosine_similarity(g(t), g(t) ** 2, dim=-1),
    "cosine_similarity with a broadcast constant": lambda t: F.cosine_similarity(
        g(t), torch.tensor([1.0, 2.0, -1.0], dtype=t.dtype), dim=-1),
    "cosine_similarity with a batch-1 constant": lambda t: F.cosine_similarity(
        h(t), torch.linspace(-1, 1, 6, dtype=t.dtype)[None]),
    "cosine_similarity with a zero constant": lambda t: F.cosine_similarity(
        h(t), torch.zeros(2, 6, dtype=t.dtype)) + h(t)[:, 0],
    "cosine_similarity of an exact zero vector": lambda t: F.cosine_similarity(
        (t[:, :2] - X[:, :2]).repeat(1, 3), h(t)),
    "cosine_similarity of 1-d, dim=0": lambda t: F.cosine_similarity(h(t)[0], h(t)[1], dim=0) * t,
    "torch.cosine_similarity positional dim and eps": lambda t: torch.cosine_similarity(
        g(t), g(t).flip(-1), 2, 1e-6),
    **{f"cdist(p={p})": _cdist_case(p) for p in (0.0, 0.5, 1.0, 2.0, 3.0, math.inf)},
    "cdist(compute_mode='use_mm_for_euclid_dist')": _cdist_case(
        2.0, compute_mode="use_mm_for_euclid_dist"),
    "cdist(compute_mode='donot_use_mm_for_euclid_dist')": _cdist_case(
        2.0, compute_mode="donot_use_mm_for_euclid_dist"),
    "cdist to a constant": (
        lambda t: torch.cdist(g(t), torch.ones(1, 4, 3, dtype=t.dtype)).flatten(1),
        lambda t: _cdist_composed(g(t), torch.ones(1, 4, 3, dtype=t.dtype)).flatten(1)),
    "cdist from a constant": (
        lambda t: torch.cdist(torch.ones(2, 4, 3, dtype=t.dtype), g(t), p=1).flatten(1),
        lambda t: _cdist_composed(torch.ones(2, 4, 3, dtype=t.dtype), g(t), 1).flatten(1)),
    "cdist of a set with itself (zero diagonal)": (
        lambda t: torch.cdist(g(t), g(t)).flatten(1),
        lambda t: torch.where(torch.eye(2, dtype=torch.bool), 0.0,
                              _cdist_composed(g(t), g(t))).flatten(1)),
    "pairwise_distance(p=1, keepdim=True)": lambda t: F.pairwise_distance(
        h(t), torch.cos(h(t)), p=1, keepdim=True),
}  # fmt: skip


@pytest.mark.parametrize("name", list(NORMS))
def test_norm_and_distance_variants_match_nested_jvp(name: str) -> None:
    _check_table(NORMS, name)


@pytest.mark.parametrize("ord_", [0, 1, 2, 3, math.inf, -math.inf])
def test_a_norm_at_exactly_zero_takes_autograds_slope(ord_: float) -> None:
    """A vector that is 0 at the expansion point: the cone's slope is PyTorch's 0."""
    f = lambda t: torch.linalg.vector_norm(t - X, ord_, 1, keepdim=True)  # noqa: E731
    actual = hope_attr.unmixed_derivatives(f, X, 2)
    torch.testing.assert_close(actual[0], _autograd_jacobian(f, X), rtol=0, atol=0)
    assert (actual[1] == 0).all()


def test_cosine_similarity_below_eps_matches_pytorchs_backward() -> None:
    """Inside the clamp (norm < eps) PyTorch's backward keeps the norm's own derivatives (the clamp
    runs without autograd); nested reverse mode of F.cosine_similarity is the reference. (Nested
    forward mode differs there: its clamp_min_ is not under NoGradGuard for forward AD.)"""
    f = lambda t: F.cosine_similarity(h(t) * 1e-3, torch.cos(h(t)), eps=1.0).unsqueeze(1)  # noqa: E731
    x = X[:1]
    actual = hope_attr.unmixed_derivatives(f, x, 2)
    _assert_close(actual, unmixed_reference_autograd(f, x, 2))


# --------------------------------------------------------------------------- functions
FUNCTIONS: dict[str, object] = {
    "nan_to_num of NaN from log (finite series)": lambda t: torch.nan_to_num(
        torch.cat([h(t), torch.log(h(t)[:, :2] - 5)], 1)) * t.sum(1, keepdim=True),
    "nan_to_num(nan=, posinf=, neginf=) of constant entries": lambda t: torch.nan_to_num(
        h(t) + torch.tensor([math.nan, 0, 0, math.inf, 0, -math.inf], dtype=t.dtype),
        nan=0.5, posinf=3.0, neginf=-2.0),
    "atan2 by a constant": lambda t: torch.atan2(h(t), torch.tensor(0.3, dtype=t.dtype)),
    "atan2 of a constant": lambda t: torch.atan2(torch.tensor(0.3, dtype=t.dtype), h(t)),
    "lerp with a number weight": lambda t: torch.lerp(h(t), torch.cos(h(t)), 0.3),
    "lerp to a constant end": lambda t: torch.lerp(h(t), torch.ones(6, dtype=t.dtype), h(t) ** 2),
    "glu(dim=-1) of 3-d": (
        lambda t: F.glu(torch.cat([g(t), g(t) ** 2], -1), -1),
        lambda t: (lambda y: y[..., :3] * torch.sigmoid(y[..., 3:]))(torch.cat([g(t), g(t) ** 2],
                                                                              -1))),
    "prelu with one slope": lambda t: F.prelu(h(t), torch.tensor([0.2], dtype=t.dtype)),
    "prelu per channel of 3-d": lambda t: F.prelu(g(t), torch.tensor([0.2, -0.3], dtype=t.dtype)),
    "threshold(0.1, -2.0)": lambda t: F.threshold(h(t), 0.1, -2.0),
    "remainder by a number": lambda t: torch.remainder(h(t) * 3, 0.7),
    "fmod by a tensor": lambda t: torch.fmod(h(t) * 3, torch.full((6,), 0.7, dtype=t.dtype)),
    "remainder by a jet": lambda t: torch.remainder(torch.ones_like(h(t)) * 2, h(t) + 2),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_function_variants_match_nested_jvp(name: str) -> None:
    _check_table(FUNCTIONS, name)


# --------------------------------------------------------------------------- Fourier transforms
W8 = _weights(4, 8, seed=4)
FREQS = torch.polar(torch.ones(2, 1, dtype=torch.float64), torch.tensor([[0.3], [1.1]]).double())


def k(t: Tensor) -> Tensor:
    return torch.tanh(t @ W8)


def _real(z: Tensor) -> Tensor:
    return torch.view_as_real(z).flatten(1)


def _rotary(t: Tensor) -> Tensor:
    """Meta's Llama: (B, seq, heads, head_dim) as complex pairs, times exp(i theta)."""
    q = k(t).reshape(2, 2, 2, 2)
    rotated = torch.view_as_complex(q.reshape(*q.shape[:-1], -1, 2)) * FREQS[None, :, None, :]
    return torch.view_as_real(rotated).flatten(3).type_as(q).flatten(1)


SPECTRAL: dict[str, Case] = {
    **{f"fft(norm={n!r})": (lambda t, n=n: _real(torch.fft.fft(k(t), norm=n)))
       for n in (None, "forward", "ortho")},
    **{f"rfft(n={n}, norm={m!r})": (lambda t, n=n, m=m: _real(torch.fft.rfft(k(t), n, norm=m)))
       for n, m in ((5, "backward"), (12, "forward"), (None, "ortho"))},
    **{f"irfft(n={n}, norm={m!r})": (
        lambda t, n=n, m=m: torch.fft.irfft(torch.fft.rfft(k(t)) * (1 + 1j), n=n, norm=m))
       for n, m in ((None, "forward"), (5, "ortho"), (12, "backward"))},
    **{f"hfft(n={n}, norm={m!r})": (
        lambda t, n=n, m=m: torch.fft.hfft(torch.fft.ifft(k(t))[:, :5], n=n, norm=m))
       for n, m in ((None, "forward"), (12, "ortho"))},
    "ihfft(norm='ortho') then abs": lambda t: torch.fft.ihfft(k(t), norm="ortho").abs(),
    "ifft then .real": lambda t: torch.fft.ifft(k(t)).real,
    "fft2(s=(3, 5)) of 3-d": lambda t: _real(torch.fft.fft2(k(t).reshape(2, 2, 4), s=(3, 5))),
    "rfft2(dim=(-2, -1), norm='ortho')": lambda t: _real(
        torch.fft.rfft2(k(t).reshape(2, 2, 4), dim=(-2, -1), norm="ortho")),
    "irfft2(s=(2, 4))": lambda t: torch.fft.irfft2(
        torch.fft.rfft2(k(t).reshape(2, 2, 4)), s=(2, 4)).flatten(1),
    "fftn(s, dim) positional": lambda t: _real(torch.fft.fftn(k(t).reshape(2, 2, 4), (2, 4),
                                                              (1, 2))),
    "fftshift(dim=1)": lambda t: torch.fft.fftshift(k(t), dim=1),
    "fft of a complex jet": lambda t: _real(torch.fft.fft(torch.complex(k(t), k(t) ** 2))),
    "torch.complex with a constant imaginary part": lambda t: _real(
        torch.complex(k(t), torch.ones(8, dtype=torch.float64))),
    "rotary embedding (Llama, view_as_complex)": _rotary,
    "rotary on the input itself (batch-1 series)": lambda t: _real(
        torch.view_as_complex(t.reshape(2, 2, 2)) * FREQS[:, 0]) * k(t)[:, :4],
    "transpose of a complex jet": lambda t: _real(
        torch.fft.fft(k(t).reshape(2, 2, 4)).transpose(1, 2)),
    "abs of a complex jet at exactly zero": lambda t: torch.abs(torch.complex(t - X, t * 0)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SPECTRAL))
def test_spectral_variants_match_nested_jvp(name: str) -> None:
    _check_table(SPECTRAL, name)


# --------------------------------------------------------------------------- recurrent cells
with torch.random.fork_rng():  # seeded weights, without moving the session's generator
    torch.manual_seed(0)
    CELLS = {
        "LSTMCell": nn.LSTMCell(4, 3).double(),
        "LSTMCell(bias=False)": nn.LSTMCell(4, 3, bias=False).double(),
        "GRUCell": nn.GRUCell(4, 3).double(),
        "GRUCell(bias=False)": nn.GRUCell(4, 3, bias=False).double(),
        "RNNCell": nn.RNNCell(4, 3).double(),
        "RNNCell(nonlinearity='relu')": nn.RNNCell(4, 3, nonlinearity="relu").double(),
        "RNNCell(relu, bias=False)": nn.RNNCell(4, 3, bias=False, nonlinearity="relu").double(),
    }
STATE = _weights(2, 3, seed=12)


def _flat(result: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    return torch.cat(result, -1) if isinstance(result, tuple) else result


def _state(cell: nn.Module, kind: str, t: Tensor) -> object:
    """No state, a constant one, or one that depends on the input."""
    if kind == "none":
        return None
    h0, c0 = (STATE, STATE.flip(1)) if kind == "constant" else (torch.sin(t[:, :3]), t[:, 1:] ** 2)
    return (h0, c0) if isinstance(cell, nn.LSTMCell) else h0


@pytest.mark.parametrize("state", ["none", "constant", "jet"])
@pytest.mark.parametrize("name", list(CELLS))
def test_recurrent_cell_variants_match_nested_jvp(name: str, state: str) -> None:
    cell = CELLS[name]
    _assert_exact(lambda t: _flat(cell(torch.tanh(t), _state(cell, state, t))))


@pytest.mark.parametrize("name", list(CELLS))
def test_recurrent_cells_on_the_raw_input_and_unbatched(name: str) -> None:
    cell = CELLS[name]
    _assert_exact(lambda t: _flat(cell(t, cell(torch.sin(t)))))  # two steps, batch-1 series
    one = X[:1]
    _assert_exact(lambda t: _flat(cell(torch.tanh(t[0]))).unsqueeze(0) * t.sum(1, keepdim=True),
                  x=one)  # fmt: skip


# --------------------------------------------------------------------------- sampling
W18 = _weights(4, 18, seed=1)
THETA = torch.tensor([[[1.3, 0.2, 0.1], [-0.1, 1.2, -0.2]]], dtype=torch.float64)  # reaches out
IMAGE = _weights(2, 1, 3, 4, seed=2)
GRID = torch.tensor([[[[0.3, -0.2], [0.9, 0.95]]], [[[-0.7, 0.1], [1.3, 0.0]]]]).double()


def _reference_sample(image: Tensor, grid: Tensor, align: bool, padding: str) -> Tensor:
    """Bilinear sampling by tent weights ``(1 - |x - x_i|)(1 - |y - y_i|)`` and advanced
    indexing, without grid_sample (which has no forward-mode formula for its backward)."""
    height, width = image.shape[-2:]

    def pixel(coordinate: Tensor, size: int) -> Tensor:
        p = (coordinate + 1) / 2 * (size - 1) if align else ((coordinate + 1) * size - 1) / 2
        return p.clamp(0, size - 1) if padding == "border" else p

    x, y = pixel(grid[..., 0], width), pixel(grid[..., 1], height)
    x0, y0 = torch.floor(x), torch.floor(y)
    batch = torch.arange(image.shape[0]).reshape(-1, 1, 1)
    out = 0
    for ys in (y0, y0 + 1):
        for xs in (x0, x0 + 1):
            weight = (1 - (x - xs).abs()) * (1 - (y - ys).abs())
            inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
            rows, columns = ys.clamp(0, height - 1).long(), xs.clamp(0, width - 1).long()
            out = out + (weight * inside)[..., None] * image[batch, :, rows, columns]
    return out.permute(0, 3, 1, 2)


def _sampling(image: Case, grid: Case, align: bool | None, padding: str) -> tuple[Case, Case]:
    def model(sample: Callable[..., Tensor]) -> Case:
        return lambda t: sample(image(t), grid(t), bool(align), padding).flatten(1)

    return (
        model(lambda i, gr, a, p: F.grid_sample(i, gr, "bilinear", p, align)),
        model(_reference_sample),
    )


def _theta_grid(align: bool | None) -> Case:
    theta = lambda t: THETA + 0.3 * torch.sin(t[:, :3] @ W18[:3, :6]).reshape(-1, 2, 3)  # noqa: E731
    return lambda t: F.affine_grid(theta(t), [2, 2, 4, 5], align_corners=align)


def _image(t: Tensor) -> Tensor:
    return torch.tanh(t @ W18).reshape(-1, 2, 3, 3)


SAMPLING = {
    f"image and grid jets, align_corners={a}, {p}, grid beyond the border": _sampling(
        _image, _theta_grid(a), a, p)
    for a in (False, True) for p in ("zeros", "border")
}  # fmt: skip
SAMPLING |= {
    "align_corners=None": _sampling(_image, _theta_grid(None), None, "zeros"),
    "grid from the raw input (batch-1 series)": _sampling(
        lambda t: IMAGE, lambda t: (t * 0.6).reshape(2, 1, 2, 2), True, "border"),
    "grid from tanh(input), non-square image": _sampling(
        lambda t: IMAGE, lambda t: torch.tanh(t).reshape(2, 1, 2, 2) * 1.2, False, "zeros"),
    "image is the raw input (batch-1 series)": _sampling(
        lambda t: t.reshape(2, 1, 2, 2), lambda t: GRID, False, "zeros"),
    "affine_grid alone, align_corners=True": (
        lambda t: _theta_grid(True)(t).flatten(1), None),
    "affine_grid of a theta from the raw input": (
        lambda t: F.affine_grid(torch.cat([t, t[:, :2]], 1).reshape(2, 2, 3), [2, 1, 3, 4],
                                align_corners=False).flatten(1), None),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SAMPLING))
def test_sampling_variants_match_an_independent_sampler(name: str) -> None:
    _check_table(SAMPLING, name)


# --------------------------------------------------------------------------- jets directly
B = 3
XJ = _weights(B, 6, seed=5)
X3 = _weights(B, 4, 3, seed=6)
C3 = _weights(B, 5, 3, seed=7)
CJ = _weights(B, 6, seed=8)
DIRECTIONS = 2

# One op per family, applied to a jet whose series holds every order or only the first, and
# whose batch axis is B or a broadcast 1 (the input's own seed is batch-1).
JET_OPS: dict[str, tuple[Callable[[object], object], Callable[[Tensor], Tensor] | None]] = {
    "sort": (lambda a: torch.sort(a, 1).values, None),
    "max(dim)": (lambda a: a.max(1).values, None),
    "amax": (lambda a: a.amax(1), None),
    "topk": (lambda a: a.topk(2, 1).values, None),
    "median(dim)": (lambda a: a.median(1).values, None),
    "cummax": (lambda a: a.cummax(1).values, None),
    "prod": (lambda a: a.prod(1), None),
    "cumprod": (lambda a: a.cumprod(1), lambda a: _running_chain(a)),
    "logsumexp": (lambda a: a.logsumexp(1), None),
    "logcumsumexp": (lambda a: a.logcumsumexp(1), lambda a: torch.stack(
        [torch.logsumexp(a[:, : i + 1], 1) for i in range(a.shape[1])], 1)),
    "std(correction=0)": (lambda a: a.std(1, correction=0), None),
    "nanmean": (lambda a: a.nanmean(1), None),
    "vector_norm(3)": (lambda a: torch.linalg.vector_norm(a, 3, 1), None),
    "cosine_similarity to a batch-B constant": (lambda a: F.cosine_similarity(a, CJ), None),
    "rfft(norm='ortho')": (lambda a: torch.fft.rfft(a, norm="ortho"), None),
    "index_put(accumulate=True)": (lambda a: a.index_put(
        (torch.tensor([0, 0, 2]), torch.tensor([1, 1, 5])), CJ[0, :3], accumulate=True), None),
    "scatter_reduce('mean')": (lambda a: a.scatter_reduce(
        1, torch.tensor([[0, 0, 1]] * B), CJ[:, :3], "mean", include_self=False), None),
    "atan2 by a batch-B constant": (lambda a: torch.atan2(a, CJ), None),
    "cdist(p=3) to a batch-B constant": (
        lambda a: torch.cdist(a.reshape(B, 2, 3), C3, p=3.0),
        lambda a: _cdist_composed(a.reshape(B, 2, 3), C3, 3.0)),
    "gru_cell with a batch-B state": (lambda a: torch.gru_cell(
        a, CJ[:, :4], W18[:, :6].repeat(3, 1), W18[:, 6:10].repeat(3, 1)), None),
}  # fmt: skip


def _curve(primal: Tensor, series: Tensor, direction: int, t: Tensor) -> Tensor:
    return primal + sum(t ** (j + 1) * s[direction] for j, s in enumerate(series))


@pytest.mark.parametrize("batch", ["B", "broadcast 1"])
@pytest.mark.parametrize("stored", ["every order", "first order only"])
@pytest.mark.parametrize("name", list(JET_OPS))
def test_jet_series_layouts_match_nested_jvp(name: str, stored: str, batch: str) -> None:
    """``Jet(x, series, n)`` with ``series`` of shape ``(m, D, B|1, *S)``, ``m`` = n or 1: the
    result's series are the Taylor coefficients of ``t -> op(x0 + s_1 t + ...)``."""
    op, reference = JET_OPS[name]
    m = ORDER if stored == "every order" else 1
    shape = (m, DIRECTIONS, B if batch == "B" else 1, 6)
    series = 0.3 * torch.randn(
        shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchCouplingWarning)
        result = op(hope_attr.Jet(XJ, series, ORDER))
    actual = result.full_series()
    actual = torch.view_as_real(actual) if actual.is_complex() else actual
    t0, one = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for d in range(DIRECTIONS):

        def along(t: Tensor, d: int = d) -> Tensor:
            out = (reference or op)(_curve(XJ, series, d, t))
            return torch.view_as_real(out) if out.is_complex() else out

        for j in range(1, ORDER + 1):
            expected = _directional(along, j)(t0, one) / math.factorial(j)
            scale = max(expected.abs().max().item(), 1e-3)
            assert (actual[j - 1, d] - expected).abs().max().item() <= TOLERANCE * scale


# --------------------------------------------------------------------------- dtypes
C64 = _weights(2, 6, seed=7)
W32 = W.float()
DTYPES: dict[str, Case] = {
    "sort of a float32 jet times a float64 constant": lambda t: torch.sort(
        torch.tanh(t @ W32) * C64, 1).values,
    "cumprod": lambda t: (torch.tanh(t @ W32) + C64).cumprod(1),
    "cosine_similarity to a float64 constant": lambda t: F.cosine_similarity(
        torch.tanh(t @ W32), C64),
    "setitem of a float32 value into a float64 jet": _written(
        _set((slice(None), 0), lambda t: torch.tanh(t @ W32)[:, 1]),
        lambda t: torch.tanh(t @ W32) * C64),
    "logsumexp and var": lambda t: (torch.tanh(t @ W32) * C64).logsumexp(1, keepdim=True)
    * (torch.tanh(t @ W32) * C64).var(1, keepdim=True),
    "rotary with complex128 frequencies": lambda t: _real(
        torch.view_as_complex(torch.tanh(t @ W32).reshape(2, 3, 2))
        * torch.polar(torch.ones(3).double(), torch.tensor([0.1, 0.5, 1.0]).double())),
}  # fmt: skip


@pytest.mark.parametrize("name", list(DTYPES))
def test_float32_jets_with_float64_constants(name: str) -> None:
    """Promoted to float64 like the plain call; exact to float32's rounding of the input path."""
    x = X.float()
    actual = hope_attr.unmixed_derivatives(DTYPES[name], x, 2)
    assert actual.dtype == DTYPES[name](x).dtype == torch.float64
    _assert_close(actual, unmixed_reference(DTYPES[name], x, 2), tolerance=1e-5)


# --------------------------------------------------------------------------- the review (issue 29)
W6 = _weights(6, 6, seed=1)
ONE = _weights(1, 6, seed=2)  # one example, six features: D = 6 directions
SIX = torch.tensor([[True, False, True, False, False, True]])


SELECT_0D: dict[str, Callable[[Tensor], Case]] = {
    "where": lambda w: lambda t: torch.where(SIX, (t @ w).max(), t @ w),
    "masked_fill": lambda w: lambda t: (t @ w).masked_fill(SIX, (t @ w).min()),
    "clamp(max=)": lambda w: lambda t: torch.clamp(t @ w, max=(t @ w).mean()),
    "maximum": lambda w: lambda t: torch.maximum(t @ w, (t @ w).mean()),
    "atan2": lambda w: lambda t: torch.atan2(torch.tanh(t @ w), torch.tanh(t @ w).mean()),
    "where of two 0-d jets": lambda w: lambda t: torch.where(SIX, (t @ w).max(), (t @ w).min()),
}  # fmt: skip


@pytest.mark.parametrize("directions", [6, 4], ids=["D = last axis", "D < last axis"])
@pytest.mark.parametrize("name", list(SELECT_0D))
def test_selecting_against_a_0d_jet(name: str, directions: int) -> None:
    """One example (Captum's common case) and a full reduction as the other operand: a 0-d
    jet's series (m, D) was broadcast as it was, D against the model's last axis: silently wrong
    where D equals it, a raw RuntimeError otherwise."""
    _assert_exact(SELECT_0D[name](W6[:directions]), x=ONE[:, :directions], order=2)


@pytest.mark.parametrize(
    "f",
    [
        lambda t: torch.std(t - X, 1, keepdim=True),
        lambda t: (t - X) / ((t - X).std(1, keepdim=True) + 1e-5),  # a constant row, normalized
        lambda t: torch.std_mean(t - X, 1, correction=0, keepdim=True)[0],
    ],
    ids=["std", "x / (std + eps)", "std_mean"],
)
def test_std_at_zero_variance_takes_autograds_slope(f: Case) -> None:
    """``power(variance, 0.5)`` at variance 0 gave NaN; autograd's std takes slope 0 there."""
    actual = hope_attr.unmixed_derivatives(f, X, 2)
    torch.testing.assert_close(actual[0], _autograd_jacobian(f, X).reshape(actual[0].shape))


def test_a_norm_below_one_with_a_zero_entry_takes_autograds_slope() -> None:
    """``power(|x|, p < 1)`` at an entry exactly 0 gave NaN (inf * 0); autograd masks it."""
    f = lambda t: torch.linalg.vector_norm(_moved_zeros(t, 1), 0.5, 1, keepdim=True)  # noqa: E731
    actual = hope_attr.unmixed_derivatives(f, X, 1)
    torch.testing.assert_close(actual[0], _autograd_jacobian(f, X))


@pytest.mark.parametrize("p", [0.5, 1.5])
def test_a_p_norm_with_a_constant_zero_entry(p: float) -> None:
    """A zero that does not move (padding) adds nothing: the norm of the other entries, to every
    order (``p < 2`` gave NaN from order 1 or 2 on)."""
    f = lambda t: torch.linalg.vector_norm(  # noqa: E731
        torch.cat([torch.zeros_like(t[:, :1]), h(t)], 1), p, 1, keepdim=True)  # fmt: skip
    reference = lambda t: (h(t).abs() ** p).sum(1, keepdim=True) ** (1 / p)  # noqa: E731
    _assert_exact(f, reference)


def test_view_as_real_of_a_resolved_inverse_fft() -> None:
    """PyTorch's own advice for ``view_as_real(torch.fft.ifft(x))`` (``resolve_conj`` was the
    identity on a jet, so the conjugate bit of ifft's result stayed set)."""
    _assert_exact(lambda t: _real(torch.fft.ifft(k(t)).resolve_conj()))


def test_resolve_neg_of_an_inverse_fft_imaginary_part() -> None:
    """``ifft(x).imag`` is a lazy negation, which nested jvp cannot vmap: the reference is
    ``ifft(x) = conj(fft(x)) / N`` of a real ``x``."""
    _assert_exact(lambda t: torch.fft.ifft(k(t)).imag.resolve_neg() * 2,
                  lambda t: -torch.fft.fft(k(t)).imag / 8 * 2)  # fmt: skip


def test_matrix_transpose_attribute_of_a_complex_jet() -> None:
    _assert_exact(lambda t: _real(torch.fft.fft(k(t).reshape(2, 2, 4)).mT))


@pytest.mark.parametrize(
    "f",
    [
        lambda v: v.clamp(min=0.5),
        lambda v: torch.clip(v, -0.5, 0.5),
        lambda v: torch.clamp_max(v, 0.2),
        lambda v: torch.clamp_min(v, 0.0),
        lambda v: F.hardsigmoid(v * 6 - 3),
        lambda v: F.hardswish(v * 6 - 3),
    ],
    ids=["clamp(min=)", "clip", "clamp_max", "clamp_min", "hardsigmoid", "hardswish"],
)
def test_a_clamp_at_its_bound_takes_autograds_slope(f: Case) -> None:
    """Pixels exactly at 0 or 1 under x.clamp(0, 1) are the common case. Autograd of torch
    2.14.1 takes slope 0 at a number bound (the rule took 1); hardsigmoid and hardswish
    decompose into clamps."""
    v = torch.tensor([[0.5, 0.2, 0.7, -0.5, 0.0, 1.0]], dtype=torch.float64)
    actual = hope_attr.unmixed_derivatives(lambda t: f(t).sum(1, keepdim=True), v, 1)
    torch.testing.assert_close(actual[0], _autograd_jacobian(lambda t: f(t).sum(1), v))


def test_nan_to_num_makes_a_replaced_entry_constant() -> None:
    """The rule says a replaced entry is a constant: also when its series is NaN (0/0)."""
    jet = hope_attr.Jet(torch.tensor([math.nan, 1.0]), torch.tensor([[[math.nan, 2.0]]]), 2)
    result = torch.nan_to_num(jet)
    assert result.series.flatten().tolist() == [0.0, 2.0]


@pytest.mark.parametrize(
    "f",
    [
        lambda t: torch.fft.fft(k(t), dim=0).real,
        lambda t: torch.fft.fft2(k(t)).real,
        lambda t: torch.fft.fftshift(k(t)),
        lambda t: torch.fft.ifftshift(k(t), dim=(0, 1)),
        lambda t: torch.fft.rfftn(k(t), (2, 8)).real,
    ],
    ids=["fft(dim=0)", "fft2 of 2-d", "fftshift without dim", "ifftshift(dim=(0, 1))",
         "rfftn(s) over 2 axes of 2-d"],
)  # fmt: skip
def test_a_transform_over_the_batch_axis_warns(f: Case) -> None:
    """Only the n-d transforms without ``dim`` warned; every transform over axis 0 mixes the
    examples."""
    with pytest.warns(BatchCouplingWarning):
        hope_attr.unmixed_derivatives(f, X, 1)


@pytest.mark.parametrize(
    "f",
    [
        lambda t: torch.fft.fft(k(t)).real,
        lambda t: torch.fft.fft2(k(t).reshape(2, 2, 4)).real,
        lambda t: torch.fft.fftshift(k(t), dim=-1),
        lambda t: torch.fft.rfftn(k(t), (8,)).real,
        lambda t: torch.fft.fftn(k(t).reshape(2, 2, 4), dim=(1, 2)).real,
    ],
    ids=["fft", "fft2 of 3-d", "fftshift(dim=-1)", "rfftn(s) over 1 axis", "fftn(dim=(1, 2))"],
)
def test_a_transform_within_each_example_is_quiet(f: Case) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        hope_attr.unmixed_derivatives(f, X, 1)


def test_logcumsumexp_after_a_leading_minus_inf() -> None:
    """A masked prefix: the -inf outputs do not move, autograd's slope there is 0 (log of the
    running sum 0 gave NaN); the later outputs are those of the unmasked entries."""
    f = lambda t: torch.logcumsumexp(torch.cat([torch.full_like(t[:, :1], -math.inf), h(t)], 1), 1)  # noqa: E731
    actual = hope_attr.unmixed_derivatives(f, X, 2)
    assert (actual[:, :, 0] == 0).all()
    _assert_close(actual[:, :, 1:], unmixed_reference(lambda t: torch.logcumsumexp(h(t), 1), X, 2))
