"""The fast path for a plain ``nn.Sequential``: its layers' forwards called in turn, no tracing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.engine import sequential as _sequential
from tests.oracle import relative_error, unmixed_reference


class Doubled(nn.Module):  # a custom layer: its forward runs on jets
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.tanh(x)


class Residual(nn.Sequential):  # a Sequential with its own forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


TANH = nn.Tanh()
CASES = {
    "flat": lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
    "nested": lambda: nn.Sequential(
        nn.Linear(3, 4), nn.Sequential(nn.Sigmoid(), nn.Sequential(nn.Linear(4, 4))), nn.GELU()
    ),
    "module used twice": lambda: nn.Sequential(TANH, nn.Linear(3, 3), TANH),
    "custom layer": lambda: nn.Sequential(nn.Linear(3, 3), Doubled()),
}


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many layers each run of the fast path walked (a spy on ``sequential.run``)."""
    counts: list[int] = []
    run = _sequential.run

    def spy(forward_func, layers, value, observe=None):  # noqa: ANN001, ANN202
        counts.append(len(layers))
        return run(forward_func, layers, value, observe)

    monkeypatch.setattr(_sequential, "run", spy)
    return counts


def _leaves(model: nn.Module) -> list[nn.Module]:
    """The layers in call order, the slow obvious way: a recursive walk of the containers."""
    if type(model) is nn.Sequential:
        return [leaf for child in model._modules.values() for leaf in _leaves(child)]
    return [model]


@pytest.mark.parametrize("name", list(CASES))
def test_plain_sequentials_walk_their_layers_exactly(name: str, walks: list[int]) -> None:
    model = CASES[name]().double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    layers = _sequential.plain_layers(model)
    assert [module for _, module in layers] == _leaves(model)
    assert all(model.get_submodule(path) is module for path, module in layers)
    actual = hope_attr.unmixed_derivatives(model, x, 4)
    assert walks and set(walks) == {len(layers)}  # the primal pass and every chunk walked
    assert relative_error(actual, unmixed_reference(model, x, 4)) <= 1e-9


def test_other_models_run_their_own_forward(walks: list[int]) -> None:
    model = Residual(nn.Linear(3, 3), nn.Tanh()).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    assert _sequential.plain_layers(model) is None
    actual = hope_attr.unmixed_derivatives(model, x, 4)
    assert walks == []
    assert relative_error(actual, unmixed_reference(model, x, 4)) <= 1e-9


def test_a_hooked_sequential_runs_through_its_hooks(walks: list[int]) -> None:
    """A forward hook must see the layer run: the walk would skip it."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    seen: list[object] = []
    handle = model[1].register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        x = torch.randn(2, 3, dtype=torch.float64)
        actual = hope_attr.unmixed_derivatives(model, x, 3)
    finally:
        handle.remove()
    assert walks == [] and any(isinstance(v, hope_attr.Jet) for v in seen)
    assert relative_error(actual, unmixed_reference(model, x, 3)) <= 1e-12


def test_cached_layers_follow_changes_to_the_model_and_the_rules(walks: list[int]) -> None:
    """The layer list is cached per model: replacing a layer, or registering a rule for a module
    type, must be seen by the next call; a user's module rule is what the walk runs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    hope_attr.unmixed_derivatives(model, x, 3)
    model[1] = nn.Sigmoid()
    actual = hope_attr.unmixed_derivatives(model, x, 3)
    assert relative_error(actual, unmixed_reference(model, x, 3)) <= 1e-12

    class Cube(nn.Module):
        def forward(self, h):
            return h * h * h

    model[1] = Cube()
    calls: list[int] = []

    def cube_rule(module: nn.Module, h: hope_attr.Jet) -> hope_attr.Jet:
        calls.append(1)
        return h * h * h

    hope_attr.register_rule(Cube)(cube_rule)
    try:
        actual = hope_attr.unmixed_derivatives(model, x, 3)
        assert calls  # the walk handed the layer to the user's rule
        assert relative_error(actual, unmixed_reference(model, x, 3)) <= 1e-12
    finally:
        hope_attr.unregister_rule(Cube)
    calls.clear()
    actual = hope_attr.unmixed_derivatives(model, x, 3)
    assert not calls and relative_error(actual, unmixed_reference(model, x, 3)) <= 1e-12
