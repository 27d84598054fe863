"""The MLP path of mixed partials (hope_attr/derivatives/mlp.py) against nested
torch.func.jacfwd, and when the path declines (the jets then run the model as written)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.derivatives import mixed as _mixed
from hope_attr.derivatives import mlp as _mlp_taylor
from hope_attr.engine import registry as _registry
from hope_attr.engine.expansion import Expansion
from hope_attr.rules.elementwise import ACTIVATIONS as SPECS
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
    "a Linear subclass without its own forward": lambda p, o: nn.Sequential(
        PlainLinear(p, 5), nn.ReLU6(), nn.Linear(5, o)
    ).to(DTYPE),
}


class PlainLinear(nn.Linear):
    """Computes what nn.Linear computes: the path may take it."""


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
    coefficients = _mixed.normalized_coefficients(expansion, route="mlp")
    actual = _mixed.derivative_tensors(coefficients, p)
    default = hope_attr.mixed_derivatives(model, x, order)  # whichever route it picks
    expected = _nested_jacfwd(model, x, order)
    for k, (a, d, e) in enumerate(zip(actual, default, expected, strict=True), start=1):
        assert a.shape == d.shape == (batch, outputs, *([p] * k))
        scale = e.abs().max().clamp_min(1e-12)  # orders a ReLU or a linear chain zero out
        assert ((a - e).abs().max() / scale).item() <= 1e-9, (k, name)
        assert ((d - e).abs().max() / scale).item() <= 1e-9, (k, name)


def test_blocks_of_points_give_the_same_numbers(monkeypatch) -> None:
    model, x = CHAINS["tanh, tanh"](3, 2), torch.randn(11, 3, dtype=DTYPE)
    whole = _mixed.normalized_coefficients(Expansion(model, x, 3), route="mlp")
    blocks = []
    original = _mlp_taylor._expand_block
    monkeypatch.setattr(
        _mlp_taylor, "_expand_block", lambda s, x, n: blocks.append(len(x)) or original(s, x, n)
    )
    with hope_attr.resources(mlp_block_bytes=1):  # one point per block
        pointwise = _mixed.normalized_coefficients(Expansion(model, x, 3), route="mlp")
    assert blocks == [1] * 11
    assert _relative_error(pointwise, whole) <= 1e-13


def test_float32_matches_float64() -> None:
    model, x = CHAINS["tanh, tanh"](5, 2), torch.randn(50, 5, dtype=DTYPE)
    double = _mixed.normalized_coefficients(Expansion(model, x, 3), route="mlp")
    single = _mixed.normalized_coefficients(Expansion(model.float(), x.float(), 3), route="mlp")
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


class Scaled(nn.Linear):
    """A Linear subclass with its own forward and no rule: the path must not take it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * super().forward(x)


class Echo(nn.Identity):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * x


@pytest.fixture
def custom_rules():
    hope_attr.register_rule(ScaledLinear)(
        lambda module, x: 2 * nn.functional.linear(x, module.weight, module.bias)
    )
    hope_attr.register_rule(Echo)(lambda module, x: 3 * x)
    yield
    _registry.unregister_rule(ScaledLinear)
    _registry.unregister_rule(Echo)


def _hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    model[1].register_forward_hook(lambda module, args, output: 2.0 * output)
    return model


NOT_CHAINS = {
    "Linear subclass with its own rule": lambda: nn.Sequential(
        ScaledLinear(3, 4), nn.Tanh(), nn.Linear(4, 1)
    ),
    "Linear subclass with its own forward": lambda: nn.Sequential(
        Scaled(3, 4), nn.Tanh(), nn.Linear(4, 1)
    ),
    "a module calling its layers in order (its own forward)": lambda: Layered(3, 2),
    "a forward hook that changes an activation": _hooked,
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
    with pytest.raises(ValueError, match="route='mlp' needs a plain nn.Sequential"):
        _mixed.normalized_coefficients(Expansion(model, x, 3), route="mlp")
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
def test_activation_tables_are_the_derivatives(module: nn.Module) -> None:
    """The table the path composes with (read off directly, or the rule's series of a unit jet)
    holds the derivatives of the module itself; a table read off directly is also what the rule
    gives a unit jet."""
    z = torch.linspace(-2.95, 3.05, 13, dtype=DTYPE).reshape(1, 13)  # no kink on the grid
    spec = SPECS[_mlp_taylor.forward_owner(type(module))]
    table = _mlp_taylor._table(_mlp_taylor._Step(module, spec), z, 4)
    torch.testing.assert_close(table[0], module(z), rtol=1e-15, atol=0)
    expected = _nested_jacfwd(lambda v: module(v), z.reshape(13, 1), 4)  # (13, 1, 1, ...)
    for k, derivative in enumerate(expected, start=1):
        torch.testing.assert_close(
            table[k] * math.factorial(k), derivative.reshape(1, 13), rtol=1e-9, atol=1e-12
        )
    direct = None if spec.table is None else spec.table(z, 4, **spec.settings(module))
    if direct is not None:
        unit = hope_attr.Jet(z, torch.ones(1, 1, 1, 13, dtype=DTYPE), 4)
        rule = spec.rule(unit, **spec.settings(module))
        for a, e in zip(direct, [rule.primal, *rule.full_series()[:, 0].unbind(0)], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


class _DoubledTanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.tanh(x)


def _with_doubled_tanh(model: nn.Sequential) -> nn.Sequential:
    """The reference model: every Tanh computing what the user's rule says, 2 tanh."""
    layers = [_DoubledTanh() if isinstance(m, nn.Tanh) else m for m in model]
    return nn.Sequential(*layers)


@pytest.fixture
def doubled_tanh_module_rule():
    hope_attr.register_rule(nn.Tanh)(lambda module, x: 2.0 * torch.tanh(x))
    yield
    _registry.unregister_rule(nn.Tanh)


@pytest.fixture
def doubled_tanh_function_rule():
    builtin = _registry.function_rule(torch.tanh)
    hope_attr.register_rule(torch.tanh, override=True)(lambda x: 2.0 * builtin(x))
    yield
    hope_attr.register_rule(torch.tanh, override=True)(builtin)


@pytest.fixture
def own_linear_rule():
    # The same numbers as the built-in rule, but the user's: the path must not bypass it.
    builtin = _registry.function_rule(nn.functional.linear)
    calls = []
    hope_attr.register_rule(nn.functional.linear, override=True)(
        lambda *args, **kwargs: calls.append(1) or builtin(*args, **kwargs)
    )
    yield calls
    hope_attr.register_rule(nn.functional.linear, override=True)(builtin)


@pytest.mark.parametrize("fixture", ["doubled_tanh_module_rule", "doubled_tanh_function_rule"])
def test_a_user_rule_for_an_activation_sends_the_model_to_the_jets(fixture: str, request) -> None:
    # The path would compose with the built-in table and ignore the user's rule: it declines,
    # and the default route follows the rule (2 tanh), not the module (tanh).
    model, x = CHAINS["tanh, tanh"](3, 1), torch.randn(4, 3, dtype=DTYPE)
    request.getfixturevalue(fixture)
    assert _mlp_taylor.chain_of(Expansion(model, x, 3)) is None
    with pytest.raises(ValueError, match="no Taylor rule of your own"):
        _mixed.normalized_coefficients(Expansion(model, x, 3), route="mlp")
    actual = hope_attr.mixed_derivatives(model, x, 3)
    expected = _nested_jacfwd(_with_doubled_tanh(model), x, 3)
    assert _relative_error(actual, expected) <= 1e-9


def test_a_user_rule_for_linear_sends_the_model_to_the_jets(own_linear_rule: list) -> None:
    model, x = CHAINS["tanh, tanh"](5, 1), torch.randn(4, 5, dtype=DTYPE)
    assert _mlp_taylor.chain_of(Expansion(model, x, 3)) is None
    own_linear_rule.clear()
    actual = hope_attr.mixed_derivatives(model, x, 3)
    assert own_linear_rule  # the user's rule ran
    assert _relative_error(actual, _nested_jacfwd(model, x, 3)) <= 1e-9
