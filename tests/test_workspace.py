"""The workspace: large buffers reused by the chunks of one expansion.

A buffer may be handed out again only when nothing else holds its memory; results with the
workspace must equal those without it exactly and match nested ``torch.func.jvp`` in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.engine import scope as _scope
from hope_attr.engine import workspace as _workspace
from hope_attr.engine.expansion import Expansion
from tests.oracle import directional_reference, relative_error, unmixed_reference

pytestmark = pytest.mark.usefixtures("single_thread")
TOL = 1e-10


def _cnn() -> nn.Module:
    """Windows, a dense scatter, tanh series in several layers, and a tanh at the output (its
    series is the chunk's result, which must survive into the next chunk)."""
    torch.manual_seed(0)
    layers = [
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3), nn.Tanh(),
    ]  # fmt: skip
    return nn.Sequential(*layers).double().eval()


@pytest.fixture(autouse=True)
def keep_every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small buffers are worth keeping too: the tests' models are small."""
    monkeypatch.setattr(_workspace, "_MIN_BYTES", 0)


@pytest.fixture
def workspaces() -> Iterator[list[_workspace.Workspace]]:
    """Every workspace an expansion creates during the test."""
    created: list[_workspace.Workspace] = []
    init = _workspace.Workspace.__init__

    def spy(self, budget_bytes):  # noqa: ANN001, ANN202
        init(self, budget_bytes)
        created.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_workspace.Workspace, "__init__", spy)
        yield created


def test_chunks_reuse_buffers_and_results_stay_exact(
    workspaces: list[_workspace.Workspace], monkeypatch: pytest.MonkeyPatch
) -> None:
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64) - 0.5
    got = hope_attr.unmixed_derivatives(_cnn(), x, 4, directions_per_chunk=10)
    (workspace,) = workspaces
    assert workspace.reused > 10  # every chunk after the first reuses the kept buffers
    assert relative_error(got, unmixed_reference(_cnn(), x, 4)) < TOL
    with hope_attr.resources(workspace=False):
        alone = hope_attr.unmixed_derivatives(_cnn(), x, 4, directions_per_chunk=10)
    assert len(workspaces) == 1  # no second workspace
    assert torch.equal(got, alone)


@pytest.mark.parametrize(("chunk", "keeps"), [(100, False), (50, True)])
def test_only_chunks_whose_shapes_repeat_keep_buffers(
    workspaces: list[_workspace.Workspace], chunk: int, keeps: bool
) -> None:
    """144 directions in chunks of 100 and 44 share no buffer shape: keeping the first chunk's
    buffers would only pin memory. Chunks of 50, 50 and 44: the two full ones share theirs."""
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64) - 0.5
    hope_attr.unmixed_derivatives(_cnn(), x, 3, directions_per_chunk=chunk)
    (workspace,) = workspaces
    assert (workspace.kept_bytes > 0) == keeps and (workspace.reused > 0) == keeps


def test_chunk_results_that_are_kept_are_never_overwritten(
    workspaces: list[_workspace.Workspace],
) -> None:
    # Directional chunks are collected and concatenated at the end: the output tanh's series
    # (a workspace buffer) of every chunk is still alive when the next chunk asks for one.
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64) - 0.5
    directions = torch.randn(9, 1, 1, 12, 12, dtype=torch.float64)
    expansion = Expansion(_cnn(), x, 3, directions_per_chunk=2)
    got = expansion.directional_coefficients((directions,))  # (n, D, B, C)
    (workspace,) = workspaces
    assert workspace.reused > 0
    for d in range(directions.shape[0]):
        for k in (1, 2, 3):
            # Coefficients are normalized: the k-th derivative over k!.
            expected = directional_reference(_cnn(), x, directions[d], k) / math.factorial(k)
            assert relative_error(got[k - 1, d], expected) < TOL


def test_a_buffer_is_handed_out_only_when_nothing_holds_it() -> None:
    workspace = _workspace.Workspace(budget_bytes=2**20)
    like = torch.ones(())

    def memory(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    with _scope.active(workspace=workspace):
        first = _workspace.empty(like, (100,))
        view = first[10:20]
        kept = {memory(first)}
        del first
        second = _workspace.empty(like, (100,))  # a view of the first still holds its memory
        assert memory(second) != memory(view)
        kept.add(memory(second))
        assert workspace.reused == 0
        del view, second
        third = _workspace.zeros(like, (100,))  # both are free now
        assert memory(third) in kept and torch.equal(third, torch.zeros(100))
        assert workspace.reused == 1
        held = third.reshape(10, 10)  # any tensor sharing the memory holds it
        del third
        assert memory(_workspace.empty(like, (100,))) != memory(held)
        assert _workspace.empty(like, (50,)).shape == (50,)  # another shape: another buffer
        assert workspace.reused == 2


def test_the_budget_and_other_devices_just_allocate() -> None:
    workspace = _workspace.Workspace(budget_bytes=400)
    like = torch.ones(())
    with _scope.active(workspace=workspace):
        kept = _workspace.empty(like, (100,))
        del kept
        assert _workspace.empty(like, (100,)) is not None
        assert workspace.reused == 1
        over = _workspace.empty(like, (200,))  # over the budget: not kept
        del over
        _workspace.empty(like, (200,))
        _workspace.empty(torch.ones((), device="meta"), (100,))  # not a CPU tensor
        assert workspace.reused == 1
    assert workspace.kept_bytes == 400


def test_without_an_active_workspace_nothing_is_kept() -> None:
    like = torch.ones(())
    first = _workspace.empty(like, (2**20,))
    assert first.shape == (2**20,) and first._base is None
