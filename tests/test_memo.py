"""The primal memo: the chunks of an expansion share one computation of the primal values.

Results with the memo must equal those without it exactly, and both must match nested
``torch.func.jvp`` in float64 (tests/oracle.py); each memoized value must be computed once per
call, however many chunks there are.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hope_attr
from hope_attr.engine import memo as _memo
from tests.oracle import ComposedReference, relative_error, unmixed_reference

pytestmark = pytest.mark.usefixtures("single_thread")
TOL = 1e-10


class _Block(nn.Module):
    """Convolution, batch norm, ReLU, max pooling, a residual add, tanh, sigmoid, average
    pooling, flatten and linear layers: the rules that read the memo, run eagerly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv1(x)))
        y = y + torch.tanh(self.conv2(y))
        y = F.max_pool2d(torch.sigmoid(y) + y, 2)
        y = F.avg_pool2d(torch.exp(0.1 * y), 2)
        return self.head(torch.tanh(y.flatten(1)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = _Block().double()
    with torch.no_grad():  # realistic statistics: BatchNorm's defaults are the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def memos(monkeypatch: pytest.MonkeyPatch) -> list[_memo.PrimalMemo]:
    """Every memo an expansion creates during the test, in order."""
    created: list[_memo.PrimalMemo] = []
    init = _memo.PrimalMemo.__init__

    def spy(self, budget_bytes):  # noqa: ANN001, ANN202
        init(self, budget_bytes)
        created.append(self)

    monkeypatch.setattr(_memo.PrimalMemo, "__init__", spy)
    return created


def _without_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    def call(self, fn, args, kwargs):  # noqa: ANN001, ANN202
        return fn(*args, **kwargs)

    monkeypatch.setattr(_memo.PrimalMemo, "call", call)


def test_chunks_share_one_primal_pass(memos: list[_memo.PrimalMemo]) -> None:
    x = torch.rand(2, 2, 12, 12, dtype=torch.float64) - 0.5
    got = hope_attr.unmixed_derivatives(_model(), x, 3, directions_per_chunk=50)
    chunks = -(-x[0].numel() // 50)
    (memo,) = memos
    # Every value was computed in the first chunk only and served to the others.
    assert memo.misses == len(memo._values) > 10
    assert memo.hits == (chunks - 1) * memo.misses
    with ComposedReference():
        expected = unmixed_reference(_model(), x, 3)
    assert relative_error(got, expected) < TOL


def test_memo_changes_no_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.rand(2, 2, 12, 12, dtype=torch.float64) - 0.5
    mask = (torch.arange(144).reshape(12, 12) // 20).expand(1, 2, 12, 12)
    hope = hope_attr.HOPEAttribution(_model(), order=4)
    with_memo = hope.attribute_all_targets(x, feature_mask=mask, directions_per_chunk=2)
    derivatives = hope_attr.unmixed_derivatives(_model(), x, 3, directions_per_chunk=7)
    _without_memo(monkeypatch)
    # The same chunks: a matrix product's rounding may depend on how many rows it has.
    without = hope.attribute_all_targets(x, feature_mask=mask, directions_per_chunk=2)
    assert torch.equal(with_memo, without)
    assert torch.equal(
        derivatives, hope_attr.unmixed_derivatives(_model(), x, 3, directions_per_chunk=7)
    )


def test_one_chunk_needs_no_memo(memos: list[_memo.PrimalMemo]) -> None:
    hope_attr.unmixed_derivatives(_model(), torch.rand(1, 2, 12, 12, dtype=torch.float64), 2)
    assert memos == []


def test_cached_without_memo_just_calls() -> None:
    calls = []
    assert _memo.cached(lambda v: calls.append(v) or v + 1, 1) == 2
    assert calls == [1]


def test_memo_keys_by_value_identity() -> None:
    memo = _memo.PrimalMemo(2**20)
    calls = []

    def double(t: torch.Tensor, factor: float = 2.0) -> torch.Tensor:
        calls.append(factor)
        return t * factor

    t = torch.ones(3)
    first = memo.call(double, (t,), {})
    assert memo.call(double, (t.view(3),), {}) is first  # a fresh view of the same values
    assert memo.call(double, (t,), {"factor": 2.0}) is not first  # other arguments
    assert memo.call(double, (t,), {"factor": -0.0}) is not memo.call(double, (t,), {})
    t.add_(1)  # changed in place: a new version, a new key
    assert torch.equal(memo.call(double, (t,), {}), torch.full((3,), 4.0))
    memo.recording = False
    assert memo.call(double, (t[:2],), {}) is not memo.call(double, (t[:2],), {})  # not stored


def test_memo_serves_no_result_changed_in_place() -> None:
    memo = _memo.PrimalMemo(2**20)
    t = torch.ones(2)
    result = memo.call(torch.neg, (t,), {})
    result.add_(5)
    assert torch.equal(memo.call(torch.neg, (t,), {}), -torch.ones(2))


def test_memo_respects_its_budget() -> None:
    memo = _memo.PrimalMemo(budget_bytes=40)
    small, large = torch.ones(2), torch.ones(100)
    assert memo.call(torch.neg, (small,), {}) is memo.call(torch.neg, (small,), {})
    assert memo.call(torch.neg, (large,), {}) is not memo.call(torch.neg, (large,), {})
    assert memo.stored_bytes <= 40


def test_unkeyable_arguments_are_called_every_time() -> None:
    memo = _memo.PrimalMemo(2**20)
    module = nn.Identity()
    t = torch.ones(2)
    assert memo.call(lambda m, v: m(v) + 1, (module, t), {}) is not memo.call(
        lambda m, v: m(v) + 1, (module, t), {}
    )
    assert memo._values == {}
