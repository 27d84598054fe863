"""The interpreter's shortcut for ``nn.Sequential``: the same graph ``torch.fx`` traces."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.engine import sequential as _interpreter
from tests.oracle import relative_error, unmixed_reference


class Doubled(nn.Module):  # no rule: traced through by fx
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * torch.tanh(x)


class Residual(nn.Sequential):  # a Sequential with its own forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _steps(traced: _interpreter.TracedGraph) -> list[tuple[str, object]]:
    """Each node as (op, what it calls): modules by identity, since paths may differ."""
    steps = []
    for node in traced.graph.nodes:
        target = traced.get_submodule(node.target) if node.op == "call_module" else node.target
        steps.append((node.op, target if node.op != "placeholder" else None))
    return steps


TANH = nn.Tanh()
CASES = {
    "flat": lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)),
    "nested": lambda: nn.Sequential(
        nn.Linear(3, 4), nn.Sequential(nn.Sigmoid(), nn.Sequential(nn.Linear(4, 4))), nn.GELU()
    ),
    "module used twice": lambda: nn.Sequential(TANH, nn.Linear(3, 3), TANH),
    "empty": lambda: nn.Sequential(),
}
FALLBACKS = {
    "child without a rule": lambda: nn.Sequential(nn.Linear(3, 3), Doubled()),
    "subclass with its own forward": lambda: Residual(nn.Linear(3, 3), nn.Tanh()),
}


@pytest.mark.parametrize("name", list(CASES))
def test_sequential_chain_is_the_fx_graph(name: str) -> None:
    model = CASES[name]().double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    assert _interpreter._sequential_chain(model) is not None
    shortcut = _interpreter.trace(model, (x,))
    # record_stack_traces always goes through torch.fx
    traced = _interpreter.trace(model, (x,), record_stack_traces=True)
    assert _steps(shortcut) == _steps(traced)
    if len(model):
        actual = hope_attr.unmixed_derivatives(model, x, 4)
        assert relative_error(actual, unmixed_reference(model, x, 4)) <= 1e-9


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_other_modules_are_traced_by_fx(name: str) -> None:
    model = FALLBACKS[name]().double().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    assert _interpreter._sequential_chain(model) is None
    actual = hope_attr.unmixed_derivatives(model, x, 4)
    assert relative_error(actual, unmixed_reference(model, x, 4)) <= 1e-9


def test_cached_chain_follows_changes_to_the_model_and_the_rules() -> None:
    """The Sequential shortcut is cached per model: replacing a layer, or registering a rule
    for a module that had none, must be seen by the next call."""
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
    assert _interpreter.sequential_chain(model, (x,), ()) is None  # no rule: runs eagerly
    hope_attr.register_rule(Cube)(lambda module, h: h * h * h)
    try:
        assert _interpreter.sequential_chain(model, (x,), ()) is not None
        actual = hope_attr.unmixed_derivatives(model, x, 3)
        assert relative_error(actual, unmixed_reference(model, x, 3)) <= 1e-12
    finally:
        hope_attr.unregister_rule(Cube)
    assert _interpreter.sequential_chain(model, (x,), ()) is None
