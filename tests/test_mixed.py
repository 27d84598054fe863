"""Mixed partials against nested torch.func.jacfwd (float64) and closed-form polynomials."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jacfwd, vmap

import hope_attr

ORDER = 4


def _nested_jacfwd(model: nn.Module, x: torch.Tensor, order: int) -> list[torch.Tensor]:
    single = lambda z: model(z.unsqueeze(0))[0]  # noqa: E731
    references, derivative = [], single
    for _ in range(order):
        derivative = jacfwd(derivative)
        references.append(vmap(derivative)(x))
    return references


class Residual(nn.Module):
    def __init__(self, p: int) -> None:
        super().__init__()
        self.inner = nn.Linear(p, p)
        self.head = nn.Linear(p, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + torch.tanh(self.inner(x)) * torch.sigmoid(x))


ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "softplus": nn.Softplus}


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_mixed_partials_match_nested_jacfwd(p: int, activation: str) -> None:
    torch.manual_seed(p)
    act = ACTIVATIONS[activation]
    model = nn.Sequential(nn.Linear(p, 6), act(), nn.Linear(6, 5), act(), nn.Linear(5, 2))
    model = model.double().eval()
    x = torch.randn(3, p, dtype=torch.float64)
    actual = hope_attr.mixed_derivatives(model, x, ORDER)
    for k, (a, e) in enumerate(zip(actual, _nested_jacfwd(model, x, ORDER), strict=True), 1):
        assert a.shape == (3, 2, *([p] * k))
        assert ((a - e).abs().max() / e.abs().max()).item() <= 1e-9


def test_residual_network() -> None:
    torch.manual_seed(0)
    model = Residual(3).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    for a, e in zip(
        hope_attr.mixed_derivatives(model, x, ORDER), _nested_jacfwd(model, x, ORDER), strict=True
    ):
        assert ((a - e).abs().max() / e.abs().max()).item() <= 1e-9


def test_known_polynomial_is_exact_and_vanishes_above_its_degree() -> None:
    # f = x1^3 - 2 x1 x2 + 0.5 x2^2 x3, written out by hand below.
    def f(x: torch.Tensor) -> torch.Tensor:
        x1, x2, x3 = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        return x1**3 - 2 * x1 * x2 + 0.5 * x2 * x2 * x3

    point = torch.tensor([[0.7, -1.3, 2.0]], dtype=torch.float64)
    x1, x2, x3 = point[0].tolist()
    d1, d2, d3, d4 = hope_attr.mixed_derivatives(f, point, 4)
    gradient = [3 * x1**2 - 2 * x2, -2 * x1 + x2 * x3, 0.5 * x2**2]
    hessian = [[6 * x1, -2, 0], [-2, x3, x2], [0, x2, 0]]
    torch.testing.assert_close(
        d1[0, 0], torch.tensor(gradient, dtype=torch.float64), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(
        d2[0, 0], torch.tensor(hessian, dtype=torch.float64), rtol=0, atol=1e-12
    )
    third = torch.zeros(3, 3, 3, dtype=torch.float64)
    third[0, 0, 0] = 6
    for i, j, k in [(1, 1, 2), (1, 2, 1), (2, 1, 1)]:
        third[i, j, k] = 1.0
    torch.testing.assert_close(d3[0, 0], third, rtol=0, atol=1e-12)
    assert d4.abs().max() <= 1e-12


def test_rejects_image_shaped_inputs() -> None:
    with pytest.raises(ValueError, match="flat inputs"):
        hope_attr.mixed_derivatives(nn.Flatten(), torch.zeros(1, 1, 4, 4), 2)
