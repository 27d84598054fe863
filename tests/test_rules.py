"""The core Taylor rules against nested ``torch.func.jvp`` in float64, orders 1..6.

One case per rule (and per dispatch branch: jet x jet, jet x const, const x jet). Inputs are
drawn away from the kinks of piecewise-linear functions, where a derivative is not defined.
Reductions and selections, writes, more elementwise functions, norms, Fourier transforms,
recurrent cells and grid sampling have their own files (tests/test_ops_*.py); every registered
rule is also driven with random shapes and series by tests/test_rule_properties.py.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hope_attr
from tests.oracle import relative_error, unmixed_reference, unmixed_reference_autograd

ORDER = 6
TOLERANCE = 1e-9


class Fn(nn.Module):
    """Wrap a function of the input as a module (so every case is a model)."""

    def __init__(self, fn, *modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.inner = nn.ModuleList(modules)

    def forward(self, x):
        return self.fn(x, *self.inner)


def _const(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))


# Constants of the cases, fixed once (the oracle runs forward under vmap: no randomness there).
C_1_2 = _const(1, 2)
C_2 = _const(2)
C_2_1_3_3 = _const(2, 1, 3, 3)
C_3 = _const(3)
C_3_4 = _const(3, 4)
C_4_2 = _const(4, 2)


def _positive(x: torch.Tensor) -> torch.Tensor:
    return x.abs() + 0.5


def _batch_norm(num_features: int, cls=nn.BatchNorm2d) -> nn.Module:
    norm = cls(num_features)
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


CASES: dict[str, tuple[nn.Module, tuple[int, ...]]] = {
    # linear family
    "Linear": (nn.Linear(4, 3), (2, 4)),
    "Linear 3-d input": (nn.Linear(4, 3), (2, 2, 4)),
    "F.linear": (Fn(lambda x: F.linear(x, C_3_4, C_3)), (2, 4)),
    "Conv1d": (nn.Conv1d(2, 3, 3, stride=2, padding=1, dilation=1), (2, 2, 7)),
    "Conv2d stride/pad/dilation/groups": (
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
        (2, 4, 6, 6),
    ),
    "Conv2d reflect padding": (nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), (1, 1, 5, 5)),
    "Conv3d": (nn.Conv3d(1, 2, 2, stride=(1, 2, 1), padding=1), (1, 1, 3, 4, 3)),
    "F.conv2d": (Fn(lambda x: F.conv2d(x, C_2_1_3_3, C_2, padding=1)), (2, 1, 4, 4)),
    "ConvTranspose2d": (
        nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
        (1, 2, 3, 3),
    ),
    "AvgPool1d": (nn.AvgPool1d(2), (2, 2, 6)),
    "AvgPool2d": (nn.AvgPool2d(3, stride=2, padding=1), (1, 2, 6, 6)),
    "AvgPool2d blocks, partial last block": (nn.AvgPool2d((2, 3)), (1, 2, 5, 7)),
    "F.avg_pool3d": (Fn(lambda x: F.avg_pool3d(x.sin(), 2)), (1, 2, 4, 5, 4)),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d((2, 3)), (2, 2, 5, 7)),
    "F.avg_pool2d": (Fn(lambda x: F.avg_pool2d(x, 2)), (1, 2, 4, 4)),
    "BatchNorm1d (eval)": (_batch_norm(3, nn.BatchNorm1d), (2, 3)),
    "BatchNorm2d (eval)": (_batch_norm(2), (2, 2, 3, 3)),
    "Identity": (nn.Identity(), (2, 3)),
    "Dropout (eval)": (nn.Dropout(0.5), (2, 3)),
    # structural
    "Flatten": (nn.Flatten(), (2, 2, 3)),
    "Unflatten": (nn.Unflatten(1, (2, 3)), (2, 6)),
    "view": (Fn(lambda x: x.view(x.size(0), 3, 2).tanh()), (2, 6)),
    "reshape": (Fn(lambda x: torch.reshape(x.sin(), (-1, 2, 3))), (2, 6)),
    "permute": (Fn(lambda x: x.tanh().permute(0, 2, 1)), (2, 2, 3)),
    "transpose": (Fn(lambda x: torch.transpose(x.exp(), 1, 2)), (2, 2, 3)),
    "squeeze/unsqueeze": (Fn(lambda x: x.unsqueeze(1).tanh().squeeze(1)), (2, 3)),
    "flatten": (Fn(lambda x: torch.flatten(x.sin(), 1)), (2, 2, 2)),
    "cat": (Fn(lambda x: torch.cat([x.tanh(), x * x, C_1_2.expand(2, 2)], dim=1)), (2, 2)),
    "stack": (Fn(lambda x: torch.stack([x.sin(), x.cos()], dim=-1)), (2, 3)),
    "indexing and slicing": (Fn(lambda x: x.tanh()[:, 1:, ::2] * x[:, 1:, 0:1]), (2, 3, 4)),
    "chunk": (Fn(lambda x: (lambda c: c[0] * c[1])(x.sin().chunk(2, dim=1))), (2, 4)),
    "sum/mean": (
        Fn(lambda x: x.tanh().sum(-1, keepdim=True) + x.sin().mean(dim=1, keepdim=True)),
        (2, 3),
    ),
    "contiguous after permute": (
        Fn(lambda x: x.tanh().permute(0, 2, 1).contiguous().view(2, 6)),
        (2, 2, 3),
    ),
    # arithmetic: every dispatch branch
    "add jet+jet, jet+const, const+jet": (
        Fn(lambda x: x.sin() + x.cos() + 2.0 + (C_3 + x)),
        (2, 3),
    ),
    "torch.add alpha": (Fn(lambda x: torch.add(x.sin(), x.exp(), alpha=0.5)), (2, 3)),
    "sub jet-jet, jet-const, const-jet": (
        Fn(lambda x: (x.sin() - x.cos()) - 1.0 + (2.0 - x.exp())),
        (2, 3),
    ),
    "mul jet*jet": (Fn(lambda x: x.sin() * x.exp()), (2, 3)),
    # exp, tanh and sigmoid of an argument with every order stored take the Riccati series
    "exp, tanh, sigmoid of curved arguments": (
        Fn(lambda x: (2 * x.sin()).exp() + (x * x).tanh() + x.cos().sigmoid()),
        (2, 3),
    ),
    "mul jet*const, const*jet": (Fn(lambda x: (C_3 * x.tanh()) * 3.0), (2, 3)),
    "div jet/jet": (Fn(lambda x: x.sin() / (x.exp() + 1)), (2, 3)),
    "div jet/const, const/jet": (Fn(lambda x: x.sin() / 3.0 + 2.0 / (x * x + 1)), (2, 3)),
    "neg": (Fn(lambda x: -x.tanh()), (2, 3)),
    "matmul jet@jet": (Fn(lambda x: torch.matmul(x.tanh(), x.sin().transpose(1, 2))), (2, 2, 3)),
    # a product larger than its factors (attention scores) runs as one product per order
    "matmul jet@jet, product larger than the factors": (
        Fn(lambda x: torch.matmul(x.tanh(), x.sin().transpose(1, 2))),
        (2, 4, 2),
    ),
    "matmul jet@jet, orders stored unequal, batch broadcast": (
        Fn(
            lambda x: torch.matmul(
                (2 * x).unsqueeze(1), torch.stack([x.sin(), x.cos()], 1).transpose(-1, -2)
            )
        ),
        (2, 4, 2),
    ),
    "matmul jet@const": (Fn(lambda x: x.tanh() @ C_3_4), (2, 3)),
    "matmul const@jet": (Fn(lambda x: C_4_2 @ x.sin()), (2, 2, 3)),
    "bmm": (Fn(lambda x: torch.bmm(x.sin(), x.cos().transpose(1, 2))), (2, 2, 3)),
    # smooth elementwise
    "exp": (Fn(torch.exp), (2, 3)),
    "log": (Fn(lambda x: torch.log(_positive(x))), (2, 3)),
    "sqrt": (Fn(lambda x: torch.sqrt(_positive(x))), (2, 3)),
    "rsqrt": (Fn(lambda x: torch.rsqrt(_positive(x))), (2, 3)),
    "reciprocal": (Fn(lambda x: torch.reciprocal(_positive(x))), (2, 3)),
    "pow integer": (Fn(lambda x: x**3 + torch.pow(x, 2)), (2, 3)),
    "pow fractional": (Fn(lambda x: _positive(x) ** 1.7), (2, 3)),
    "pow tensor exponent": (Fn(lambda x: torch.pow(_positive(x), x.sin())), (2, 3)),
    "sin": (Fn(torch.sin), (2, 3)),
    "cos": (Fn(torch.cos), (2, 3)),
    "Tanh": (nn.Tanh(), (2, 3)),
    "Sigmoid": (nn.Sigmoid(), (2, 3)),
    # A second smooth layer sees a full series: tanh, sigmoid and exp then take their ODE path.
    "tanh of a full series": (Fn(lambda x: torch.tanh(x.sin())), (2, 3)),
    "sigmoid of a full series": (Fn(lambda x: torch.sigmoid(x.sin())), (2, 3)),
    "exp of a full series": (Fn(lambda x: torch.exp(x.sin())), (2, 3)),
    "Softplus": (nn.Softplus(beta=2.0), (2, 3)),
    "ELU": (nn.ELU(alpha=0.7), (2, 3)),
    "SELU": (nn.SELU(), (2, 3)),
    "GELU exact": (nn.GELU(), (2, 3)),
    "GELU tanh": (nn.GELU(approximate="tanh"), (2, 3)),
    "SiLU": (nn.SiLU(), (2, 3)),
    "Mish": (nn.Mish(), (2, 3)),
    "Softmax": (nn.Softmax(dim=1), (2, 4)),
    "LogSoftmax": (nn.LogSoftmax(dim=-1), (2, 4)),
    "F.softmax on 3-d": (Fn(lambda x: F.softmax(x, dim=1)), (2, 3, 2)),
    "LayerNorm": (nn.LayerNorm(4), (2, 4)),
    "LayerNorm 2-d shape": (nn.LayerNorm((2, 3)), (2, 2, 3)),
    "GroupNorm": (nn.GroupNorm(2, 4), (2, 4, 2, 2)),
    # piecewise linear (inputs kept away from kinks below)
    "ReLU": (nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh()), (2, 3)),
    "LeakyReLU": (nn.Sequential(nn.LeakyReLU(0.1), nn.Linear(3, 2), nn.Sigmoid()), (2, 3)),
    "Hardtanh": (nn.Sequential(nn.Hardtanh(-0.5, 0.5), nn.Linear(3, 2), nn.Tanh()), (2, 3)),
    "ReLU6": (Fn(lambda x: F.relu6(3 * x + 3).sin()), (2, 3)),
    "abs": (Fn(lambda x: torch.abs(x).exp()), (2, 3)),
    "clamp": (Fn(lambda x: torch.clamp(x, -0.5, 0.7).exp()), (2, 3)),
    "where with comparison": (Fn(lambda x: torch.where(x > 0, x.sin(), x * x)), (2, 3)),
    "maximum": (Fn(lambda x: torch.maximum(x.sin(), x.cos())), (2, 3)),
    "square": (Fn(lambda x: torch.square(x.sin())), (2, 3)),
    "erf": (Fn(torch.erf), (2, 3)),
    "atan": (Fn(lambda x: torch.atan(2 * x)), (2, 3)),
    "MaxPool1d": (nn.Sequential(nn.Tanh(), nn.MaxPool1d(2)), (2, 2, 6)),
    "MaxPool2d": (nn.Sequential(nn.Tanh(), nn.MaxPool2d(2, stride=1, padding=1)), (1, 2, 4, 4)),
    "AdaptiveMaxPool2d": (nn.Sequential(nn.Sigmoid(), nn.AdaptiveMaxPool2d((2, 2))), (1, 2, 5, 5)),
    "F.max_pool2d": (Fn(lambda x: F.max_pool2d(x.sin(), 2)), (1, 1, 4, 4)),
}


def _layer_norm_closed_form(norm: nn.LayerNorm):
    """LayerNorm written out: PyTorch's native layer_norm is differentiable only to order 2.

    Nested jvp of F.layer_norm is wrong from order 2 and nested autograd from order 3 (torch
    2.14.1; both checked against finite differences), so the reference differentiates this
    formula instead.
    """
    dims = tuple(range(-len(norm.normalized_shape), 0))

    def reference(x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dims, keepdim=True)
        variance = (centered * centered).mean(dims, keepdim=True)
        return centered * (variance + norm.eps) ** -0.5 * norm.weight + norm.bias

    return reference


CLOSED_FORM_REFERENCE = {
    "LayerNorm": _layer_norm_closed_form,
    "LayerNorm 2-d shape": _layer_norm_closed_form,
}


def _input(shape: tuple[int, ...]) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # Keep every entry (and 3x + 3 for ReLU6) at least 0.05 away from 0 and +-0.5: off the kinks.
    return torch.where(x.abs() < 0.1, x.sign() * 0.3 + 0.05, x) + 0.02


@pytest.mark.parametrize("name", list(CASES))
def test_rule_matches_nested_jvp(name: str) -> None:
    torch.manual_seed(0)
    model, shape = CASES[name]
    model = model.double().eval()
    x = _input(shape)
    actual = hope_attr.unmixed_derivatives(model, x, ORDER)
    reference = CLOSED_FORM_REFERENCE.get(name, lambda m: m)(model)
    expected = unmixed_reference(reference, x, ORDER)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= TOLERANCE


def test_layer_norm_matches_nested_autograd_to_order_two() -> None:
    # Ties the closed-form reference above to PyTorch's own LayerNorm where autograd is right.
    model = nn.LayerNorm(4).double().eval()
    with torch.no_grad():
        model.weight.uniform_(0.5, 1.5)
        model.bias.uniform_(-0.5, 0.5)
    x = _input((2, 4))
    actual = hope_attr.unmixed_derivatives(model, x, 2)
    assert relative_error(actual, unmixed_reference_autograd(model, x, 2)) <= TOLERANCE


@pytest.mark.parametrize("name", ["ReLU", "LeakyReLU", "abs"])
def test_piecewise_linear_slope_matches_autograd(name: str) -> None:
    # The branch taken is the one at the expansion point: order 1 equals autograd's gradient.
    model, shape = CASES[name]
    model = model.double().eval()
    x = _input(shape).requires_grad_(True)
    grad = torch.autograd.grad(model(x)[:, 0].sum(), x)[0]
    actual = hope_attr.unmixed_derivatives(model, x.detach(), 1)[0, :, 0]
    torch.testing.assert_close(actual, grad, rtol=1e-12, atol=1e-14)


def test_maximum_at_a_tie_takes_autograds_half_slopes() -> None:
    f = lambda x: torch.maximum(x[:, :1], 0.5 * x[:, 1:])  # noqa: E731
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(f(x).sum(), x)
    actual = hope_attr.unmixed_derivatives(f, x.detach(), 1)[0, :, 0]
    torch.testing.assert_close(actual, expected)


def test_operator_targets_are_registered() -> None:
    # Python operators reach the rules through fx as operator.* functions.
    for op in (
        operator.add,
        operator.sub,
        operator.mul,
        operator.truediv,
        operator.matmul,
        operator.neg,
        operator.pow,
        operator.getitem,
    ):
        assert hope_attr.engine.registry.function_rule(op) is not None


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (4, 7, 6)),
        (nn.Conv1d(2, 3, 4, stride=3, padding=1), (2, 11)),
        (nn.Conv3d(1, 2, 2, stride=(1, 2, 1), padding=1), (1, 3, 4, 3)),
    ],
)
def test_first_conv_reads_kernel_slices(conv: nn.Module, shape: tuple[int, ...]) -> None:
    # The seed's response is gathered from the kernel; it must equal convolving one-hot images.
    from hope_attr.rules.linear import _conv_seed_response

    conv = conv.double()
    features = torch.Size(shape).numel()
    one_hots = torch.eye(features, dtype=torch.float64).reshape(features, *shape)
    expected = conv._conv_forward(one_hots, conv.weight, None)
    actual = _conv_seed_response(conv, 2, features - 1, torch.Size((1, *shape)))
    torch.testing.assert_close(actual, expected[2 : features - 1], rtol=0, atol=0)


def test_subclass_that_overrides_forward_does_not_inherit_the_rule() -> None:
    class DoubledLinear(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    model = nn.Sequential(DoubledLinear(3, 2), nn.Tanh()).double()
    x = _input((2, 3))
    actual = hope_attr.unmixed_derivatives(model, x, 3)
    assert relative_error(actual, unmixed_reference(model, x, 3)) <= TOLERANCE


def test_user_rules_can_use_torch_functions_and_operators_on_jets() -> None:
    class SoftCube(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x) ** 3 + x.exp() + torch.where(x > 0, abs(x), x.sin())

    @hope_attr.register_rule(SoftCube)
    def soft_cube(module: SoftCube, x: hope_attr.Jet) -> hope_attr.Jet:
        # torch functions, operators, tensor methods and comparisons all work on jets.
        return torch.tanh(x) ** 3 + torch.exp(x) + torch.where(x > 0, abs(x), x.sin())

    try:
        model = SoftCube()
        x = _input((2, 3))
        actual = hope_attr.unmixed_derivatives(model, x, 5)
        assert relative_error(actual, unmixed_reference(model, x, 5)) <= TOLERANCE
    finally:
        hope_attr.unregister_rule(SoftCube)


def test_orders_past_twenty_are_exact() -> None:
    # k! overflows int64 past k = 20; the tables must not. Closed forms: exp^(k) = exp,
    # sin^(k)(x) = sin(x + k pi / 2).
    x = torch.full((1, 1), 0.3, dtype=torch.float64)
    order = 24
    k = torch.arange(1, order + 1, dtype=torch.float64)
    exp = hope_attr.unmixed_derivatives(torch.exp, x, order)[:, 0, 0, 0]
    torch.testing.assert_close(
        exp, torch.full((order,), 0.3, dtype=torch.float64).exp(), rtol=1e-12, atol=0
    )
    sin = hope_attr.unmixed_derivatives(torch.sin, x, order)[:, 0, 0, 0]
    torch.testing.assert_close(sin, torch.sin(0.3 + k * torch.pi / 2), rtol=1e-12, atol=1e-14)
