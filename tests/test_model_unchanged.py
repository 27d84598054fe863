"""Computing derivatives leaves the user's model and inputs exactly as they were.

Checked after successful and failing calls: parameters and buffers (values, identity,
``requires_grad``, no ``.grad``), ``training`` flags, hooks (per module and global), the attributes
of every module, and the inputs. Also: the forms a forward function can take (lambda over a model,
bound ``model.forward``, a custom module with functional calls, residuals and a reused layer) all
match the oracle.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_globals
from torch import nn

import hope_attr
from tests.oracle import relative_error, unmixed_reference

ORDER = 4
TOLERANCE = 1e-9
DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_GLOBAL_HOOK_DICTS = sorted(
    name
    for name in dir(module_globals)
    if name.startswith("_global") and isinstance(getattr(module_globals, name), dict)
)


class Block(nn.Module):
    """Functional calls, a residual connection and a layer used twice."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.shared = nn.Linear(width, width)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, width))
        self.register_buffer("shift", torch.linspace(-0.2, 0.2, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(x)) * self.scale + self.shift
        h = F.gelu(self.shared(h))  # the same Linear again
        return x + F.silu(h)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm1d(2)
        self.act = nn.Softplus()
        self.drop = nn.Dropout(0.3)
        self.flatten = nn.Flatten()
        self.proj = nn.Linear(8, 4)
        self.block = Block(4)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
        self.head.weight.requires_grad_(False)  # a frozen parameter must stay frozen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.act(self.bn(self.conv(x))))
        h = self.block(self.proj(self.flatten(h)))
        return self.head(torch.sin(h) + h)


class WithUnsupportedOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(self.lin(x))  # no Taylor rule


def _net() -> Net:
    torch.manual_seed(0)
    return Net().to(DTYPE).eval()


def _input(shape: tuple[int, ...] = (2, 1, 4), requires_grad: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    return x.requires_grad_(requires_grad)


def _snapshot(model: nn.Module) -> dict[str, Any]:
    tensors = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensors[name] = (
            tensor,  # identity, compared with `is`
            tensor.detach().clone(),
            tensor.requires_grad,
            tensor.grad,
            tensor.dtype,
            tensor.data_ptr(),
        )
    modules = {}
    for name, module in model.named_modules():
        modules[name] = {
            "object": module,
            "training": module.training,
            "attributes": sorted(module.__dict__),
            "children": list(module._modules),
            "parameters": list(module._parameters),
            "buffers": list(module._buffers),
            "hooks": {h: list(getattr(module, h, {})) for h in _HOOK_DICTS},
        }
    return {"tensors": tensors, "modules": modules, "globals": _global_hooks()}


def _global_hooks() -> dict[str, list]:
    return {name: list(getattr(module_globals, name)) for name in _GLOBAL_HOOK_DICTS}


def _assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, (tensor, value, requires_grad, grad, dtype, pointer) in before["tensors"].items():
        now = after["tensors"][name]
        assert now[0] is tensor, f"{name} was replaced"
        assert torch.equal(tensor.detach(), value), f"{name} changed value"
        assert tensor.requires_grad == requires_grad, f"{name} changed requires_grad"
        assert tensor.grad is grad, f"{name} got a .grad"
        assert tensor.dtype == dtype and tensor.data_ptr() == pointer, f"{name} was moved"
    assert after["modules"].keys() == before["modules"].keys(), "submodules added or removed"
    for name, state in before["modules"].items():
        now = after["modules"][name]
        label = name or "the root module"
        assert now["object"] is state["object"], f"{label} was replaced"
        assert now["training"] == state["training"], f"{label} changed training flag"
        assert now["attributes"] == state["attributes"], f"{label} gained/lost attributes"
        assert now["children"] == state["children"], f"{label} gained/lost children"
        assert now["parameters"] == state["parameters"], f"{label} parameters changed"
        assert now["buffers"] == state["buffers"], f"{label} buffers changed"
        assert now["hooks"] == state["hooks"], f"{label} hooks changed"
    assert after["globals"] == before["globals"], "global module hooks changed"


def _assert_input_unchanged(x: torch.Tensor, value: torch.Tensor, requires_grad: bool) -> None:
    assert torch.equal(x.detach(), value)
    assert x.requires_grad == requires_grad
    assert x.grad is None


def test_hook_dicts_exist() -> None:
    # The checks below would pass vacuously if torch renamed these.
    assert {"_forward_hooks", "_forward_pre_hooks", "_backward_hooks"} <= set(vars(nn.Linear(1, 1)))
    assert {"_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"} <= set(
        _GLOBAL_HOOK_DICTS
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.block.train(),
        lambda m: m.proj.register_forward_hook(lambda *a: None),
        lambda m: m.conv.register_forward_pre_hook(lambda *a: None),
        lambda m: m.head.register_full_backward_hook(lambda *a: None),
        lambda m: setattr(m.bn, "_cache", 1),
        lambda m: m.block.add_module("extra", nn.Identity()),
        lambda m: m.head.weight.requires_grad_(True),
        lambda m: m.bn.running_mean.add_(1e-12),
        lambda m: setattr(m.proj, "weight", nn.Parameter(m.proj.weight.detach().clone())),
    ],
    ids=[
        "training",
        "forward hook",
        "pre hook",
        "backward hook",
        "attribute",
        "child",
        "requires_grad",
        "buffer value",
        "parameter identity",
    ],
)
def test_checker_detects_changes(change) -> None:
    # The checks are not vacuous: each kind of change is caught.
    model = _net()
    before = _snapshot(model)
    change(model)
    with pytest.raises(AssertionError):
        _assert_unchanged(model, before)


def test_checker_detects_global_hooks() -> None:
    model = _net()
    before = _snapshot(model)
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        with pytest.raises(AssertionError, match="global"):
            _assert_unchanged(model, before)
    finally:
        handle.remove()


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("directions_per_chunk", [None, 1, 3])
def test_successful_call_leaves_model_and_input_unchanged(
    requires_grad: bool, directions_per_chunk: int | None
) -> None:
    model = _net()
    x = _input(requires_grad=requires_grad)
    x_value = x.detach().clone()
    with torch.no_grad():
        output = model(x_value)
    before = _snapshot(model)
    result = hope_attr.unmixed_derivatives(
        model, x, ORDER, directions_per_chunk=directions_per_chunk
    )
    _assert_unchanged(model, before)
    _assert_input_unchanged(x, x_value, requires_grad)
    assert not result.requires_grad
    # A second call (cached state, if any, must not leak either) and the model still runs.
    hope_attr.unmixed_derivatives(model, x, ORDER)
    _assert_unchanged(model, before)
    _assert_input_unchanged(x, x_value, requires_grad)
    with torch.no_grad():
        torch.testing.assert_close(model(x_value), output, rtol=0, atol=0)


def test_tuple_inputs_and_additional_args_unchanged() -> None:
    model = _net()
    x = _input()
    y = torch.randn(2, 2, dtype=DTYPE, requires_grad=True)
    extra = torch.randn(2, 2, dtype=DTYPE)
    values = (x.clone(), y.detach().clone(), extra.clone())
    before = _snapshot(model)

    def forward(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, flag: bool) -> torch.Tensor:
        out = model(a) * torch.tanh(b)
        return out + c if flag else out

    hope_attr.unmixed_derivatives(forward, (x, y), ORDER, additional_forward_args=(extra, True))
    _assert_unchanged(model, before)
    _assert_input_unchanged(x, values[0], False)
    _assert_input_unchanged(y, values[1], True)
    _assert_input_unchanged(extra, values[2], False)


def _training_model() -> nn.Module:
    model = _net()
    model.train()
    return model


def _dropout_only_training() -> nn.Module:
    model = _net()
    model.drop.train()  # a mixed state must survive too
    return model


FAILING_CALLS: dict[str, tuple[Callable[[], nn.Module], Callable[..., Any], type[Exception]]] = {
    "training mode": (
        _training_model,
        lambda m, x: ((m, x, ORDER), {}),
        hope_attr.TrainingModeError,
    ),
    "one submodule training": (
        _dropout_only_training,
        lambda m, x: ((m, x, ORDER), {}),
        hope_attr.TrainingModeError,
    ),
    "NaN input": (
        _net,
        lambda m, x: ((m, torch.full_like(x, float("nan")), ORDER), {}),
        ValueError,
    ),
    "order 0": (_net, lambda m, x: ((m, x, 0), {}), ValueError),
    "bad directions_per_chunk": (
        _net,
        lambda m, x: ((m, x, ORDER), {"directions_per_chunk": 0}),
        ValueError,
    ),
    "output without batch axis": (
        _net,
        lambda m, x: ((lambda z: m(z).sum(), x, ORDER), {}),
        ValueError,
    ),
}


@pytest.mark.parametrize("case", list(FAILING_CALLS))
def test_failing_call_leaves_model_and_input_unchanged(case: str) -> None:
    make, arguments, error = FAILING_CALLS[case]
    model = make()
    x = _input(requires_grad=True)
    x_value = x.detach().clone()
    before = _snapshot(model)
    args, kwargs = arguments(model, x)
    with pytest.raises(error):
        hope_attr.unmixed_derivatives(*args, **kwargs)
    _assert_unchanged(model, before)
    _assert_input_unchanged(x, x_value, True)


def test_unsupported_op_leaves_model_unchanged() -> None:
    torch.manual_seed(0)
    model = WithUnsupportedOp().to(DTYPE).eval()
    x = _input((2, 3))
    x_value = x.clone()
    before = _snapshot(model)
    with pytest.raises(hope_attr.UnsupportedOperationError):
        hope_attr.unmixed_derivatives(lambda z: model(z), x, ORDER)
    with pytest.raises(hope_attr.UnsupportedOperationError):
        hope_attr.unmixed_derivatives(model, x, ORDER)
    _assert_unchanged(model, before)
    _assert_input_unchanged(x, x_value, False)


def test_user_hooks_are_kept_and_not_called_on_jets() -> None:
    model = _net()
    calls: list[str] = []
    model.proj.register_forward_hook(lambda m, i, o: calls.append("forward"))
    model.proj.register_forward_pre_hook(lambda m, i: calls.append("pre"))
    before = _snapshot(model)
    x = _input()
    hope_attr.unmixed_derivatives(model, x, ORDER)
    _assert_unchanged(model, before)
    model(x)
    assert "forward" in calls and "pre" in calls  # the user's hooks still work


# ============================================================================ forward_func forms
def _oracle(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return unmixed_reference(f, x, ORDER)


FORWARD_FORMS: dict[str, Callable[[Net], Callable[[torch.Tensor], torch.Tensor]]] = {
    "module": lambda model: model,
    "lambda over the model": lambda model: lambda x: model(x) * 2.0 + 1.0,
    "bound model.forward": lambda model: model.forward,
    "lambda using a model's parameters": lambda model: (
        lambda x: torch.tanh(F.linear(x.flatten(1), model.head.weight, model.head.bias))
    ),
    "bound method of a submodule": lambda model: (
        lambda x: model.block.forward(model.proj(model.flatten(model.act(model.bn(model.conv(x))))))
    ),
}


@pytest.mark.parametrize("form", list(FORWARD_FORMS))
def test_forward_func_forms_match_oracle(form: str) -> None:
    model = _net()
    before = _snapshot(model)
    f = FORWARD_FORMS[form](model)
    x = _input()
    actual = hope_attr.unmixed_derivatives(f, x, ORDER)
    expected = _oracle(f, x)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= TOLERANCE
    _assert_unchanged(model, before)


def test_custom_module_with_reuse_and_residual_matches_oracle() -> None:
    torch.manual_seed(3)
    block = Block(3).to(DTYPE).eval()
    before = _snapshot(block)
    x = _input((3, 3))
    actual = hope_attr.unmixed_derivatives(block, x, ORDER)
    assert relative_error(actual, _oracle(block, x)) <= TOLERANCE
    # Bound method of a custom module: the same function, the same numbers.
    bound = hope_attr.unmixed_derivatives(block.forward, x, ORDER)
    torch.testing.assert_close(bound, actual, rtol=0, atol=0)
    _assert_unchanged(block, before)


def test_shared_module_in_two_models() -> None:
    torch.manual_seed(4)
    shared = nn.Linear(3, 3).to(DTYPE)
    first = nn.Sequential(shared, nn.Tanh()).eval()
    second = nn.Sequential(nn.Sigmoid(), shared).eval()
    before = (_snapshot(first), _snapshot(second))

    def f(x: torch.Tensor) -> torch.Tensor:
        return second(first(x)) + first(x)

    x = _input((2, 3))
    actual = hope_attr.unmixed_derivatives(f, x, ORDER)
    assert relative_error(actual, unmixed_reference(f, x, ORDER)) <= TOLERANCE
    _assert_unchanged(first, before[0])
    _assert_unchanged(second, before[1])


@pytest.mark.parametrize("activation", [nn.ELU(inplace=True), nn.ReLU(inplace=True)])
def test_a_first_layer_that_works_in_place_leaves_the_inputs_alone(activation) -> None:
    """The primal pass ran the user's forward on the user's own tensors: an in-place first
    layer overwrote ``x`` (every public call, and reverse mode for the ReLU)."""
    torch.manual_seed(0)
    model = nn.Sequential(activation, nn.Linear(4, 2)).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    before = x.clone()
    hope_attr.unmixed_derivatives(model, x, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hope_attr.HOPEAttribution(model, order=2).attribute(x, target=0)
        hope_attr.HOPEAttribution(model, order=2, method="continuation").attribute(x, target=0)
    hope_attr.mixed_derivatives(model, x, 2)
    hope_attr.expand(model, x[0], 2)
    assert torch.equal(x, before)
