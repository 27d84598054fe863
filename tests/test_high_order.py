"""High orders: factorials, sizes and the conditioning of mixed partials (issue 12, items 2-4).

References are closed forms, or tanh's derivatives from the polynomial recurrence
``P_{k+1}(y) = (1 - y^2) P_k'(y)`` in exact integers, evaluated with mpmath at 50 digits: both
independent of the engine's series recurrence.
"""

from __future__ import annotations

import math
import time
import warnings
from fractions import Fraction

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.derivatives import interpolation as _interpolation
from hope_attr.engine.factorials import DerivativeRangeWarning, split, times_integers

mpmath = pytest.importorskip("mpmath")


def _tanh_derivatives(x: float, order: int) -> list[float]:
    """``d^k tanh / dx^k`` at ``x`` for ``k = 1..order`` (50 digits, then float)."""
    mpmath.mp.dps = 50
    y = mpmath.tanh(mpmath.mpf(x))
    polynomial = [0, 1]  # P_0(y) = y, coefficients by power
    result = []
    for _ in range(order):
        derivative = [i * c for i, c in enumerate(polynomial)][1:]
        # (1 - y^2) P'(y)
        new = [0] * (len(derivative) + 2)
        for i, c in enumerate(derivative):
            new[i] += c
            new[i + 2] -= c
        polynomial = new
        result.append(float(sum(c * y**i for i, c in enumerate(polynomial))))
    return result


def test_split_is_exact_past_float64() -> None:
    for n in (1, 20, 35, 171, 300):
        mantissa, exponent = split(math.factorial(n))
        assert 0.5 <= mantissa < 1
        assert abs(Fraction(mantissa) * 2**exponent / math.factorial(n) - 1) < 1e-16


def test_float32_linear_model_is_zero_not_nan_at_order_36() -> None:
    model = nn.Linear(3, 2)
    with pytest.warns(DerivativeRangeWarning, match="may be inexact"):  # 0 may be an underflow
        derivatives = hope_attr.unmixed_derivatives(model, torch.randn(4, 3), 36)
    assert torch.isfinite(derivatives).all()
    assert (derivatives[1:] == 0).all()


def test_float32_tanh_at_order_36_is_finite_and_right() -> None:
    x = torch.full((1, 1), 0.3)
    actual = hope_attr.unmixed_derivatives(torch.tanh, x, 36)[:, 0, 0, 0].double()
    expected = torch.tensor(_tanh_derivatives(0.3, 36), dtype=torch.float64)
    assert abs(expected[35].item() - 1.3674e34) < 1e30  # the value
    assert ((actual - expected).abs() / expected.abs().clamp(min=1)).max() < 1e-3


def test_float32_overflow_is_inf_with_a_warning() -> None:
    # d^40 tanh(0.3) is about -8e38 (float32 stops at 3.4e38); order 39 still fits.
    x = torch.full((1, 1), 0.3)
    with pytest.warns(DerivativeRangeWarning, match="exceed the range"):
        actual = hope_attr.unmixed_derivatives(torch.tanh, x, 40)[:, 0, 0, 0]
    expected = _tanh_derivatives(0.3, 40)
    assert abs(expected[39]) > torch.finfo(torch.float32).max
    assert torch.isinf(actual[39])
    assert torch.isfinite(actual[:39]).all()


def test_float64_order_above_170_has_no_overflow_error() -> None:
    x = torch.full((1, 1), 0.3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the values fit: no warning either
        actual = hope_attr.unmixed_derivatives(torch.tanh, x, 175)[:, 0, 0, 0]
    expected = torch.tensor(_tanh_derivatives(0.3, 175), dtype=torch.float64)
    assert ((actual - expected).abs() / expected.abs().clamp(min=1)).max() < 1e-9


def test_exp_is_exactly_exp() -> None:
    x = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    actual = hope_attr.unmixed_derivatives(torch.exp, x, 170)[..., 0, 0]  # (170, 2)
    # 1.2e-13 measured: exp's table takes 1/k! as exp(-lgamma(k + 1)), whose argument (706 at
    # k = 170) carries its rounding into the result; the scaling by k! adds ~1e-16.
    assert torch.allclose(actual, torch.exp(x[:, 0]).expand(170, 2), rtol=3e-13, atol=0)
    actual32 = hope_attr.unmixed_derivatives(torch.exp, x.float(), 33)[..., 0, 0]
    assert torch.allclose(actual32, torch.exp(x[:, 0]).float().expand(33, 2), rtol=1e-5, atol=0)


def test_underflowed_coefficients_warn() -> None:
    # exp's coefficient e^x / 200! underflows float64: the derivative cannot be recovered.
    x = torch.zeros(1, 1, dtype=torch.float64)
    with pytest.warns(DerivativeRangeWarning, match="lower order"):
        hope_attr.unmixed_derivatives(torch.exp, x, 200)


def test_times_integers_matches_exact_arithmetic() -> None:
    c = torch.tensor([1.5e-30, -2.0, 3e-300], dtype=torch.float64)
    scales = [math.factorial(25), math.factorial(25), math.factorial(200)]
    expected = [float(Fraction(v) * s) for v, s in zip(c.tolist(), scales, strict=True)]
    actual = times_integers(c, scales)
    assert torch.allclose(actual, torch.tensor(expected, dtype=torch.float64), rtol=4e-16, atol=0)


def test_mixed_derivatives_float32_order_36_fits() -> None:
    x = torch.full((1, 1), 0.3)
    last = hope_attr.mixed_derivatives(torch.tanh, x, 36)[-1].reshape(-1)
    assert abs(last.item() / _tanh_derivatives(0.3, 36)[-1] - 1) < 1e-3


def _elapsed_error(call) -> tuple[float, str]:
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        call()
    return time.perf_counter() - start, str(error.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: hope_attr.mixed_derivatives(m, torch.zeros(1, 2), 36),
        lambda m: hope_attr.expand(m, torch.zeros(2), 10**6),
        lambda m: hope_attr.expand(m, torch.zeros(2), 10**5),
    ],
    ids=["mixed-order-36", "expand-order-1e6", "expand-order-1e5"],
)
def test_huge_requests_are_refused_fast(call) -> None:
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    elapsed, message = _elapsed_error(lambda: call(model))
    assert elapsed < 1.0
    # Either the size with its fix, or expand's order limit (checked first) with its fix.
    sized = "bytes" in message and "smaller order" in message
    assert sized or ("order must be from 1 to 1000" in message and "use an order" in message)


def test_huge_work_is_refused_fast() -> None:
    elapsed, message = _elapsed_error(lambda: hope_attr.expand(torch.tanh, torch.zeros(1), 10**6))
    assert elapsed < 1.0
    assert "smaller order" in message or "use an order in that range" in message


def test_max_bytes_is_the_budget() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.zeros(2, 3)
    # 2 points x (3 + 9 + 27) entries x 4 bytes = 312 bytes
    assert len(hope_attr.mixed_derivatives(model, x, 3, max_bytes=312)) == 3
    with pytest.raises(ValueError, match="312 bytes"):
        hope_attr.mixed_derivatives(model, x, 3, max_bytes=311)


def _exp_top_error(order: int, dtype: torch.dtype) -> float:
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x[:, :1] + x[:, 1:])

    poly = hope_attr.expand(f, torch.zeros(2, dtype=dtype), order)
    top = poly.exponents.sum(1) == order
    expected = torch.tensor(
        [1 / (math.factorial(a) * math.factorial(b)) for a, b in poly.exponents[top].tolist()],
        dtype=torch.float64,
    )
    actual = poly.coefficients[top, 0].double()
    return ((actual - expected).abs() / expected).max().item()


@pytest.mark.parametrize(
    ("order", "dtype", "bound"),
    # measured: 4.7e-13, 7.5e-11, 1.8e-5, 2.6e-2 (the integer-direction pseudo-inverse gave
    # 2.3e-10, 2.6e-3, 4.2e-2 and NaN)
    [
        (16, torch.float64, 1e-11),
        (30, torch.float64, 1e-9),
        (16, torch.float32, 1e-4),
        (30, torch.float32, 0.1),
    ],
)
@pytest.mark.parametrize("dense", [True, False])
def test_top_coefficients_of_exp_sum(
    monkeypatch, order: int, dtype: torch.dtype, bound: float, dense: bool
) -> None:
    if not dense:  # the face steps themselves, as for large p
        monkeypatch.setattr(_interpolation, "_DENSE_ENTRIES", 0)
    assert _exp_top_error(order, dtype) < bound


def test_expand_eight_variables_at_order_eight() -> None:
    # exp(w . x): the coefficient of x^a is w^a / a!
    weights = torch.tensor([0.3, -0.5, 0.2, 0.7, -0.1, 0.4, -0.6, 0.25], dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x @ weights)[:, None]

    start = time.perf_counter()
    poly = hope_attr.expand(f, torch.zeros(8, dtype=torch.float64), 8)
    assert time.perf_counter() - start < 30
    exponents = poly.exponents.double()
    expected = (weights**exponents).prod(1) / torch.exp(torch.lgamma(exponents + 1).sum(1))
    actual = poly.coefficients[:, 0]
    # 1.3e-10 measured: faces of 3 or more variables interpolate at integer points (ill-conditioned
    # past order ~10); the old pseudo-inverse needed minutes and gigabytes here.
    assert ((actual - expected).abs() / expected.abs()).max() < 1e-9


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_taylor_tables_match_nested_autograd(name: str) -> None:
    """The tables' ODE recursion (with the symmetric square series) against nested autograd."""
    from hope_attr.engine import taylor_tables as _taylor_tables

    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    table = getattr(_taylor_tables, name)(x, 12)
    leaf = x.clone().requires_grad_()
    derivative = getattr(torch, name)(leaf)
    torch.testing.assert_close(table[0], derivative.detach())
    for k in range(1, 13):
        (derivative,) = torch.autograd.grad(derivative.sum(), leaf, create_graph=True)
        expected = derivative.detach() / math.factorial(k)
        torch.testing.assert_close(table[k], expected, rtol=1e-12, atol=1e-14)
