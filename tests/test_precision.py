"""float32 stays accurate at order 10 because the engine propagates normalized coefficients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.datasets import load_mnist


@pytest.fixture(scope="module")
def trained_cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 12, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(192, 32),
        nn.Tanh(),
        nn.Linear(32, 10),
    )
    digits = load_mnist()
    images, labels = digits.images[:1000], digits.labels[:1000]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for start in range(0, 1000, 50):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(
                model(images[start : start + 50]), labels[start : start + 50]
            )
            loss.backward()
            optimizer.step()
    accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.8, "the fixture should be a trained model"
    return model.eval(), images[:1]


@pytest.mark.slow
def test_float32_matches_float64_at_order_ten(trained_cnn) -> None:
    model, image = trained_cnn
    single = hope_attr.unmixed_derivatives(model, image, 10)
    double = hope_attr.unmixed_derivatives(model.double(), image.double(), 10)
    model.float()
    for k in range(10):
        scale = double[k].abs().max()
        error = (single[k].double() - double[k]).abs().max()
        assert error / scale <= 1e-4, f"order {k + 1}: relative error {error / scale:.2e}"
    assert single.dtype == torch.float32 and double.dtype == torch.float64


def test_float64_inputs_compute_in_float64() -> None:
    # A term of size 1e-12 next to one of size 1 survives only in float64.
    model = nn.Sequential(nn.Linear(1, 1), nn.Tanh()).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    x = torch.full((1, 1), 1e-12, dtype=torch.float64)
    d = hope_attr.unmixed_derivatives(model, x, 2)
    # tanh''(x) = -2 tanh(x) (1 - tanh(x)^2) ~ -2e-12
    torch.testing.assert_close(
        d[1, 0, 0, 0], torch.tensor(-2e-12, dtype=torch.float64), rtol=1e-9, atol=0
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).double()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    expected = hope_attr.unmixed_derivatives(model, x, 4)
    actual = hope_attr.unmixed_derivatives(model.cuda(), x.cuda(), 4)
    assert actual.is_cuda
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-10, atol=1e-12)
