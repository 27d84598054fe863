"""Reductions and selections (issue 29): ``max``/``min`` full and over a dimension, ``amax``,
``topk``, ``sort``, ``median``, ``logsumexp``, ``cumprod``, ``prod``, ``var``/``std``...

Each is exact against nested ``torch.func.jvp`` in float64 (tests/oracle.py). Where PyTorch's own
forward-mode formula loses digits (``cumprod``, ``logcumsumexp``: 1e-12), the reference is the
same function written with elementary operations. Ties follow autograd's first-order convention;
the kinks of a selection are where another entry overtakes the chosen one; reducing over the batch
axis warns :class:`BatchCouplingWarning`.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import hope_attr
from hope_attr.engine import kinks as _kinks
from hope_attr.engine.expansion import Expansion
from hope_attr.rules.checks import BatchCouplingWarning
from tests.oracle import relative_error, unmixed_reference

ORDER = 4
TOLERANCE = 1e-10
W = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def h(t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(t @ W)


def g(t: torch.Tensor) -> torch.Tensor:
    """``(B, 2, 3)``, every entry curved."""
    return torch.sin(t @ W).reshape(-1, 2, 3) + 0.3


def _prefix_products(t: torch.Tensor) -> torch.Tensor:
    x = h(t)
    return torch.stack([x[:, : i + 1].prod(1) for i in range(x.shape[1])], 1)


def _prefix_logsumexp(t: torch.Tensor) -> torch.Tensor:
    x = h(t)
    return torch.stack([torch.log(torch.exp(x[:, : i + 1]).sum(1)) for i in range(6)], 1)


# name -> (function, reference or None for the function itself)
CASES = {
    "max full (times the input)": (lambda t: h(t)[:1].max() * t, None),
    "max over a dim": (lambda t: h(t).max(dim=1).values, None),
    "max over a dim, keepdim, tuple index": (lambda t: h(t).max(1, keepdim=True)[0], None),
    "torch.min over a negative dim": (lambda t: torch.min(g(t), -1)[0], None),
    "max elementwise still": (lambda t: torch.max(h(t), torch.cos(h(t))), None),
    "amax over two dims": (lambda t: torch.amax(g(t), dim=(1, 2)), None),
    "amin keepdim": (lambda t: g(t).amin(1, keepdim=True), None),
    "aminmax": (lambda t: (lambda r: r.min * r.max)(torch.aminmax(g(t), dim=2)), None),
    "topk largest sorted": (lambda t: h(t).topk(3, dim=1).values, None),
    "topk smallest": (lambda t: torch.topk(g(t), 2, dim=-1, largest=False)[0], None),
    "sort": (lambda t: torch.sort(h(t), 1)[0], None),
    "sort descending stable": (lambda t: h(t).sort(dim=-1, descending=True, stable=True)[0], None),
    "msort of the transpose": (lambda t: torch.msort(h(t).T).T, None),
    "median over a dim": (lambda t: h(t).median(1).values, None),
    "nanmedian over a dim": (lambda t: g(t).nanmedian(-1, keepdim=True).values, None),
    "kthvalue": (lambda t: torch.kthvalue(h(t), 2, 1).values, None),
    "cummax": (lambda t: torch.cummax(h(t), 1).values, None),
    "cummin": (lambda t: h(t).cummin(-1)[0], None),
    "logsumexp": (lambda t: torch.logsumexp(h(t) * 3, 1), None),
    "logsumexp keepdim, two dims": (lambda t: g(t).logsumexp((1, 2), keepdim=True), None),
    "logcumsumexp": (lambda t: torch.logcumsumexp(h(t), 1), _prefix_logsumexp),
    "cumsum": (lambda t: torch.cumsum(h(t), -1), None),
    "cumprod": (lambda t: torch.cumprod(h(t), 1), _prefix_products),
    "prod over a dim": (lambda t: h(t).prod(1), None),
    "prod over an odd dim, keepdim": (lambda t: torch.prod(g(t), 2, keepdim=True), None),
    "prod full (times the input)": (lambda t: torch.prod(h(t)[:1]) * t, None),
    "var": (lambda t: h(t).var(1), None),
    "var unbiased=False, keepdim": (lambda t: torch.var(g(t), 2, False, True), None),
    "var correction=0 over two dims": (lambda t: g(t).var((1, 2), correction=0), None),
    "std": (lambda t: h(t).std(dim=1), None),
    "var_mean": (lambda t: (lambda r: r[0] + r[1])(torch.var_mean(g(t), 1)), None),
    "std_mean": (lambda t: (lambda r: r[0] * r[1])(torch.std_mean(h(t), 1, keepdim=True)), None),
    "nansum and nanmean": (lambda t: h(t).nansum(1) + torch.nanmean(h(t), 1), None),
    "sum and mean": (lambda t: h(t).sum(1) + g(t).mean((1, 2)), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reduction_matches_nested_jvp(name: str) -> None:
    f, reference = CASES[name]
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchCouplingWarning)  # "full" cases use one example
        actual = hope_attr.unmixed_derivatives(f, x, ORDER)
    expected = unmixed_reference(reference or f, x, ORDER)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= TOLERANCE


def test_a_selection_returns_torchs_values_and_indices() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    ops = {"max": torch.max, "sort": torch.sort, "median": torch.median, "topk": torch.topk}
    args = {"topk": (2, 1)}
    seen = {}

    def f(t: torch.Tensor) -> torch.Tensor:
        for name, op in ops.items():
            seen[name] = op(h(t), *args.get(name, (1,)))
        return h(t)

    hope_attr.unmixed_derivatives(f, x, 1)  # the last call of f is the one on jets
    for name, op in ops.items():
        expected = op(h(x), *args.get(name, (1,)))
        assert type(seen[name]) is type(expected)
        assert isinstance(seen[name].values, hope_attr.Jet)
        assert torch.equal(seen[name].indices, expected.indices)
        torch.testing.assert_close(seen[name].values.primal, expected.values)


@pytest.mark.parametrize(
    ("reduce", "passes_to"),
    [
        (lambda v: torch.amax(v, 1), "both tied entries, half each"),
        (lambda v: v.max(), "both tied entries, half each"),
        (lambda v: torch.max(v, 1).values, "the index returned"),
        (lambda v: torch.topk(v, 1, 1).values.squeeze(1), "the index returned"),
    ],
)
def test_ties_follow_autograds_convention(reduce, passes_to: str) -> None:
    """Two equal maxima: amax and max() share the slope, max(dim) and topk pass it to the
    index they return (as PyTorch's backward does)."""
    x = torch.tensor([[0.5, 0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(reduce(x * 2).sum(), x)
    actual = hope_attr.unmixed_derivatives(lambda t: reduce(t * 2).reshape(1, 1), x.detach(), 1)
    torch.testing.assert_close(actual[0, 0, 0], expected[0], rtol=0, atol=1e-15)
    assert (expected[0, :2] != 0).sum() == (2 if "half" in passes_to else 1)


def test_max_over_a_dim_kink_is_where_another_entry_overtakes() -> None:
    """Entries 1.0 (rate 0) and 0.5 (rate 1) meet at t = 0.5, where both the maximum and the
    median change hands; 0.2 (rate 0.2) never catches up with either."""
    z = torch.tensor([[1.0, 0.5, 0.2]], dtype=torch.float64)
    v = torch.tensor([[[0.0, 1.0, 0.2]]], dtype=torch.float64)
    for reduce in (lambda t: t.max(1).values, lambda t: t.amax(1), lambda t: t.median(1)[0]):
        with _kinks.watch() as watch:
            Expansion(lambda t, r=reduce: r(t).unsqueeze(1), z, 1).directional_coefficients((v,))
        torch.testing.assert_close(watch.first, torch.tensor([0.5], dtype=torch.float64))


def test_sort_kink_is_where_two_neighbours_cross() -> None:
    z = torch.tensor([[0.1, 0.4, 1.0]], dtype=torch.float64)
    v = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)  # 0.1 passes 0.4 at t = 0.3
    with _kinks.watch() as watch:
        Expansion(lambda t: torch.sort(t, 1).values, z, 1).directional_coefficients((v,))
    torch.testing.assert_close(watch.first, torch.tensor([0.3], dtype=torch.float64))


BATCH_COUPLED = {
    "mean over dim 0": lambda t: h(t) - h(t).mean(0),
    "sum over all": lambda t: h(t) * h(t).sum(),
    "var over dim 0": lambda t: h(t) / h(t).var(0, keepdim=True),
    "amax over dim 0": lambda t: h(t) - torch.amax(h(t), 0),
    "max full": lambda t: h(t) / h(t).max(),
    "cumsum over dim 0": lambda t: torch.cumsum(h(t), 0),
    "logsumexp over dim 0": lambda t: h(t) - torch.logsumexp(h(t), 0, keepdim=True),
    "sort over dim 0": lambda t: torch.sort(h(t), 0).values,
    "vector norm of everything": lambda t: h(t) / torch.linalg.vector_norm(h(t)),
    "layer_norm over the whole batch": lambda t: torch.nn.functional.layer_norm(h(t), (3, 6)),
    "softmax over dim 0": lambda t: torch.softmax(h(t), 0),
}


@pytest.mark.parametrize("name", list(BATCH_COUPLED))
def test_reducing_the_batch_axis_warns(name: str) -> None:
    """The issue's ``h - h.mean(0)``: each example's 'derivative' includes the other examples'
    contributions (1.0 off), with no signal before."""
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.warns(BatchCouplingWarning, match="batch axis") as caught:
        hope_attr.unmixed_derivatives(BATCH_COUPLED[name], x, 2)
    assert caught[0].filename == __file__  # the user's line


def test_per_example_reductions_and_one_example_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        x = torch.randn(3, 4, dtype=torch.float64)
        hope_attr.unmixed_derivatives(lambda t: h(t) - h(t).mean(1, keepdim=True), x, 2)
        hope_attr.unmixed_derivatives(lambda t: h(t) / h(t).max(), x[:1], 2)


def test_the_batch_coupling_the_warning_means_is_real() -> None:
    """With the warning, the result is what it says: the derivative of the batch moved
    together, not the per-example one (nested jvp of each example alone differs)."""
    x = torch.randn(2, 4, dtype=torch.float64)
    f = BATCH_COUPLED["mean over dim 0"]
    with pytest.warns(BatchCouplingWarning):
        together = hope_attr.unmixed_derivatives(f, x, 1)
    alone = torch.stack([hope_attr.unmixed_derivatives(f, x[i : i + 1], 1)[0, 0] for i in (0, 1)])
    assert not torch.allclose(together[0], alone)
    torch.testing.assert_close(together, unmixed_reference(f, x, 1))


def test_max_of_a_jet_decides_a_branch() -> None:
    """A confidence check in the forward (control flow on a full max)."""

    def f(t: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(h(t), 1)
        return p * 2 if p.max() > 0.1 else p

    x = torch.randn(1, 4, dtype=torch.float64)
    actual = hope_attr.unmixed_derivatives(f, x, 3)
    assert relative_error(actual, unmixed_reference(f, x, 3)) <= TOLERANCE


def test_max_with_out_is_refused_with_the_fix() -> None:
    out = (torch.empty(2, dtype=torch.float64), torch.empty(2, dtype=torch.long))
    with pytest.raises(hope_attr.UnsupportedOperationError, match="Use the returned value") as e:
        hope_attr.unmixed_derivatives(lambda t: torch.max(h(t), 1, out=out).values, _x(), 1)
    assert "test_ops_reductions.py" in str(e.value)


def _x() -> torch.Tensor:
    return torch.randn(2, 4, dtype=torch.float64)


def test_a_stack_of_the_models_own_branches_reduced_over_axis_0_does_not_warn() -> None:
    """timm's EfficientViM (`torch.stack(logits).sum(0)`) and CrossViT (`stack(...).mean(0)`):
    axis 0 of the stack has another size than the batch, so no example meets another; the
    expansion is exact (nested jvp) and must not cry wolf. Batch 2, three branches."""

    def f(t: torch.Tensor) -> torch.Tensor:
        branches = torch.stack([torch.tanh(h(t)), torch.sin(h(t)), h(t) ** 2])  # (3, B, 6)
        return branches.sum(0) + branches.mean(0)

    x = torch.randn(2, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchCouplingWarning)
        actual = hope_attr.unmixed_derivatives(f, x, 3)
    assert relative_error(actual, unmixed_reference(f, x, 3)) <= TOLERANCE
    # The same stack over a batch of 3 has axis 0 of the batch's size: that case still warns
    # (the rule cannot tell the two apart), as the warning's text says.
    with pytest.warns(BatchCouplingWarning):
        hope_attr.unmixed_derivatives(f, torch.randn(3, 4, dtype=torch.float64), 1)
