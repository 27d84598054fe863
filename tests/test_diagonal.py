"""The paper's one-sweep rule (method="diagonal"): exact where the theory says, wrong beyond."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr import HOPEAttribution
from hope_attr.attribution.diagonal import diagonal_coefficients
from hope_attr.engine import registry as _registry
from hope_attr.engine.expansion import Expansion
from tests.oracle import relative_error, unmixed_reference


def _net(*layers: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*layers).double().eval()


def _diagonal_derivatives(model: nn.Module, x: torch.Tensor, order: int) -> torch.Tensor:
    coefficients = diagonal_coefficients(Expansion(model, x, order))[0]
    factorials = torch.cumprod(torch.arange(1, order + 1, dtype=x.dtype), 0)
    return coefficients * factorials.reshape(order, *([1] * (coefficients.dim() - 1)))


class Sin(nn.Module):
    """A user's activation module: one elementwise torch function of its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class SinOfDouble(nn.Module):
    """Not one elementwise function of its input (a product first): the rule cannot see it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(2 * x)


ONE_HIDDEN_LAYER = {
    "tanh MLP": (lambda: _net(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3)), (2, 4)),
    "user's sin module": (lambda: _net(nn.Linear(4, 5), Sin(), nn.Linear(5, 2)), (2, 4)),
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


def test_nested_sequentials_and_pass_through_layers_are_walked() -> None:
    # The same layers as "tanh MLP", nested and with eval-mode dropout/identity in between.
    flat = ONE_HIDDEN_LAYER["tanh MLP"][0]()
    nested = nn.Sequential(
        nn.Sequential(flat[0], nn.Dropout(0.5)), nn.Sequential(nn.Identity(), flat[1]), flat[2]
    ).eval()
    x = torch.rand(2, 4, dtype=torch.float64)
    actual = _diagonal_derivatives(nested, x, 4)
    assert relative_error(actual, unmixed_reference(flat, x, 4)) <= 1e-9


class Chain(nn.Module):
    """Calls its layers in order, but through its own forward: not a plain nn.Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


class HalfLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * super().forward(x)


class RuledTanh(nn.Tanh):
    """Computes tanh (no forward of its own), but a user's rule is registered for it."""


def _hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[1].register_forward_hook(lambda module, args, output: 2.0 * output)
    return model


REFUSED = {
    "a model with its own forward": (Chain, r"got Chain \(a model with its own forward\)"),
    "a function": (lambda: lambda x: x.sum(1, keepdim=True), r"got function \(a function\)"),
    "an unsupported layer": (
        lambda: nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
        r"layer '1' is a LayerNorm, which the rule has no backward for",
    ),
    "an unsupported layer in a nested Sequential": (
        lambda: nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Tanh(), nn.Softmax(dim=1))),
        r"layer '1.1' is a Softmax",
    ),
    "a module of one's own that is not one elementwise call": (
        lambda: nn.Sequential(nn.Linear(3, 4), SinOfDouble(), nn.Linear(4, 2)),
        r"layer '1' is a SinOfDouble, which the rule has no backward for",
    ),
    "a subclass with its own forward": (
        lambda: nn.Sequential(HalfLinear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
        r"layer '0' is a HalfLinear, a subclass of Linear with its own forward",
    ),
    "a user's module rule": (
        lambda: nn.Sequential(nn.Linear(3, 4), RuledTanh(), nn.Linear(4, 2)),
        r"layer '1' \(RuledTanh\) meets a Taylor rule registered for RuledTanh",
    ),
    "a hook": (_hooked, r"module hooks"),
}


@pytest.fixture
def tanh_rule():
    hope_attr.register_rule(RuledTanh)(lambda module, x: 2.0 * torch.tanh(x))
    yield
    hope_attr.unregister_rule(RuledTanh)


@pytest.mark.usefixtures("tanh_rule")
@pytest.mark.parametrize("name", list(REFUSED))
def test_models_outside_the_rule_are_refused_with_the_fix(name: str) -> None:
    make, message = REFUSED[name]
    model = make()
    if isinstance(model, nn.Module):
        model = model.double().eval()
    x = torch.rand(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=message) as error:
        HOPEAttribution(model, order=2, method="diagonal").attribute(x, target=0)
    assert "plain nn.Sequential" in str(error.value)  # what is supported
    assert "Use method='exact'" in str(error.value)  # and the fix
    # The exact method takes every one of them.
    exact = HOPEAttribution(model, order=2).attribute(x, baselines=0.9 * x, target=0)
    assert exact.shape == x.shape


def test_a_user_function_rule_for_a_layer_is_refused() -> None:
    # The rule backpropagates through Linear with powers of its weight: a rule of the user's for
    # F.linear would be ignored, so the layer is refused.
    builtin = _registry.function_rule(nn.functional.linear)
    hope_attr.register_rule(nn.functional.linear, override=True)(
        lambda *args, **kwargs: builtin(*args, **kwargs)
    )
    try:
        make, shape = ONE_HIDDEN_LAYER["tanh MLP"]
        with pytest.raises(ValueError, match=r"layer '0' \(Linear\) meets a Taylor rule"):
            _diagonal_derivatives(make(), torch.rand(*shape, dtype=torch.float64), 2)
    finally:
        hope_attr.register_rule(nn.functional.linear, override=True)(builtin)


def test_in_place_activations_do_not_change_the_kept_inputs() -> None:
    # ELU(inplace=True) overwrites its input, which the rule keeps as the layer's input (the
    # activation's table is taken there): the layer must run on a copy.
    plain = _net(nn.Linear(4, 5), nn.ELU(), nn.Linear(5, 2))
    in_place = nn.Sequential(plain[0], nn.ELU(inplace=True), plain[2])
    x = torch.randn(3, 4, dtype=torch.float64)
    actual = _diagonal_derivatives(in_place, x, 4)
    torch.testing.assert_close(actual, _diagonal_derivatives(plain, x, 4), rtol=0, atol=0)
    assert relative_error(actual, unmixed_reference(plain, x, 4)) <= 1e-9  # one hidden layer
