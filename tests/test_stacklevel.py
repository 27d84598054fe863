"""Warnings raised by rules point at the user's line, also where torch's own frames stand between
the rule and that line (``nn.Module.__call__``, a ``torch.nn.functional`` body, the overrides
that hand a jet to ``Jet.__torch_function__``)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

import hope_attr
from hope_attr.engine import stacklevel

W = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


class StraightThrough(nn.Module):
    """``F.gumbel_softmax(hard=True)`` detaches the soft sample inside torch's own body."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return F.gumbel_softmax(torch.tanh(t @ W), tau=1.0, hard=True)


class SoftmaxOverTheBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.softmax = nn.Softmax(dim=0)  # torch's module, whose forward calls F.softmax

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.softmax(torch.tanh(t @ W))


def _warnings_of(model: nn.Module) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hope_attr.unmixed_derivatives(model, torch.randn(2, 4, dtype=torch.float64), 2)
    return caught


def test_a_warning_from_inside_a_torch_function_names_the_users_line() -> None:
    """The ``.detach()`` in torch/nn/functional.py used to be the warning's place."""
    (caught,) = [w for w in _warnings_of(StraightThrough()) if w.category is not FutureWarning]
    assert caught.category is hope_attr.DroppedDependenceWarning
    assert caught.filename == __file__
    assert caught.lineno == StraightThrough.forward.__code__.co_firstlineno + 1


def test_a_warning_from_a_torch_module_names_the_users_line() -> None:
    caught = [w for w in _warnings_of(SoftmaxOverTheBatch()) if w.category is not FutureWarning]
    assert {w.category for w in caught} == {hope_attr.BatchCouplingWarning}
    assert all(w.filename == __file__ for w in caught)
    assert all(w.lineno == SoftmaxOverTheBatch.forward.__code__.co_firstlineno + 1 for w in caught)


def test_the_module_names_no_deleted_module() -> None:
    assert "engine.threads" not in (stacklevel.__doc__ or "")
