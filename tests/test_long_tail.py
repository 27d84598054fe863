"""Ops real models use, each exact against an independent reference or clearly refused
(issue: "never silently wrong, never a raw crash"). References are nested ``torch.func.jvp``
(tests/oracle.py) of the same function written out of place, or closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function_unary

import hope_attr
from hope_attr.engine.registry import function_rule
from tests.oracle import relative_error, unmixed_reference

ORDER = 3
TOLERANCE = 1e-10


def _weights(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))


W = _weights(4, 5)


def _check(f, x: torch.Tensor, reference=None, order: int = ORDER) -> None:
    actual = hope_attr.unmixed_derivatives(f, x, order)
    expected = unmixed_reference(reference or f, x, order)
    assert relative_error(actual, expected) <= TOLERANCE


# --------------------------------------------------------------------------- padding
@pytest.mark.parametrize("value", [1.0, -2.5, 0.0])
def test_a_fill_value_enters_the_primal_only(value: float) -> None:
    """The fill value used to be written into every Taylor coefficient: a padded entry had
    derivative ``value`` instead of 0 (timm's efficientvit_b0 was 4e5 off at order 1)."""
    x = torch.randn(2, 4, dtype=torch.float64)
    f = lambda t: F.pad(torch.tanh(t @ W), (1, 2), value=value)  # noqa: E731
    actual = hope_attr.unmixed_derivatives(f, x, ORDER)
    assert torch.all(actual[..., 0, :] == 0) and torch.all(actual[..., -2:, :] == 0)
    _check(f, x)


@pytest.mark.parametrize(
    "pad",
    [nn.ConstantPad2d(1, 2.5), nn.ReflectionPad2d(1), nn.ReplicationPad2d((1, 0, 2, 1))],
    ids=["constant", "reflect", "replicate"],
)
def test_padding_modules_in_a_cnn(pad: nn.Module) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(pad, nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    model = model.double().eval()
    model(x)  # materialize the lazy layer
    _check(model, x)


def test_circular_padding_mode_of_a_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Tanh())
    model = model.double().eval()
    _check(model, torch.randn(2, 1, 4, 4, dtype=torch.float64))


# --------------------------------------------------------------------------- in place
IN_PLACE = {
    "relu": (lambda h: F.relu(h, inplace=True), F.relu),
    "elu": (lambda h: F.elu(h, inplace=True), F.elu),
    "silu": (lambda h: F.silu(h, inplace=True), F.silu),
    "leaky_relu positional": (lambda h: F.leaky_relu(h, 0.2, True), lambda h: F.leaky_relu(h, 0.2)),
    "module": (nn.ReLU(inplace=True), F.relu),
    # torch-level in-place functions: PyTorch's decompositions return a new tensor, so these
    # used to leave h unchanged (silently wrong, up to 100%).
    "torch.tanh_": (torch.tanh_, torch.tanh),
    "torch.abs_": (torch.abs_, torch.abs),
    "torch.exp_": (torch.exp_, torch.exp),
    "torch.clamp_": (lambda h: torch.clamp_(h, -0.2, 0.4), lambda h: torch.clamp(h, -0.2, 0.4)),
    "F.celu_": (F.celu_, F.celu),
    "F.threshold_": (lambda h: F.threshold_(h, 0.1, 2.0), lambda h: F.threshold(h, 0.1, 2.0)),
    "torch.zero_": (torch.zero_, torch.zeros_like),
    "torch.fill_": (lambda h: torch.fill_(h, 0.5), lambda h: torch.full_like(h, 0.5)),
}


@pytest.mark.parametrize("name", list(IN_PLACE))
def test_an_unused_in_place_result_still_changes_its_input(name: str) -> None:
    """``act(h, inplace=True); return h * t``: the side effect used to be dropped."""
    in_place, plain = IN_PLACE[name]

    def f(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W) - 0.3
        in_place(h)
        return h * t.sum(1, keepdim=True)

    def reference(t: torch.Tensor) -> torch.Tensor:
        return plain(torch.tanh(t @ W) - 0.3) * t.sum(1, keepdim=True)

    _check(f, torch.randn(3, 4, dtype=torch.float64), reference)


def test_an_alias_taken_before_an_in_place_activation_sees_it() -> None:
    """``s = h; h = act(h, inplace=True); return h + s``: s is the same tensor, changed too."""

    def f(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W) - 0.3
        s = h
        h = F.elu(h, inplace=True)
        return h + s

    _check(f, torch.randn(3, 4, dtype=torch.float64), lambda t: 2 * F.elu(torch.tanh(t @ W) - 0.3))


def test_an_in_place_change_of_a_view_is_refused_where_its_base_is_used() -> None:
    """Jets do not share memory: ``h[:, :2].mul_(3)`` used to return h unchanged."""

    def f(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        h[:, :2].mul_(3.0)
        return h

    with pytest.raises(hope_attr.UnsupportedOperationError, match="changed in place") as info:
        hope_attr.unmixed_derivatives(f, torch.randn(2, 4, dtype=torch.float64), 2)
    assert "test_long_tail.py" in str(info.value) and "out of place" in str(info.value)


def test_a_view_read_after_its_base_changed_in_place_is_refused() -> None:
    def f(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        first = h[:, 0:1]
        h.mul_(2.0)
        return first * h

    with pytest.raises(hope_attr.UnsupportedOperationError, match="changed in place"):
        hope_attr.unmixed_derivatives(f, torch.randn(2, 4, dtype=torch.float64), 2)


def test_views_whose_aliases_are_never_used_again_are_fine() -> None:
    """The refusal is for using an outdated alias, not for having one: x = x.view(...);
    x.add_(1) with the old x unused is exact."""

    def f(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        h = h.view(-1, 5, 1)
        h.mul_(2.0)
        g = h[:, :, 0].clone()
        g.add_(1.0)
        return g * h.squeeze(2)

    def reference(t: torch.Tensor) -> torch.Tensor:
        h = 2 * torch.tanh(t @ W)
        return (h + 1) * h

    _check(f, torch.randn(3, 4, dtype=torch.float64), reference)


@pytest.mark.parametrize("how", ["+=", "add_", "copy_"])
def test_writing_a_jet_into_a_plain_tensor_in_place_is_refused(how: str) -> None:
    """A plain tensor cannot hold a series: this used to crash inside torch (or, for add_,
    return the tensor's constant value)."""

    def accumulate(t: torch.Tensor) -> torch.Tensor:
        acc = torch.zeros(2, 5, dtype=torch.float64)
        value = torch.tanh(t @ W)
        if how == "+=":
            acc += value
        elif how == "add_":
            acc.add_(value)
        else:
            acc.copy_(value)
        return acc

    with pytest.raises(hope_attr.UnsupportedOperationError, match="acc = acc \\+ value") as info:
        hope_attr.unmixed_derivatives(accumulate, torch.randn(2, 4, dtype=torch.float64), 2)
    assert "test_long_tail.py" in str(info.value)


def test_accumulating_out_of_place_is_exact() -> None:
    def accumulate(t: torch.Tensor) -> torch.Tensor:
        acc = torch.zeros(2, 5, dtype=torch.float64)
        for f in (torch.tanh, torch.sin):
            acc = acc + f(t @ W)
        return acc

    _check(accumulate, _x(), lambda t: torch.tanh(t @ W) + torch.sin(t @ W))


# --------------------------------------------------------------------------- values leaving
def test_detach_and_item_warn_that_the_dependence_is_dropped() -> None:
    x = torch.randn(2, 4, dtype=torch.float64)

    def detached(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        return h / h.norm(dim=1, keepdim=True).detach()

    with pytest.warns(hope_attr.DroppedDependenceWarning, match="detach\\(\\)") as caught:
        hope_attr.unmixed_derivatives(detached, x, 2)
    assert caught[0].filename == __file__  # the user's line

    def item(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        return h * h[0, 0].item()

    with pytest.warns(hope_attr.DroppedDependenceWarning, match="item\\(\\)"):
        hope_attr.unmixed_derivatives(item, x, 2)


@pytest.mark.parametrize("convert", [float, int], ids=["float", "int"])
def test_python_numbers_from_a_jet_are_its_values_at_the_point(convert) -> None:
    """``float(h)`` and ``int(h)`` used to raise a raw TypeError: they are the value at the
    expansion point, a constant, with the warning at the user's line (as ``.item()``)."""
    x = _x()

    def f(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        return h * convert(3 * h[0, 0])

    with pytest.warns(
        hope_attr.DroppedDependenceWarning, match=f"{convert.__name__}\\(\\)"
    ) as caught:
        actual = hope_attr.unmixed_derivatives(f, x, ORDER)
    assert caught[0].filename == __file__
    frozen = convert(3 * torch.tanh(x @ W)[0, 0])
    expected = unmixed_reference(lambda t: torch.tanh(t @ W) * frozen, x, ORDER)
    assert relative_error(actual, expected) <= TOLERANCE


def test_equality_masks_of_jets() -> None:
    """``h == h.max()`` and ``h != 0.5`` used to be Python's identity test, a bool: the mask was
    all ones or all zeros. They are masks at the primal, like ``h > 0``."""

    def f(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        top = h == h.amax(1, keepdim=True)
        return h * top + (h != h[:, :1]) * h**2 + (0.5 != h) * (h[:, 2:3] == h)

    _check(f, _x())


def test_a_branch_on_a_value_does_not_warn() -> None:
    def branch(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        return h * 2 if h.sum() > 0 else h

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", hope_attr.DroppedDependenceWarning)
        hope_attr.unmixed_derivatives(branch, torch.randn(2, 4, dtype=torch.float64), 2)


# --------------------------------------------------------------------------- steps
def _h(t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(t @ W)


def _divisor(t: torch.Tensor) -> torch.Tensor:  # in (0.2, 0.7): away from 0
    return 0.2 + 0.5 * torch.sigmoid(t @ W.flip(1))


# Each against the same function composed with torch.floor/torch.trunc, whose forward-mode
# derivative is 0 (floor_divide and a number % tensor have none in PyTorch). Random points lie
# away from the jumps, almost surely.
STEPS = {
    "jet // number": (lambda t: (_h(t) // 0.3) * _h(t), lambda t: torch.floor(_h(t) / 0.3) * _h(t)),
    "number // jet": (
        lambda t: (2 // _divisor(t)) * _h(t),
        lambda t: torch.floor(2 / _divisor(t)) * _h(t),
    ),
    "tensor // jet": (
        lambda t: (torch.full((5,), 1.5, dtype=t.dtype) // _divisor(t)) * _h(t),
        lambda t: torch.floor(1.5 / _divisor(t)) * _h(t),
    ),
    "torch.floor_divide(jet, jet)": (
        lambda t: torch.floor_divide(_h(t), _divisor(t)) * _h(t),
        lambda t: torch.floor(_h(t) / _divisor(t)) * _h(t),
    ),
    "torch.div(rounding_mode='trunc')": (
        lambda t: torch.div(_h(t), 0.3, rounding_mode="trunc") * _h(t),
        lambda t: torch.trunc(_h(t) / 0.3) * _h(t),
    ),
    "jet % number": (lambda t: _h(t) % 0.3, lambda t: _h(t) - 0.3 * torch.floor(_h(t) / 0.3)),
    "number % jet": (
        lambda t: 1.5 % _divisor(t),
        lambda t: 1.5 - _divisor(t) * torch.floor(1.5 / _divisor(t)),
    ),
    "jet % jet": (
        lambda t: _h(t) % _divisor(t),
        lambda t: _h(t) - _divisor(t) * torch.floor(_h(t) / _divisor(t)),
    ),
    "torch.fmod(jet, negative number)": (
        lambda t: torch.fmod(_h(t), -0.3),
        lambda t: _h(t) + 0.3 * torch.trunc(_h(t) / -0.3),
    ),
    "torch.fmod(jet, jet)": (
        lambda t: torch.fmod(_h(t), _divisor(t)),
        lambda t: _h(t) - _divisor(t) * torch.trunc(_h(t) / _divisor(t)),
    ),
    "remainder_ in place": (
        lambda t: _h(t).remainder_(0.3),
        lambda t: _h(t) - 0.3 * torch.floor(_h(t) / 0.3),
    ),
}


@pytest.mark.parametrize("name", list(STEPS))
def test_floor_division_and_remainders(name: str) -> None:
    """``//`` and ``%`` on a jet used to raise a raw TypeError; floor division has no series (a
    step, like floor), a remainder is ``a - b q`` with the rounded quotient ``q`` a constant."""
    f, reference = STEPS[name]
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(f(x), reference(x), rtol=1e-12, atol=1e-12)
    _check(f, x, reference)


@pytest.mark.parametrize(
    "step",
    [lambda a: a // 0.5, lambda a: a % 0.5, lambda a: torch.fmod(a, 0.5)],
    ids=["//", "%", "fmod"],
)
def test_a_step_reports_where_the_quotient_jumps(step) -> None:
    """``a(t) = 0.95 + t``: ``a / 0.5`` reaches 2 at ``t = 0.05``, where the step jumps; Taylor
    continuation must not step past it."""
    from hope_attr.engine import kinks

    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    a = hope_attr.Jet(torch.tensor([[0.95]], dtype=torch.float64), one, 2)
    with kinks.watch() as watch:
        step(a)
    torch.testing.assert_close(watch.first, torch.tensor([0.05], dtype=torch.float64))


# --------------------------------------------------------------------------- borrowed code
def scaled(x: torch.Tensor) -> torch.Tensor:
    """A Python composite as torch writes them: it dispatches on its argument, then checks it."""
    if has_torch_function_unary(x):
        return handle_torch_function(scaled, (x,), x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"scaled() takes a tensor, got {type(x).__name__}")
    return 2 * x


def test_a_composite_body_that_fails_on_jets_is_refused_with_the_op() -> None:
    """The body's TypeError (jets are not tensors) used to escape raw."""
    with pytest.raises(hope_attr.UnsupportedOperationError, match="scaled") as info:
        hope_attr.unmixed_derivatives(lambda t: scaled(torch.tanh(t @ W)), _x(), 2)
    assert "test_long_tail.py" in str(info.value) and "register_rule" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)


def test_the_users_own_error_in_a_composite_passes_unchanged() -> None:
    """An error the call raises on plain tensors too is the user's: PyTorch's own exception."""

    def f(t: torch.Tensor) -> torch.Tensor:
        return F.gumbel_softmax(torch.tanh(t @ W), hard=True, dim=5)

    with pytest.raises(IndexError, match="Dimension out of range"):
        hope_attr.unmixed_derivatives(f, _x(), 2)


def test_a_decomposition_of_the_wrong_shape_is_refused() -> None:
    """A wrong rule inside PyTorch's decomposition of logit (here a log that sums its last
    axis) gives a result of another shape than torch.logit's: refused, not returned."""
    correct = function_rule(torch.log)
    hope_attr.register_rule(torch.log, override=True)(lambda x: correct(x).sum(-1))
    try:
        with pytest.raises(
            hope_attr.UnsupportedOperationError, match="decomposition of torch.logit"
        ):
            hope_attr.unmixed_derivatives(lambda t: torch.logit(torch.sigmoid(t @ W)), _x(), 1)
    finally:
        hope_attr.register_rule(torch.log, override=True)(correct)


# --------------------------------------------------------------------------- outputs
class Segmenter(nn.Module):
    """Returns what torchvision's segmentation models return: ``{"out": ..., "aux": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x), "aux": torch.tanh(self.conv(x))}


@pytest.mark.parametrize(
    "call",
    [
        lambda model, x: hope_attr.unmixed_derivatives(model, x, 2),
        lambda model, x: hope_attr.HOPEAttribution(model, order=2).attribute(x, target=0),
    ],
    ids=["unmixed_derivatives", "HOPEAttribution"],
)
def test_a_dict_output_is_refused_with_its_keys_and_the_fix(call) -> None:
    model = Segmenter().double().eval()
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="keys 'out', 'aux'") as info:
        call(model, x)
    assert "lambda x: model(x)['out']" in str(info.value)


def test_the_suggested_fix_for_a_dict_output_works() -> None:
    model = Segmenter().double().eval()
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    _check(lambda t: model(t)["out"], x)


def test_a_tuple_output_is_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match=r"a tuple of 2 values.*lambda x: model\(x\)\[0\]"):
        hope_attr.unmixed_derivatives(lambda t: (t @ W, t), _x(), 1)


# --------------------------------------------------------------------------- precision, casts
@pytest.mark.parametrize("base", [10.0, 2, math.e])
def test_a_constant_base_to_the_power_of_a_float64_jet_is_exact(base: float) -> None:
    """``10.0 ** x`` took log(10) in float32: 5e-8 off in a float64 model."""
    x = torch.randn(2, 3, dtype=torch.float64) * 0.3
    actual = hope_attr.unmixed_derivatives(lambda t: base**t, x, 4)
    log = math.log(base)
    for k in range(1, 5):  # d^k/dx^k b^x = log(b)^k b^x, per feature
        expected = torch.diag_embed(log**k * base**x)
        torch.testing.assert_close(actual[k - 1], expected, rtol=1e-14, atol=0)


def test_type_as_and_to_with_a_jet_argument() -> None:
    """``x.float() ... .type_as(x)`` (Meta-style RMSNorm, Gemma, EVA-02)."""

    def rms_norm(t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(t @ W)
        normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return normed.type_as(h) * 1.5 + normed.to(h) * 0.5

    _check(
        rms_norm,
        torch.randn(2, 4, dtype=torch.float64),
        lambda t: (
            2
            * (lambda h: h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))(torch.tanh(t @ W))
        ),
    )


def test_an_integer_output_is_refused_before_any_expansion() -> None:
    with pytest.raises(TypeError, match="floating-point output"):
        hope_attr.unmixed_derivatives(lambda t: (t @ W).argmax(1, keepdim=True), _x(), 2)


def _x() -> torch.Tensor:
    return torch.randn(2, 4, dtype=torch.float64)
