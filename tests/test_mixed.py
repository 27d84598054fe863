"""Mixed partials against nested torch.func.jacfwd (float64) and closed-form polynomials."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jacfwd, vmap

import hope_attr
from hope_attr.derivatives import mixed as _mixed
from hope_attr.engine.expansion import Expansion

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


@pytest.mark.parametrize("method", ["jets", "mlp"])
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_mixed_partials_match_nested_jacfwd(p: int, activation: str, method) -> None:
    torch.manual_seed(p)
    act = ACTIVATIONS[activation]
    model = nn.Sequential(nn.Linear(p, 6), act(), nn.Linear(6, 5), act(), nn.Linear(5, 2))
    model = model.double().eval()
    x = torch.randn(3, p, dtype=torch.float64)
    actual = hope_attr.mixed_derivatives(model, x, ORDER, route=method)
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


def _relative_error(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    return max(
        ((a - e).abs().max() / e.abs().max()).item() for a, e in zip(actual, expected, strict=True)
    )


def _mlp(p: int) -> nn.Module:
    torch.manual_seed(p)
    layers = [nn.Linear(p, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double().eval()


@pytest.mark.parametrize("block_bytes, chunk_bytes", [(1, 1), (1, 10**9), (3000, 1), (3000, 10**9)])
def test_blocks_of_points_and_chunks_of_directions(block_bytes: int, chunk_bytes: int) -> None:
    # One point per block or several, all directions at once or one per chunk: same numbers.
    model, x = _mlp(3), torch.randn(7, 3, dtype=torch.float64)
    with hope_attr.resources(mixed_block_bytes=block_bytes, mixed_chunk_bytes=chunk_bytes):
        actual = hope_attr.mixed_derivatives(model, x, 3, route="jets")
    assert _relative_error(actual, _nested_jacfwd(model, x, 3)) <= 1e-9


def test_many_points_are_cut_into_blocks() -> None:
    model, x = _mlp(2), torch.randn(50, 2, dtype=torch.float64)
    with hope_attr.resources(mixed_block_bytes=3000):
        expansion = Expansion(model, x, 3)  # the policy is read when the expansion is made
    blocks = list(_mixed._blocks(expansion, num_directions=4, directions_per_chunk=None))
    # 3 orders x 4 directions x 8 doubles (the widest activation) = 768 bytes per point.
    assert [(start, stop) for start, stop, _ in blocks][:2] == [(0, 3), (3, 6)]
    assert blocks[-1][1] == 50
    assert all(part.chunk_size == 4 for _, _, part in blocks)
    actual = hope_attr.mixed_derivatives(model, x, 3, route="jets")
    assert _relative_error(actual, _nested_jacfwd(model, x, 3)) <= 1e-9


def test_directions_per_chunk_sets_the_chunks(monkeypatch) -> None:
    model, x = _mlp(3), torch.randn(4, 3, dtype=torch.float64)
    blocks = list(_mixed._blocks(Expansion(model, x, 3), 10, directions_per_chunk=3))
    assert {part.chunk_size for _, _, part in blocks} == {3}
    seen = []
    original = _mixed._blocks
    monkeypatch.setattr(
        _mixed, "_blocks", lambda e, n, chunk: seen.append(chunk) or original(e, n, chunk)
    )
    actual = hope_attr.mixed_derivatives(model, x, 3, directions_per_chunk=3, route="jets")
    assert seen == [3]
    assert _relative_error(actual, _nested_jacfwd(model, x, 3)) <= 1e-9
    with pytest.warns(FutureWarning, match="directions_per_chunk"):
        old_name = hope_attr.mixed_derivatives(model, x, 3, internal_batch_size=3, route="jets")
    assert seen == [3, 3]
    assert _relative_error(old_name, actual) <= 1e-13


def test_unknown_route_is_refused_before_the_model_runs() -> None:
    def never_called(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran")

    with pytest.raises(ValueError, match="route must be one of"):
        hope_attr.mixed_derivatives(never_called, torch.zeros(1, 2), 2, route="fast")


def _scaled(weights: torch.Tensor, derivatives: list[torch.Tensor]) -> list[torch.Tensor]:
    """``weights[b] * d`` for derivative tensors ``(B, *O, p, ..., p)``."""
    return [weights.reshape(-1, *([1] * (d.dim() - 1))) * d for d in derivatives]


def test_function_with_a_batch_sized_constant_runs_in_one_block() -> None:
    # f works only on the whole batch: a block of fewer points would not broadcast (or, for one
    # point, would silently broadcast to the whole batch). It must fall back to one block.
    model, x = _mlp(2), torch.randn(5, 2, dtype=torch.float64)
    weights = torch.linspace(1.0, 2.0, 5, dtype=torch.float64)[:, None]
    f = lambda z: model(z) * weights  # noqa: E731
    with hope_attr.resources(mixed_block_bytes=1):
        assert len(list(_mixed._blocks(Expansion(f, x, 3), 4, None))) == 1
        actual = hope_attr.mixed_derivatives(f, x, 3, route="jets")
    expected = _scaled(weights, _nested_jacfwd(model, x, 3))
    assert _relative_error(actual, expected) <= 1e-9


def test_per_example_additional_arguments() -> None:
    model, x = _mlp(2), torch.randn(5, 2, dtype=torch.float64)
    weights = torch.linspace(1.0, 2.0, 5, dtype=torch.float64)[:, None]
    with hope_attr.resources(mixed_block_bytes=1):
        actual = hope_attr.mixed_derivatives(
            lambda z, w: model(z) * w, x, 3, additional_forward_args=(weights,), route="jets"
        )
    assert _relative_error(actual, _scaled(weights, _nested_jacfwd(model, x, 3))) <= 1e-9


@pytest.mark.parametrize("method", ["jets", "mlp"])
def test_float32_blocks_match_float64(method: str) -> None:
    model, x = _mlp(5), torch.randn(300, 5, dtype=torch.float64)
    single = hope_attr.mixed_derivatives(model.float(), x.float(), 3, route=method)
    double = hope_attr.mixed_derivatives(model.double(), x, 3, route=method)
    assert _relative_error([s.double() for s in single], double) <= 1e-5


def test_output_independent_of_the_inputs_gives_zeros_per_block() -> None:
    x = torch.randn(6, 2, dtype=torch.float64)
    with hope_attr.resources(mixed_block_bytes=1):
        derivatives = hope_attr.mixed_derivatives(
            lambda z: (z > 100).to(z.dtype) + 2.0, x, 2, route="jets"
        )
    assert [tuple(d.shape) for d in derivatives] == [(6, 2, 2), (6, 2, 2, 2)]
    assert all(d.abs().max() == 0 for d in derivatives)


def test_the_resource_policy_sets_the_default_budgets() -> None:
    model, x = _mlp(3), torch.zeros(2, 3, dtype=torch.float64)
    # 2 points x 3 outputs x (3 + 9 + 27) entries x 8 bytes = 1,872 bytes of derivatives
    with hope_attr.resources(max_mixed_result_bytes=1872):
        assert len(hope_attr.mixed_derivatives(model, x, 3)) == 3
    with hope_attr.resources(max_mixed_result_bytes=1871):
        with pytest.raises(ValueError, match="1,872 bytes"):
            hope_attr.mixed_derivatives(model, x, 3)
        assert len(hope_attr.mixed_derivatives(model, x, 3, max_bytes=1872)) == 3
    # 10 directions x 3^2 x 2 points x 3 outputs = 540 multiply-adds at the least
    with hope_attr.resources(max_mixed_work=540):
        assert len(hope_attr.mixed_derivatives(model, x, 3)) == 3
    with hope_attr.resources(max_mixed_work=539):
        with pytest.raises(ValueError, match="multiply-adds"):
            hope_attr.mixed_derivatives(model, x, 3)
