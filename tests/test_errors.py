"""Bad input fails with errors that name the problem and the fix; the API's options behave.

Error messages are checked for content (what is wrong, where, and what to do), not verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hope_attr
from tests.oracle import relative_error, unmixed_reference, unmixed_reference_tuple

ORDER = 4
TOLERANCE = 1e-9
DTYPE = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DTYPE).eval()


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


# ============================================================================ argument checks
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_inputs_raise_type_error(dtype: torch.dtype) -> None:
    x = torch.ones(2, 3, dtype=dtype)
    with pytest.raises(TypeError) as info:
        hope_attr.unmixed_derivatives(_mlp(), x, ORDER)
    message = str(info.value)
    assert "dtype" in message and str(dtype) in message
    assert ".float()" in message


def test_integer_input_in_tuple_names_its_position() -> None:
    x = (_x(2, 3), torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"inputs\[1\].*\.float\(\)"):
        hope_attr.unmixed_derivatives(lambda a, b: a * b, x, ORDER)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_inputs_raise_value_error(bad: float) -> None:
    x = _x(2, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        hope_attr.unmixed_derivatives(_mlp(), x, ORDER)


@pytest.mark.parametrize("order", [0, -1])
def test_order_below_one_raises_value_error(order: int) -> None:
    with pytest.raises(ValueError, match=r"order must be >= 1") as info:
        hope_attr.unmixed_derivatives(_mlp(), _x(2, 3), order)
    assert str(order) in str(info.value)


@pytest.mark.parametrize("order", [2.0, True, "2", None])
def test_non_int_order_raises_type_error(order: object) -> None:
    with pytest.raises(TypeError, match=r"order must be an int") as info:
        hope_attr.unmixed_derivatives(_mlp(), _x(2, 3), order)
    assert repr(order) in str(info.value)


@pytest.mark.parametrize("size", [0, -2, True, 1.5])
def test_bad_directions_per_chunk_raises_value_error(size: object) -> None:
    with pytest.raises(ValueError, match="directions_per_chunk must be a positive int"):
        hope_attr.unmixed_derivatives(_mlp(), _x(2, 3), ORDER, directions_per_chunk=size)


def test_mismatched_batch_sizes_across_tuple_inputs() -> None:
    with pytest.raises(ValueError, match="batch size") as info:
        hope_attr.unmixed_derivatives(
            lambda a, b: a * b.sum(-1, keepdim=True), (_x(2, 3), _x(3, 1)), 2
        )
    message = str(info.value)
    assert "inputs[1]" in message and "3" in message and "2" in message


def test_non_tensor_and_empty_inputs() -> None:
    with pytest.raises(TypeError, match="torch.Tensor"):
        hope_attr.unmixed_derivatives(_mlp(), [[1.0, 2.0, 3.0]], ORDER)
    with pytest.raises(ValueError, match="empty"):
        hope_attr.unmixed_derivatives(_mlp(), (), ORDER)
    with pytest.raises(ValueError, match="batch axis"):
        hope_attr.unmixed_derivatives(_mlp(), torch.zeros(0, 3, dtype=DTYPE), ORDER)


def test_forward_func_not_callable() -> None:
    with pytest.raises(TypeError, match="forward_func"):
        hope_attr.unmixed_derivatives("model", _x(2, 3), ORDER)


@pytest.mark.parametrize(
    "reduce",
    [
        pytest.param(lambda y: y.sum(), id="sum to a scalar"),
        pytest.param(lambda y: y.sum(0), id="sum over the batch"),
        pytest.param(lambda y: y[0], id="first example only"),
        pytest.param(lambda y: y.mean(0, keepdim=True), id="batch mean kept as axis"),
    ],
)
def test_output_without_batch_axis_raises_value_error(reduce) -> None:
    model = _mlp()
    x = _x(3, 3)  # B = 3 differs from the 2 outputs, so every reduction is detectable
    with pytest.raises(ValueError, match="batch axis") as info:
        hope_attr.unmixed_derivatives(lambda z: reduce(model(z)), x, ORDER)
    assert "B = 3" in str(info.value)


def test_output_not_a_tensor_raises_type_error() -> None:
    model = _mlp()
    with pytest.raises(TypeError, match="one tensor"):
        hope_attr.unmixed_derivatives(lambda z: (model(z), model(z)), _x(2, 3), ORDER)


# ============================================================================ unsupported models
class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return torch.tanh(x)
        return torch.sin(x)


def test_data_dependent_control_flow_takes_the_branch_of_the_expansion_point() -> None:
    # The forward runs eagerly: `if x.sum() > 0` is decided by the primal, as a ReLU's kink is.
    model = nn.Sequential(nn.Linear(3, 3), DataDependent()).to(DTYPE).eval()
    for x in (_x(2, 3).abs() + 1, -_x(2, 3).abs() - 1):
        assert (
            relative_error(
                hope_attr.unmixed_derivatives(model, x, ORDER), unmixed_reference(model, x, ORDER)
            )
            < 1e-10
        )


# Operations chosen for having no Taylor rule (if one is added, pick another one here).
class LgammaActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x + 3.0)


class I0Activation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(x)


class Encoder(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


class WithEncoder(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.encoder = Encoder(act)
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)))


def _unsupported_message(act: nn.Module) -> str:
    model = WithEncoder(act).to(DTYPE).eval()
    with pytest.raises(hope_attr.UnsupportedOperationError) as info:
        hope_attr.unmixed_derivatives(model, _x(2, 3), ORDER)
    return str(info.value)


@pytest.mark.parametrize(
    ("act", "op"), [(LgammaActivation(), "lgamma"), (I0Activation(), "i0")], ids=["lgamma", "i0"]
)
def test_unsupported_op_names_op_place_and_fix(act: nn.Module, op: str) -> None:
    message = _unsupported_message(act)
    assert re.search(rf"\b\w*{op}\b", message), message  # the operation
    assert "encoder.act" in message, message  # the submodule it sits in
    assert "register_rule" in message, message  # the fix


@pytest.mark.parametrize(
    ("act", "target"),
    [(LgammaActivation(), "torch.lgamma"), (I0Activation(), "torch.special.i0")],
    ids=["lgamma", "i0"],
)
def test_unsupported_op_suggests_its_public_name(act: nn.Module, target: str) -> None:
    # The message prints code to paste: its target should be the op as the user wrote it.
    message = _unsupported_message(act)
    assert f"register_rule({target})" in message, message


def test_unsupported_op_source_points_at_user_code() -> None:
    # The message quotes a source line: it must be the user's line, not one inside torch.fx.
    message = _unsupported_message(LgammaActivation())
    assert "return torch.lgamma(x + 3.0)" in message, message
    assert "CapturedTraceback" not in message, message


@pytest.mark.parametrize(
    "module",
    [nn.Dropout(0.2), nn.BatchNorm1d(3), nn.AlphaDropout(0.2)],
    ids=["Dropout", "BatchNorm1d", "AlphaDropout"],
)
def test_training_mode_modules_raise(module: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(3, 3), module, nn.Tanh()).to(DTYPE)
    model.train()
    with pytest.raises(hope_attr.TrainingModeError) as info:
        hope_attr.unmixed_derivatives(model, _x(2, 3), ORDER)
    message = str(info.value)
    assert "model.eval()" in message
    assert type(module).__name__ in message
    model.eval()  # and the fix works
    hope_attr.unmixed_derivatives(model, _x(2, 3), ORDER)


def test_functional_dropout_in_training_raises() -> None:
    class FunctionalDropout(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(torch.tanh(x), 0.3, training=self.training)

    model = FunctionalDropout().train()
    with pytest.raises(hope_attr.TrainingModeError, match=r"model\.eval\(\)"):
        hope_attr.unmixed_derivatives(model, _x(2, 3), ORDER)
    model.eval()
    expected = unmixed_reference(torch.tanh, _x(2, 3), ORDER)
    assert relative_error(hope_attr.unmixed_derivatives(model, _x(2, 3), ORDER), expected) <= 1e-12


# ============================================================================ the rule registry
class Rational(nn.Module):
    """``alpha x^2 / (1 + x^2)`` behind a guard fx cannot trace: usable only through a rule."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError("expects (B, F)")
        return self.alpha * x * x / (1 + x * x)


class ScaledRational(Rational):
    """A subclass: found through the MRO of its registered base."""


@pytest.fixture
def rational_rule() -> Iterator[list[nn.Module]]:
    calls: list[nn.Module] = []

    def rule(module: Rational, x: hope_attr.Jet) -> hope_attr.Jet:
        calls.append(module)
        square = x * x
        return module.alpha * square / (square + 1)

    hope_attr.register_rule(Rational)(rule)
    try:
        yield calls
    finally:
        hope_attr.unregister_rule(Rational)


def _rational_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 3), ScaledRational(1.5), nn.Linear(3, 2)).to(DTYPE).eval()


def test_module_fx_could_not_trace_runs_eagerly_without_a_rule() -> None:
    model = _rational_model()
    x = _x(2, 3)
    actual = hope_attr.unmixed_derivatives(model, x, ORDER)
    assert relative_error(actual, unmixed_reference(model, x, ORDER)) <= TOLERANCE


def test_user_rule_matches_subclass_through_mro(rational_rule: list[nn.Module]) -> None:
    model = _rational_model()
    x = _x(3, 3)
    actual = hope_attr.unmixed_derivatives(model, x, 6)
    assert rational_rule and all(m is model[1] for m in rational_rule)
    expected = unmixed_reference(model, x, 6)
    assert relative_error(actual, expected) <= TOLERANCE


def test_register_twice_raises_and_override_replaces(rational_rule: list[nn.Module]) -> None:
    def other(module: Rational, x: hope_attr.Jet) -> hope_attr.Jet:
        return x * 0.0

    with pytest.raises(ValueError, match="already has a Taylor rule") as info:
        hope_attr.register_rule(Rational)(other)
    assert "override=True" in str(info.value)
    hope_attr.unmixed_derivatives(_rational_model(), _x(2, 3), 2)
    assert rational_rule, "a failed registration must keep the old rule"

    hope_attr.register_rule(Rational, override=True)(other)
    result = hope_attr.unmixed_derivatives(_rational_model(), _x(2, 3), 2)
    assert torch.all(result == 0), "override=True must install the new rule"


def test_register_builtin_twice_raises() -> None:
    with pytest.raises(ValueError, match="override=True"):
        hope_attr.register_rule(torch.tanh)(lambda x: x)
    # The built-in rule is still in place.
    x = _x(2, 3)
    actual = hope_attr.unmixed_derivatives(torch.tanh, x, 3)
    assert relative_error(actual, unmixed_reference(torch.tanh, x, 3)) <= TOLERANCE


def test_failed_registration_registers_nothing() -> None:
    # With several targets, one that already has a rule must not leave the others registered.
    class Fresh(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    try:
        with pytest.raises(ValueError, match="already has a Taylor rule"):
            hope_attr.register_rule(Fresh, torch.tanh)(lambda module, x: x)
        x = _x(2, 3)
        # Had the identity rule been registered for Fresh, orders >= 2 would vanish.
        actual = hope_attr.unmixed_derivatives(Fresh(), x, 2)
        assert relative_error(actual, unmixed_reference(torch.sin, x, 2)) <= TOLERANCE
    finally:
        hope_attr.unregister_rule(Fresh)


def test_register_rule_needs_a_target() -> None:
    with pytest.raises(ValueError, match="at least one"):
        hope_attr.register_rule()


# ============================================================================ options
class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(4, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(a)) * torch.sigmoid(self.b(b.flatten(1))) + a[:, :2] * b[:, 0]


def test_tuple_inputs_match_reference() -> None:
    torch.manual_seed(2)
    model = TwoInputs().to(DTYPE).eval()
    inputs = (_x(2, 3, seed=1), _x(2, 2, 2, seed=2))
    actual = hope_attr.unmixed_derivatives(model, inputs, ORDER)
    expected = unmixed_reference_tuple(model, inputs, ORDER)
    assert isinstance(actual, tuple) and len(actual) == 2
    assert actual[0].shape == (ORDER, 2, 2, 3)
    assert actual[1].shape == (ORDER, 2, 2, 2, 2)
    for a, e in zip(actual, expected, strict=True):
        assert relative_error(a, e) <= TOLERANCE
    # A one-element tuple returns a one-element tuple.
    single = hope_attr.unmixed_derivatives(lambda a: model(a, inputs[1]), (inputs[0],), ORDER)
    assert isinstance(single, tuple) and len(single) == 1
    torch.testing.assert_close(single[0], actual[0], rtol=1e-14, atol=1e-15)


class WithExtras(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, smooth: bool = True) -> torch.Tensor:
        h = self.lin(x) * scale
        return torch.tanh(h) if smooth else torch.sin(h) * h


@pytest.mark.parametrize("smooth", [True, False])
def test_additional_forward_args_tensor_and_flag(smooth: bool) -> None:
    torch.manual_seed(3)
    model = WithExtras().to(DTYPE).eval()
    x = _x(2, 3)
    scale = _x(2, 2, seed=5)
    actual = hope_attr.unmixed_derivatives(model, x, ORDER, additional_forward_args=(scale, smooth))
    expected = unmixed_reference(lambda z: model(z, scale, smooth), x, ORDER)
    assert relative_error(actual, expected) <= TOLERANCE
    assert not torch.equal(
        actual,
        hope_attr.unmixed_derivatives(model, x, ORDER, additional_forward_args=(scale, not smooth)),
    )


def test_additional_forward_args_single_value() -> None:
    torch.manual_seed(3)
    model = WithExtras().to(DTYPE).eval()
    x, scale = _x(2, 3), _x(2, 2, seed=5)
    actual = hope_attr.unmixed_derivatives(model, x, ORDER, additional_forward_args=scale)
    expected = unmixed_reference(lambda z: model(z, scale), x, ORDER)
    assert relative_error(actual, expected) <= TOLERANCE


def _conv_model() -> nn.Module:
    torch.manual_seed(4)
    return (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.Softplus(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(12, 2),
            nn.Tanh(),
        )
        .to(DTYPE)
        .eval()
    )


@pytest.mark.parametrize(
    ("make", "shape"),
    [(_mlp, (3, 3)), (_conv_model, (2, 2, 4, 4))],
    ids=["mlp", "conv"],
)
def test_directions_per_chunk_does_not_change_results(make, shape: tuple[int, ...]) -> None:
    model = make()
    x = _x(*shape)
    results = {
        size: hope_attr.unmixed_derivatives(model, x, ORDER, directions_per_chunk=size)
        for size in (1, 3, None)
    }
    assert torch.equal(results[1], results[3]), (results[1] - results[3]).abs().max()
    assert torch.equal(results[1], results[None]), (results[1] - results[None]).abs().max()
    assert relative_error(results[None], unmixed_reference(model, x, ORDER)) <= TOLERANCE


def test_source_line_found_in_a_clone_folder_named_hope_attr(tmp_path) -> None:
    # A clone of this repository is a folder named hope_attr (git's default): the user's code in
    # it is still the user's (the old check skipped every path containing '/hope_attr/').
    import importlib.util

    folder = tmp_path / "hope_attr" / "tests"
    folder.mkdir(parents=True)
    (folder / "user_model.py").write_text(
        "import torch\n"
        "class Gamma(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.lgamma(x + 3.0)  # the user's line\n"
    )
    spec = importlib.util.spec_from_file_location("user_model", folder / "user_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(hope_attr.UnsupportedOperationError) as info:
        hope_attr.unmixed_derivatives(module.Gamma(), _x(2, 3), ORDER)
    assert "user_model.py" in str(info.value) and "the user's line" in str(info.value)


@pytest.mark.parametrize(
    ("dtype", "order", "highest"),
    [(torch.float64, 10**6, 300), (torch.float64, 301, 300), (torch.float32, 57, 56)],
)
def test_an_order_beyond_the_dtype_is_refused_at_once(dtype, order, highest) -> None:
    """order=10**6 used to run for minutes in the Taylor tables (orders >= 1000 gave inf/NaN)."""
    import time

    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh()).to(dtype).eval()
    x = torch.rand(2, 3, dtype=dtype)
    start = time.perf_counter()
    for call in (
        lambda: hope_attr.unmixed_derivatives(model, x, order),
        lambda: hope_attr.HOPEAttribution(model, order=order).attribute(x, target=0),
    ):
        with pytest.raises(ValueError, match=f"Use order <= {highest}") as info:
            call()
        assert f"order {order} is beyond what {dtype}" in str(info.value)
    # Mixed partials refuse on their size first (their count grows like C(p + n, n)); the
    # message must format even at order 10**6 (it overflowed int-to-str limits).
    for call in (
        lambda: hope_attr.mixed_derivatives(model, x, order),
        lambda: hope_attr.expand(model, x[0], order),
    ):
        with pytest.raises(ValueError, match="order") as info:
            call()
        assert str(order) in str(info.value)
    assert time.perf_counter() - start < 5.0
