"""Writes (issue 29): ``x[i] = v``, ``index_put``, ``index_fill``, ``scatter`` and their kin,
splits and dtype conversions; each exact against nested ``torch.func.jvp`` of the same function
(tests/oracle.py), or refused with the reason and the fix.
"""

from __future__ import annotations

import pytest
import torch

import hope_attr
from tests.oracle import relative_error, unmixed_reference

ORDER = 3
TOLERANCE = 1e-10
W = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
INDEX = torch.tensor([[0, 2], [5, 1]])


def h(t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(t @ W)


def _setitem(t: torch.Tensor) -> torch.Tensor:
    y = h(t) * 1.0
    y[:, 1] = 0.5  # a constant
    y[:, 2:4] = torch.sin(t[:, :2])  # a jet
    y[y > 0.5] = 0.25  # a boolean mask from a comparison
    return y * t.sum(1, keepdim=True)


def _setitem_broadcast(t: torch.Tensor) -> torch.Tensor:
    y = torch.cat([h(t), h(t)], 1)
    y[:, ::3] = torch.cos(t[:, :1])  # one column written into four
    return y


def _in_place_writes(t: torch.Tensor) -> torch.Tensor:
    y = h(t).clone()
    y.index_put_((torch.tensor([0]), torch.tensor([3])), torch.sin(t[0, 0]), accumulate=True)
    y.index_fill_(1, torch.tensor([4]), 2.0)
    y.scatter_(1, INDEX, torch.exp(t[:, :2]))
    return y


def _copy_a_constant(t: torch.Tensor) -> torch.Tensor:
    y = h(t) * 1.0
    y.copy_(torch.linspace(-1, 1, 6, dtype=t.dtype))  # a row, broadcast over the batch
    return y * t.sum(1, keepdim=True) + h(t)


def _fill_and_zero(t: torch.Tensor) -> torch.Tensor:
    a, b, c = h(t).clone(), torch.sin(t @ W), torch.cos(t @ W)
    a.fill_(0.25)
    b.zero_()
    torch.zero_(c)
    return (a + b + c) * h(t)


def _fill_with_a_jet(t: torch.Tensor) -> torch.Tensor:
    y = h(t) * 1.0
    y.fill_(torch.sin(t[0, 1]))  # a 0-d value that depends on the input
    return y * h(t)


def _constants_written_by_index(t: torch.Tensor) -> torch.Tensor:
    y = h(t) * 1.0
    y[...] = 0  # every entry
    y[:, 2] = torch.sin(t[:, 0])
    z = h(t) * 1.0
    z[:, 1:3] = torch.ones(2, 2, dtype=t.dtype)  # a constant tensor into part of a jet
    z[0] = 0.5
    return y + z * h(t)


def _in_place_steps(t: torch.Tensor) -> torch.Tensor:
    y = h(t) * 3
    y.floor_()  # piecewise constant: no series
    return y * h(t)


CASES = {
    "copy_ of a constant": _copy_a_constant,
    "fill_, zero_ and torch.zero_": _fill_and_zero,
    "fill_ with a 0-d jet": _fill_with_a_jet,
    "constants written by index": _constants_written_by_index,
    "floor_ in place": _in_place_steps,
    "setitem with constants, jets and a mask": _setitem,
    "setitem broadcasting a column": _setitem_broadcast,
    "in-place index_put_, index_fill_, scatter_": _in_place_writes,
    "index_put into a constant": lambda t: torch.zeros(2, 6, dtype=t.dtype).index_put(
        (torch.tensor([0, 1]), torch.tensor([1, 4])), torch.sin(t[:, 0])
    ),
    "index_fill with a constant": lambda t: torch.index_fill(h(t), 1, torch.tensor([0, 3]), -1.0),
    "index_copy": lambda t: h(t).index_copy(1, torch.tensor([1, 2]), t[:, :2] ** 2),
    "index_add with alpha": lambda t: torch.index_add(
        h(t), 1, torch.tensor([0, 0]), torch.sin(t[:, 1:3]), alpha=0.5
    ),
    "scatter a jet into a constant": lambda t: torch.ones(2, 6, dtype=t.dtype).scatter(
        1, INDEX, h(t)[:, :2]
    ),
    "scatter a value": lambda t: h(t).scatter(1, INDEX, 0.25),
    "scatter reduce='add'": (
        lambda t: h(t).scatter(1, INDEX, h(t)[:, 3:5], reduce="add"),
        lambda t: h(t).scatter_add(1, INDEX, h(t)[:, 3:5]),  # no forward AD for the former
    ),
    "scatter_add": lambda t: torch.scatter_add(h(t), 1, INDEX, torch.cos(t[:, :2])),
    "scatter_reduce sum and mean": lambda t: (
        h(t).scatter_reduce(1, INDEX, t[:, :2] ** 3, "sum")
        + h(t).scatter_reduce(1, INDEX, t[:, 1:3] ** 2, "mean", include_self=False)
    ),
    "masked_scatter": lambda t: h(t).masked_scatter(
        torch.tensor([[True, False] * 3] * 2), torch.sin(t).repeat(1, 2)
    ),
    "select_scatter": lambda t: torch.select_scatter(h(t), torch.sin(t[:, 0]), 1, 2),
    "slice_scatter": lambda t: torch.slice_scatter(h(t), t[:, :3] ** 2, 1, 0, 6, 2),
    "diagonal_scatter": lambda t: torch.diagonal_scatter(
        h(t).reshape(2, 2, 3), torch.sin(t[:, :2]), 0, 1, 2
    ).flatten(1),
    "tensor_split": lambda t: (
        torch.tensor_split(h(t), 3, dim=1)[1] * h(t).tensor_split([1], 1)[1][:, :2]
    ),
    "hsplit and split_with_sizes": lambda t: (
        torch.hsplit(h(t), 2)[0] + h(t).split_with_sizes([3, 3], 1)[1]
    ),
    "Tensor.type and cpu": lambda t: h(t).type(torch.float64).cpu() * h(t).double(),
    "diff with a prepended constant": lambda t: torch.diff(
        h(t), dim=1, prepend=torch.ones(2, 1, dtype=t.dtype)
    ),
    "hstack and column_stack": lambda t: torch.hstack([h(t), t]) + torch.column_stack([t, h(t)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_write_matches_nested_jvp(name: str) -> None:
    f, reference = CASES[name] if isinstance(CASES[name], tuple) else (CASES[name], CASES[name])
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    actual = hope_attr.unmixed_derivatives(f, x, ORDER)
    expected = unmixed_reference(reference, x, ORDER)
    assert relative_error(actual, expected) <= TOLERANCE


def test_writing_a_jet_into_a_plain_tensor_by_index_is_refused_with_the_fix() -> None:
    def f(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(2, 6, dtype=t.dtype)
        out[:, :2] = h(t)[:, :2]
        return out

    with pytest.raises(hope_attr.UnsupportedOperationError, match="out = h \\* 0") as info:
        hope_attr.unmixed_derivatives(f, torch.randn(2, 4, dtype=torch.float64), 1)
    assert "test_ops_writes.py" in str(info.value) and "out[:, :2] = h(t)" in str(info.value)


def test_the_suggested_fix_works() -> None:
    def f(t: torch.Tensor) -> torch.Tensor:
        out = h(t) * 0
        out[:, :2] = h(t)[:, :2]
        return out

    x = torch.randn(2, 4, dtype=torch.float64)
    actual = hope_attr.unmixed_derivatives(f, x, 2)
    reference = lambda t: torch.cat([h(t)[:, :2], torch.zeros(2, 4, dtype=t.dtype)], 1)  # noqa: E731
    assert relative_error(actual, unmixed_reference(reference, x, 2)) <= TOLERANCE


def test_a_view_of_a_tensor_written_by_index_is_outdated() -> None:
    """Jets do not share memory: a view taken before ``y[...] = v`` is refused when used."""

    def f(t: torch.Tensor) -> torch.Tensor:
        y = h(t) * 1.0
        first = y[:, :1]
        y[:, 0] = 0.0
        return first * y

    with pytest.raises(hope_attr.UnsupportedOperationError, match="changed in place"):
        hope_attr.unmixed_derivatives(f, torch.randn(2, 4, dtype=torch.float64), 1)


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (lambda y: y.scatter(1, INDEX, y[:, :2], reduce="multiply"), "reduce='add'"),
        (lambda y: y.scatter_reduce(1, INDEX, y[:, :2], "amax"), "'sum'/'mean'"),
    ],
)
def test_non_linear_scatters_are_refused_with_the_fix(write, match: str) -> None:
    with pytest.raises(hope_attr.UnsupportedOperationError, match=match) as info:
        hope_attr.unmixed_derivatives(lambda t: write(h(t)), torch.randn(2, 4).double(), 1)
    assert "test_ops_writes.py" in str(info.value)
