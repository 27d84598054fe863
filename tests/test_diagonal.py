"""The paper's one-sweep rule (method="diagonal"): exact where the theory says, wrong beyond."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hope_attr import HOPEAttribution
from hope_attr.attribution.diagonal import diagonal_coefficients
from hope_attr.engine.expansion import Expansion
from tests.oracle import relative_error, unmixed_reference


def _net(*layers: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*layers).double().eval()


def _diagonal_derivatives(model: nn.Module, x: torch.Tensor, order: int) -> torch.Tensor:
    coefficients = diagonal_coefficients(Expansion(model, x, order))[0]
    factorials = torch.cumprod(torch.arange(1, order + 1, dtype=x.dtype), 0)
    return coefficients * factorials.reshape(order, *([1] * (coefficients.dim() - 1)))


ONE_HIDDEN_LAYER = {
    "tanh MLP": (lambda: _net(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3)), (2, 4)),
    "GELU MLP": (lambda: _net(nn.Linear(3, 5), nn.GELU(), nn.Linear(5, 2)), (2, 3)),
    "softplus CNN, avg pool": (
        lambda: _net(
            nn.Conv2d(1, 3, 3), nn.Softplus(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 3)
        ),
        (2, 1, 6, 6),
    ),
    "sigmoid CNN, max pool": (
        lambda: _net(
            nn.Conv1d(2, 3, 3), nn.Sigmoid(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(9, 2)
        ),
        (2, 2, 8),
    ),
}
DEEP = {
    "3 hidden layers": (
        lambda: _net(
            nn.Linear(4, 7),
            nn.Tanh(),
            nn.Linear(7, 6),
            nn.Sigmoid(),
            nn.Linear(6, 5),
            nn.GELU(),
            nn.Linear(5, 3),
        ),
        (2, 4),
    ),
    "2 conv layers": (
        lambda: _net(
            nn.Conv2d(1, 3, 3),
            nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 2, 2, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(18, 3),
        ),
        (2, 1, 6, 6),
    ),
}


@pytest.mark.parametrize("name", list(ONE_HIDDEN_LAYER))
def test_exact_for_one_hidden_layer(name: str) -> None:
    make, shape = ONE_HIDDEN_LAYER[name]
    model, x = make(), torch.rand(*shape, dtype=torch.float64)
    actual = _diagonal_derivatives(model, x, 6)
    assert relative_error(actual, unmixed_reference(model, x, 6)) <= 1e-9


@pytest.mark.parametrize("name", list(DEEP))
def test_exact_at_order_one_for_any_depth(name: str) -> None:
    make, shape = DEEP[name]
    model, x = make(), torch.rand(*shape, dtype=torch.float64)
    actual = _diagonal_derivatives(model, x, 1)
    assert relative_error(actual, unmixed_reference(model, x, 1)) <= 1e-9


@pytest.mark.parametrize("name", list(DEEP))
def test_differs_beyond_one_hidden_layer(name: str) -> None:
    # The dropped cross terms make orders >= 2 wrong: the test asserts the difference exists.
    make, shape = DEEP[name]
    model, x = make(), torch.rand(*shape, dtype=torch.float64)
    expected = unmixed_reference(model, x, 4)
    actual = _diagonal_derivatives(model, x, 4)
    assert relative_error(actual[1:], expected[1:]) > 1e-3


def test_attribution_methods_agree_where_the_rule_is_exact() -> None:
    make, shape = ONE_HIDDEN_LAYER["tanh MLP"]
    model, x = make(), torch.rand(*shape, dtype=torch.float64)
    exact = HOPEAttribution(model, order=5).attribute(x, baselines=x + 0.5, target=1)
    diagonal = HOPEAttribution(model, order=5, method="diagonal").attribute(
        x, baselines=x + 0.5, target=1
    )
    torch.testing.assert_close(diagonal, exact, rtol=1e-9, atol=1e-12)
    assert not diagonal.requires_grad  # no autograd graph through the weights' powers


def test_unsupported_structures_say_use_exact() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.tanh(self.layer(x))

    x = torch.rand(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="method='exact'"):
        HOPEAttribution(Residual().double(), method="diagonal").attribute(x, target=0)
    model = ONE_HIDDEN_LAYER["tanh MLP"][0]()
    with pytest.raises(ValueError, match="feature_mask"):
        HOPEAttribution(model, method="diagonal").attribute(
            torch.rand(2, 4, dtype=torch.float64),
            target=0,
            feature_mask=torch.tensor([[0, 0, 1, 1]]),
        )
