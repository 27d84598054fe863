"""The MLP path of mixed partials (hope_attr/derivatives/mlp.py) against nested
torch.func.jacfwd."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.derivatives import mixed as _mixed
from hope_attr.derivatives import mlp as _mlp_taylor
from hope_attr.engine.expansion import Expansion
from tests.test_mixed import _nested_jacfwd, _relative_error

DTYPE = torch.float64


def _chain(p: int, activations: list[nn.Module], outputs: int, head: nn.Module | None = None):
    torch.manual_seed(p + len(activations) + outputs)
    layers: list[nn.Module] = []
    width = p
    for activation in activations:
        layers += [nn.Linear(width, 7), activation]
        width = 7
    layers.append(nn.Linear(width, outputs))
    if head is not None:
        layers.append(head)
    return nn.Sequential(*layers).to(DTYPE).eval()


CHAINS = {
    "tanh, tanh": lambda p, o: _chain(p, [nn.Tanh(), nn.Tanh()], o),
    "three layers, mixed activations": lambda p, o: _chain(
        p, [nn.Sigmoid(), nn.GELU(), nn.Softplus(beta=2.0)], o
    ),
    "silu, mish, elu": lambda p, o: _chain(p, [nn.SiLU(), nn.Mish(), nn.ELU(0.5)], o),
    "relu then tanh (random points: no kink)": lambda p, o: _chain(p, [nn.ReLU(), nn.Tanh()], o),
    "activation on the output": lambda p, o: _chain(p, [nn.Tanh()], o, head=nn.Sigmoid()),
    "identity and dropout (eval) in between": lambda p, o: (
        nn.Sequential(nn.Linear(p, 6), nn.Dropout(0.3), nn.Tanh(), nn.Identity(), nn.Linear(6, o))
        .to(DTYPE)
        .eval()
    ),
    "no activation": lambda p, o: nn.Sequential(nn.Linear(p, 4), nn.Linear(4, o)).to(DTYPE),
    "starts with an activation, two in a row, no bias": lambda p, o: nn.Sequential(
        nn.Sigmoid(), nn.Linear(p, 5, bias=False), nn.Tanh(), nn.Softplus(), nn.Linear(5, o)
    ).to(DTYPE),
    "nested Sequential, alpha dropout": lambda p, o: (
        nn.Sequential(
            nn.Sequential(nn.Linear(p, 5), nn.Tanh()), nn.AlphaDropout(0.2), nn.Linear(5, o)
        )
        .to(DTYPE)
        .eval()
    ),
    "a module calling its layers in order (traced by fx)": lambda p, o: Layered(p, o).to(DTYPE),
}


class Layered(nn.Module):
    def __init__(self, p: int, outputs: int) -> None:
        super().__init__()
        self.first, self.act, self.second = nn.Linear(p, 6), nn.GELU(), nn.Linear(6, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.act(self.first(x)))


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
@pytest.mark.parametrize(("p", "outputs", "batch"), [(1, 1, 3), (2, 3, 1), (5, 1, 3), (4, 2, 2)])
@pytest.mark.parametrize("name", list(CHAINS))
def test_mlp_path_matches_nested_jacfwd(
    name: str, p: int, outputs: int, batch: int, order: int
) -> None:
    model = CHAINS[name](p, outputs)
    x = torch.randn(batch, p, dtype=DTYPE)
    expansion = Expansion(model, x, order)
    steps = _mlp_taylor.chain_of(expansion)
    assert steps is not None
    coefficients = _mixed.normalized_coefficients(expansion, method="mlp")
    actual = _mixed.derivative_tensors(coefficients, p)
    expected = _nested_jacfwd(model, x, order)
    for k, (a, e) in enumerate(zip(actual, expected, strict=True), start=1):
        assert a.shape == (batch, outputs, *([p] * k))
        scale = e.abs().max().clamp_min(1e-12)  # orders a ReLU or a linear chain zero out
        assert ((a - e).abs().max() / scale).item() <= 1e-9, (k, name)


def test_blocks_of_points_give_the_same_numbers(monkeypatch) -> None:
    model, x = CHAINS["tanh, tanh"](3, 2), torch.randn(11, 3, dtype=DTYPE)
    whole = _mixed.normalized_coefficients(Expansion(model, x, 3), method="mlp")
    monkeypatch.setattr(_mlp_taylor, "_BLOCK_BYTES", 1)  # one point per block
    pointwise = _mixed.normalized_coefficients(Expansion(model, x, 3), method="mlp")
    assert _relative_error(pointwise, whole) <= 1e-13


def test_float32_matches_float64() -> None:
    model, x = CHAINS["tanh, tanh"](5, 2), torch.randn(50, 5, dtype=DTYPE)
    double = _mixed.normalized_coefficients(Expansion(model, x, 3), method="mlp")
    single = _mixed.normalized_coefficients(Expansion(model.float(), x.float(), 3), method="mlp")
    assert _relative_error([s.double() for s in single], double) <= 1e-5


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.inner(x))


class ScaledLinear(nn.Linear):
    """A Linear subclass with its own forward and its own rule: this path must not use it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class Echo(nn.Identity):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * x


@pytest.fixture
def custom_rules():
    from hope_attr.engine import registry as _registry

    hope_attr.register_rule(ScaledLinear)(
        lambda module, x: 2 * nn.functional.linear(x, module.weight, module.bias)
    )
    hope_attr.register_rule(Echo)(lambda module, x: 3 * x)
    yield
    _registry.unregister_rule(ScaledLinear)
    _registry.unregister_rule(Echo)


NOT_CHAINS = {
    "Linear subclass with its own rule": lambda: nn.Sequential(
        ScaledLinear(3, 4), nn.Tanh(), nn.Linear(4, 1)
    ),
    "Identity subclass with its own rule": lambda: nn.Sequential(
        nn.Linear(3, 4), Echo(), nn.Tanh(), nn.Linear(4, 1)
    ),
    "residual": lambda: Residual(),
    "functional activation": lambda: lambda x: torch.tanh(nn.functional.linear(x, W)),
    "softmax head (not elementwise)": lambda: nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1)),
    "image-shaped output": lambda: nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (2, 2))),
}
W = torch.randn(3, 3, dtype=DTYPE)


@pytest.mark.usefixtures("custom_rules")
@pytest.mark.parametrize("name", list(NOT_CHAINS))
def test_other_models_are_refused_and_auto_uses_the_jets(name: str) -> None:
    model = NOT_CHAINS[name]()
    if isinstance(model, nn.Module):
        model = model.to(DTYPE).eval()
    x = torch.randn(2, 3, dtype=DTYPE)
    assert _mlp_taylor.chain_of(Expansion(model, x, 3)) is None
    with pytest.raises(ValueError, match="chain of nn.Linear"):
        _mixed.normalized_coefficients(Expansion(model, x, 3), method="mlp")
    actual = hope_attr.mixed_derivatives(model, x, 3)
    assert _relative_error(actual, _nested_jacfwd(model, x, 3)) <= 1e-9


def test_auto_picks_the_mlp_path_for_low_orders_and_few_outputs(monkeypatch) -> None:
    calls = []
    original = _mlp_taylor.normalized_coefficients
    monkeypatch.setattr(
        _mlp_taylor,
        "normalized_coefficients",
        lambda *args: calls.append(args) or original(*args),
    )
    model = CHAINS["tanh, tanh"](5, 1)
    x = torch.randn(4, 5, dtype=DTYPE)
    actual = hope_attr.mixed_derivatives(model, x, 3)
    assert len(calls) == 1
    assert _relative_error(actual, _nested_jacfwd(model, x, 3)) <= 1e-9
    hope_attr.mixed_derivatives(model, x, _mlp_taylor._MAX_ORDER + 1)  # high order: the jets
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("p", "outputs", "order", "expected"),
    [
        (5, 1, 3, True),  # jets 3 * 35 = 105 coefficients, this route 20: 5.25 times fewer
        (5, 4, 3, True),  # the same with 4 outputs
        (5, 8, 3, False),  # more outputs than _MAX_OUTPUTS
        (8, 1, 2, True),  # 2 * 36 = 72 against 8
        (3, 1, 3, False),  # 3 * 10 = 30 against 9: only 3.3 times fewer
        (2, 1, 3, False),  # 3 * 4 = 12 against 5
        (1, 1, 2, False),  # one variable: 2 against 1
        (5, 1, 5, False),  # above the highest order
    ],
)
def test_route_choice(p: int, outputs: int, order: int, expected: bool) -> None:
    model = _chain(p, [nn.Tanh()], outputs)
    expansion = Expansion(model, torch.randn(2, p, dtype=DTYPE), order)
    assert _mlp_taylor.is_cheaper(expansion) is expected


ACTIVATIONS = [
    nn.Tanh(),
    nn.Sigmoid(),
    nn.Softplus(beta=2.0, threshold=1.0),  # a threshold inside the sampled range
    nn.ELU(0.5),
    nn.SELU(),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.SiLU(),
    nn.Mish(),
    nn.ReLU(),
    nn.LeakyReLU(0.1),
    nn.Hardtanh(-0.5, 0.5),
    nn.ReLU6(),
]


@pytest.mark.parametrize("module", ACTIVATIONS, ids=lambda m: repr(m))
def test_activation_tables_are_the_rules_series(module: nn.Module) -> None:
    """The table read off directly (where there is one) is what the rule gives a unit jet, and
    either is the derivatives of the module itself."""
    z = torch.linspace(-2.95, 3.05, 13, dtype=DTYPE).reshape(1, 13)  # no kink on the grid
    from hope_attr.rules import elementwise as _rules_elementwise

    direct = _rules_elementwise.activation_table(module, z, 4)
    # Plain tables are read off directly; compositions come from the rule.
    composition = (
        isinstance(module, (nn.SiLU, nn.Mish)) or getattr(module, "approximate", "") == "tanh"
    )
    assert (direct is None) == composition
    unit = hope_attr.Jet(z, torch.ones(1, 1, 1, 13, dtype=DTYPE), 4)
    rule = _registry_rule(module)(module, unit)
    through_rule = [rule.primal, *rule.full_series()[:, 0].unbind(0)]
    if direct is not None:
        for a, e in zip(direct, through_rule, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)
    table = _mlp_taylor._table(module, z, 4)
    torch.testing.assert_close(table[0], module(z), rtol=1e-15, atol=0)
    expected = _nested_jacfwd(lambda v: module(v), z.reshape(13, 1), 4)  # (13, 1, 1, ...)
    for k, derivative in enumerate(expected, start=1):
        torch.testing.assert_close(
            table[k] * math.factorial(k), derivative.reshape(1, 13), rtol=1e-9, atol=1e-12
        )


def test_a_user_rule_for_an_activation_is_used(monkeypatch) -> None:
    from hope_attr.engine import registry as _registry
    from hope_attr.rules import elementwise as _rules_elementwise

    def doubled_tanh(module: nn.Tanh, x: hope_attr.Jet) -> hope_attr.Jet:
        return 2.0 * torch.tanh(x)

    monkeypatch.setitem(_registry._MODULE_RULES, nn.Tanh, doubled_tanh)
    z = torch.randn(2, 3, dtype=DTYPE)
    assert _rules_elementwise.activation_table(nn.Tanh(), z, 3) is None
    table = _mlp_taylor._table(nn.Tanh(), z, 3)
    torch.testing.assert_close(table[1], 2.0 * (1 - torch.tanh(z) ** 2))
    # Both routes follow the user's rule, so they agree with each other (not with the module).
    model, x = CHAINS["tanh, tanh"](3, 1), torch.randn(4, 3, dtype=DTYPE)
    jets = _mixed.normalized_coefficients(Expansion(model, x, 3), method="jets")
    mlp = _mixed.normalized_coefficients(Expansion(model, x, 3), method="mlp")
    assert _relative_error(mlp, jets) <= 1e-12


def _registry_rule(module: nn.Module):
    from hope_attr.engine import registry as _registry

    return _registry.module_rule(type(module))
