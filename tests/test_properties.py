"""Property tests: random architectures against nested ``torch.func.jvp`` in float64.

Every example computes orders 1..6 at once and compares each order with the oracle
(:mod:`tests.oracle`); polynomials are compared with closed forms written out here, and
piecewise-linear networks with autograd's Jacobian (their orders >= 2 must be exactly zero).
Weights come from ``torch.manual_seed`` of a drawn integer, so a failing example replays.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import hope_attr
from tests.oracle import relative_error, unmixed_reference

ORDER = 6
TOLERANCE = 1e-9
DTYPE = torch.float64
SEEDS = st.integers(min_value=0, max_value=2**31 - 1)


pytestmark = pytest.mark.usefixtures("single_thread")


class Sin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


SMOOTH: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "softplus(beta=2)": lambda: nn.Softplus(beta=2.0),
    "elu": nn.ELU,
    "elu(alpha=0.5)": lambda: nn.ELU(alpha=0.5),
    "gelu": nn.GELU,
    "gelu(tanh)": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "sin": Sin,
}
PIECEWISE: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
}
ACTIVATIONS = {**SMOOTH, **PIECEWISE}
# Smooth activations three times as often as piecewise-linear ones.
ACTIVATION_NAMES = st.sampled_from(list(SMOOTH) * 3 + list(PIECEWISE))


def _inputs(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return scale * torch.randn(*shape, dtype=DTYPE, generator=generator)


def _check_against_oracle(
    model: nn.Module,
    x: torch.Tensor,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    actual = hope_attr.unmixed_derivatives(model, x, ORDER)
    expected = unmixed_reference(model if reference is None else reference, x, ORDER)
    assert actual.shape == expected.shape
    error = relative_error(actual, expected)
    assert error <= TOLERANCE, f"relative error {error:.3e} > {TOLERANCE:.0e}"


# ================================================================================ (a) MLPs
@st.composite
def mlp_specs(draw):
    depth = draw(st.integers(1, 4))
    return {
        "in_dim": draw(st.integers(1, 5)),
        "widths": draw(st.lists(st.integers(2, 8), min_size=depth, max_size=depth)),
        "activations": draw(st.lists(ACTIVATION_NAMES, min_size=depth, max_size=depth)),
        "out_dim": draw(st.integers(1, 3)),
        "batch": draw(st.integers(1, 3)),
        "gain": draw(st.sampled_from([0.5, 1.0, 2.0])),
        "input_scale": draw(st.sampled_from([0.5, 1.0, 2.0])),
        "seed": draw(SEEDS),
    }


def _mlp(spec: dict) -> nn.Module:
    torch.manual_seed(spec["seed"])
    layers: list[nn.Module] = []
    width = spec["in_dim"]
    for hidden, name in zip(spec["widths"], spec["activations"], strict=True):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[name]()]
        width = hidden
    layers.append(nn.Linear(width, spec["out_dim"]))
    model = nn.Sequential(*layers).to(DTYPE).eval()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(spec["gain"])
    return model


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(spec=mlp_specs())
def test_random_mlp_matches_oracle(spec: dict) -> None:
    model = _mlp(spec)
    x = _inputs(spec["seed"], (spec["batch"], spec["in_dim"]), spec["input_scale"])
    _check_against_oracle(model, x)


# ================================================================================ (b) CNNs
def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class Residual(nn.Module):
    """``x + f(x)``, with ``f`` shape-preserving."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


@st.composite
def cnn_specs(draw):
    dims = draw(st.sampled_from([1, 2]))
    in_channels = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([g for g in (1, 2) if in_channels % g == 0]))
    out_channels = groups * draw(st.integers(1, 2))
    size = draw(st.integers(5, 8)) if dims == 1 else draw(st.integers(4, 6))
    kernel = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    padding = draw(st.integers(0, kernel // 2 + 1))
    dilation = draw(st.integers(1, 2))
    conv_size = _out_size(size, kernel, stride, padding, dilation)
    assume(conv_size >= 1)
    norm = draw(st.sampled_from(["none", "batch", "layer", "group"]))
    norm_groups = draw(st.sampled_from([g for g in (1, 2, 4) if out_channels % g == 0]))
    if norm in ("layer", "group"):
        # Normalizing a single value is rejected by PyTorch (group norm) or constant (layer norm).
        groups_of_norm = norm_groups if norm == "group" else 1
        assume(out_channels // groups_of_norm * conv_size**dims > 1)
    pool = draw(st.sampled_from(["none", "avg", "max"])) if conv_size >= 2 else "none"
    pool_stride = draw(st.integers(1, 2))
    return {
        "dims": dims,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "groups": groups,
        "size": size,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "norm": norm,
        "norm_groups": norm_groups,
        "activation": draw(st.sampled_from(list(SMOOTH))),
        "residual": draw(st.booleans()),
        "residual_activation": draw(st.sampled_from(list(SMOOTH))),
        "pool": pool,
        "pool_stride": pool_stride,
        "out_dim": draw(st.integers(1, 3)),
        "batch": draw(st.integers(1, 3)),
        "seed": draw(SEEDS),
    }


def _randomize_norm(norm: nn.Module) -> None:
    with torch.no_grad():
        if getattr(norm, "weight", None) is not None:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)


def _layer_norm_closed_form(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm written out for the oracle.

    PyTorch's native layer_norm has wrong nested derivatives (forward-over-forward from order 2,
    reverse from order 3, torch 2.14.1), so the oracle differentiates the formula instead.
    """
    dims = tuple(range(-len(norm.normalized_shape), 0))
    centered = x - x.mean(dims, keepdim=True)
    variance = (centered * centered).mean(dims, keepdim=True)
    return centered * (variance + norm.eps) ** -0.5 * norm.weight + norm.bias


def _oracle_twin(model: nn.Sequential) -> Callable[[torch.Tensor], torch.Tensor]:
    """The same function as ``model``, with every LayerNorm in closed form."""

    def reference(x: torch.Tensor) -> torch.Tensor:
        for layer in model:
            x = _layer_norm_closed_form(layer, x) if isinstance(layer, nn.LayerNorm) else layer(x)
        return x

    return reference


def _cnn(spec: dict) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(spec["seed"])
    dims = spec["dims"]
    conv_cls = (nn.Conv1d, nn.Conv2d)[dims - 1]
    channels = spec["out_channels"]
    layers: list[nn.Module] = [
        conv_cls(
            spec["in_channels"],
            channels,
            spec["kernel"],
            stride=spec["stride"],
            padding=spec["padding"],
            dilation=spec["dilation"],
            groups=spec["groups"],
        )
    ]
    side = _out_size(
        spec["size"], spec["kernel"], spec["stride"], spec["padding"], spec["dilation"]
    )
    spatial = (side,) * dims
    if spec["norm"] != "none":
        norm = {
            "batch": lambda: (nn.BatchNorm1d, nn.BatchNorm2d)[dims - 1](channels),
            "layer": lambda: nn.LayerNorm([channels, *spatial]),
            "group": lambda: nn.GroupNorm(spec["norm_groups"], channels),
        }[spec["norm"]]()
        _randomize_norm(norm)
        layers.append(norm)
    layers.append(SMOOTH[spec["activation"]]())
    if spec["residual"]:
        same = conv_cls(channels, channels, 3, padding=1)
        layers.append(Residual(nn.Sequential(same, SMOOTH[spec["residual_activation"]]())))
    if spec["pool"] != "none":
        pool_cls = {
            "avg": (nn.AvgPool1d, nn.AvgPool2d),
            "max": (nn.MaxPool1d, nn.MaxPool2d),
        }[spec["pool"]][dims - 1]
        layers.append(pool_cls(2, stride=spec["pool_stride"]))
        side = _out_size(side, 2, spec["pool_stride"], 0, 1)
    layers += [nn.Flatten(), nn.Linear(channels * side**dims, spec["out_dim"])]
    model = nn.Sequential(*layers).to(DTYPE).eval()
    return model, (spec["batch"], spec["in_channels"], *(spec["size"],) * dims)


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(spec=cnn_specs())
def test_random_cnn_matches_oracle(spec: dict) -> None:
    model, shape = _cnn(spec)
    x = _inputs(spec["seed"], shape)
    _check_against_oracle(model, x, _oracle_twin(model))


# ================================================================================ (c) polynomials
class CubicMinusProduct(nn.Module):
    """``x1**3 - 2 x1 x2``, one output per example."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, 0:1], x[:, 1:2]
        return x1**3 - 2 * x1 * x2


def test_cubic_polynomial_closed_form() -> None:
    x = torch.tensor([[0.7, -1.3], [-2.0, 0.25], [0.0, 3.0]], dtype=DTYPE)
    actual = hope_attr.unmixed_derivatives(CubicMinusProduct(), x, ORDER)
    assert actual.shape == (ORDER, 3, 1, 2)
    x1, x2 = x[:, 0], x[:, 1]
    expected = torch.zeros(ORDER, 3, 1, 2, dtype=DTYPE)
    # d/dx1: 3 x1^2 - 2 x2, 6 x1, 6, then 0;  d/dx2: -2 x1, then 0.
    expected[0, :, 0, 0] = 3 * x1**2 - 2 * x2
    expected[1, :, 0, 0] = 6 * x1
    expected[2, :, 0, 0] = 6
    expected[0, :, 0, 1] = -2 * x1
    torch.testing.assert_close(actual, expected, rtol=1e-14, atol=1e-14)
    assert torch.all(actual[3:, ..., 0] == 0), "orders above the degree in x1 must be exactly 0"
    assert torch.all(actual[1:, ..., 1] == 0), "orders above the degree in x2 must be exactly 0"


Polynomial = dict[tuple[int, ...], float]  # exponent vector -> coefficient


def _multiply(p: Polynomial, q: Polynomial) -> Polynomial:
    out: Polynomial = {}
    for ep, cp in p.items():
        for eq, cq in q.items():
            e = tuple(a + b for a, b in zip(ep, eq, strict=True))
            out[e] = out.get(e, 0.0) + cp * cq
    return out


def _evaluate_monomial(x: torch.Tensor, exponents: tuple[int, ...], use_pow: bool):
    """``prod_j x_j^e_j`` by repeated products or by integer powers (1 for no factor)."""
    term = 1.0
    for j, e in enumerate(exponents):
        if e == 0:
            continue
        if use_pow:
            term = term * x[:, j] ** e
        else:
            for _ in range(e):
                term = term * x[:, j]
    return term


class PolynomialNet(nn.Module):
    """Each output is a sum of monomials, or a product of two such sums (jet x jet products)."""

    def __init__(self, outputs: list[list[Polynomial]], use_pow: bool) -> None:
        super().__init__()
        self.outputs = outputs
        self.use_pow = use_pow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = []
        for factors in self.outputs:
            value = None
            for p in factors:
                total = 0.0 * x[:, 0]  # a zero that depends on x, for constant polynomials
                for e, c in p.items():
                    total = total + c * _evaluate_monomial(x, e, self.use_pow)
                value = total if value is None else value * total
            columns.append(value)
        return torch.stack(columns, dim=1)


def _closed_form(poly: Polynomial, x: torch.Tensor, variable: int, k: int) -> torch.Tensor:
    """``d^k p / dx_variable^k`` term by term: ``e!/(e-k)! x^(e-k)``, other factors kept."""
    out = torch.zeros_like(x[:, 0])
    for exponents, c in poly.items():
        e = exponents[variable]
        if k > e:
            continue
        term = torch.full_like(out, c * math.perm(e, k))
        for j, ej in enumerate(exponents):
            power = ej - k if j == variable else ej
            term = term * x[:, j] ** power
        out = out + term
    return out


@st.composite
def polynomial_specs(draw):
    variables = draw(st.integers(1, 4))
    degree = draw(st.integers(1, 4))

    def polynomial(max_degree: int) -> Polynomial:
        terms = draw(st.integers(1, 4))
        poly: Polynomial = {}
        for _ in range(terms):
            exponents = [0] * variables
            for _ in range(draw(st.integers(0, max_degree))):
                exponents[draw(st.integers(0, variables - 1))] += 1
            coefficient = draw(st.integers(-5, 5).filter(bool)) / draw(st.sampled_from([1, 2, 4]))
            key = tuple(exponents)
            poly[key] = poly.get(key, 0.0) + coefficient
        return poly

    outputs = []
    for _ in range(draw(st.integers(1, 2))):
        if degree >= 2 and draw(st.booleans()):
            split = draw(st.integers(1, degree - 1))
            outputs.append([polynomial(split), polynomial(degree - split)])
        else:
            outputs.append([polynomial(degree)])
    return {
        "variables": variables,
        "outputs": outputs,
        "use_pow": draw(st.booleans()),
        "batch": draw(st.integers(1, 3)),
        "seed": draw(SEEDS),
    }


@settings(max_examples=40, deadline=None)
@given(spec=polynomial_specs())
def test_random_polynomial_closed_form(spec: dict) -> None:
    model = PolynomialNet(spec["outputs"], spec["use_pow"])
    x = _inputs(spec["seed"], (spec["batch"], spec["variables"]))
    actual = hope_attr.unmixed_derivatives(model, x, ORDER)
    outputs = len(spec["outputs"])
    assert actual.shape == (ORDER, spec["batch"], outputs, spec["variables"])
    for o, factors in enumerate(spec["outputs"]):
        expanded: Polynomial = {(0,) * spec["variables"]: 1.0}
        for p in factors:
            expanded = _multiply(expanded, p)
        for i in range(spec["variables"]):
            # Structural degree in x_i: orders above it vanish exactly, not just to rounding.
            degree = sum(max(e[i] for e in p) for p in factors)
            expected = torch.stack([_closed_form(expanded, x, i, k) for k in range(1, ORDER + 1)])
            got = actual[:, :, o, i]
            assert torch.all(got[degree:] == 0), f"orders > {degree} in x{i} are not exactly 0"
            scale = expected.abs().max().clamp_min(1.0)
            torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-12)


# ================================================================================ (d) ReLU nets
@st.composite
def relu_net_specs(draw):
    depth = draw(st.integers(1, 4))
    return {
        "in_dim": draw(st.integers(1, 5)),
        "widths": draw(st.lists(st.integers(2, 8), min_size=depth, max_size=depth)),
        "activations": draw(
            st.lists(st.sampled_from(list(PIECEWISE)), min_size=depth, max_size=depth)
        ),
        "out_dim": draw(st.integers(1, 3)),
        "batch": draw(st.integers(1, 3)),
        "gain": 1.0,
        "input_scale": 1.0,
        "seed": draw(SEEDS),
    }


def _pre_activations(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for layer in model:
        x = layer(x)
        if isinstance(layer, nn.Linear):
            out.append(x)
    return out[:-1]


@settings(max_examples=30, deadline=None)
@given(spec=relu_net_specs())
def test_relu_net_higher_orders_exactly_zero(spec: dict) -> None:
    model = _mlp(spec)
    x = _inputs(spec["seed"], (spec["batch"], spec["in_dim"]))
    with torch.no_grad():
        margin = min(z.abs().min().item() for z in _pre_activations(model, x))
    assume(margin > 1e-6)  # away from the kinks, where the derivatives exist
    actual = hope_attr.unmixed_derivatives(model, x, ORDER)
    assert torch.all(actual[1:] == 0), "a piecewise-linear net has exactly zero orders >= 2"
    # Order 1 is the diagonal of the Jacobian: (B, O, B, I) -> per example (B, O, I).
    jacobian = torch.autograd.functional.jacobian(model, x)
    per_example = torch.stack([jacobian[b, :, b] for b in range(x.shape[0])])
    torch.testing.assert_close(actual[0], per_example, rtol=1e-12, atol=1e-14)
    expected = unmixed_reference(model, x, 2)
    assert relative_error(actual[:2], expected) <= TOLERANCE
