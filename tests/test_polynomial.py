"""Taylor polynomials: exact on polynomials, exact algebra, round trips, and the paper's bounds."""

from __future__ import annotations

import math

import pytest
import sympy
import torch
from torch import nn

import hope_attr
from hope_attr import TaylorPolynomial


def known_polynomial(x: torch.Tensor) -> torch.Tensor:
    """``0.5 + x1 + 0.6 x2 x3 - 0.8 x2 x4 + x1 x2 x3 - x3 x5`` (the paper's second example)."""
    x1, x2, x3, x4, x5 = (x[:, i : i + 1] for i in range(5))
    return 0.5 + x1 + 0.6 * x2 * x3 - 0.8 * x2 * x4 + x1 * x2 * x3 - x3 * x5


KNOWN_TERMS = {
    "1": 0.5,
    "x1": 1.0,
    "x2 x3": 0.6,
    "x2 x4": -0.8,
    "x1 x2 x3": 1.0,
    "x3 x5": -1.0,
}


def test_known_polynomial_is_expanded_exactly_from_any_center() -> None:
    center = torch.tensor([0.3, -0.7, 1.1, 0.2, -0.4], dtype=torch.float64)
    poly = hope_attr.expand(known_polynomial, center, order=4)
    terms = {monomial: value for value, monomial in poly.terms(around_zero=True, digits=14)}
    assert set(terms) == set(KNOWN_TERMS)
    for monomial, value in KNOWN_TERMS.items():
        assert abs(terms[monomial] - value) <= 1e-12


def test_chunks_of_directions_change_nothing_and_the_old_name_warns() -> None:
    # One direction per chunk against the closed form; internal_batch_size is the old name.
    center = torch.tensor([0.3, -0.7, 1.1, 0.2, -0.4], dtype=torch.float64)
    chunked = hope_attr.expand(known_polynomial, center, order=3, directions_per_chunk=1)
    with pytest.warns(FutureWarning, match="directions_per_chunk"):
        old_name = hope_attr.expand(known_polynomial, center, order=3, internal_batch_size=2)
    for poly in (chunked, old_name):
        terms = {monomial: value for value, monomial in poly.terms(around_zero=True, digits=14)}
        assert terms.keys() == KNOWN_TERMS.keys()
        assert all(abs(terms[m] - value) <= 1e-12 for m, value in KNOWN_TERMS.items())
    with pytest.raises(TypeError, match="internal_batch_size is its old name"):
        hope_attr.expand(known_polynomial, center, 3, directions_per_chunk=1, internal_batch_size=1)


def _smooth_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()


def test_evaluation_recentering_module_and_saving(tmp_path) -> None:
    model = _smooth_net()
    x0 = torch.tensor([0.2, -0.3], dtype=torch.float64)
    poly = hope_attr.expand(model, x0, order=8)
    x = x0 + 0.05 * torch.randn(7, 2, dtype=torch.float64)
    with torch.no_grad():
        assert (poly(x) - model(x)).abs().max() < 1e-8  # remainder ~ |dx|^9
    moved = poly.recenter(torch.tensor([0.5, 0.1], dtype=torch.float64))
    torch.testing.assert_close(moved(x), poly(x), rtol=0, atol=1e-13)
    torch.testing.assert_close(
        moved.recenter(x0).coefficients, poly.coefficients, rtol=0, atol=1e-12
    )
    torch.testing.assert_close(poly.to_module()(x), poly(x), rtol=0, atol=0)
    path = tmp_path / "poly.json"
    poly.save(path)
    loaded = TaylorPolynomial.load(path)
    torch.testing.assert_close(loaded(x), poly(x), rtol=0, atol=0)
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a saved TaylorPolynomial"):
        TaylorPolynomial.load(tmp_path / "other.json")


def test_explicit_formulas() -> None:
    f = lambda x: torch.exp(x[:, :1]) * x[:, 1:]  # noqa: E731
    poly = hope_attr.expand(f, torch.zeros(2, dtype=torch.float64), order=3, names=["a", "b"])
    a, b = sympy.symbols("a b")
    difference = sympy.Poly(sympy.expand(poly.to_sympy() - (b + a * b + a**2 * b / 2)), a, b)
    assert all(abs(c) < 1e-12 for c in difference.coeffs())
    assert "a^{2} b" in poly.to_latex()
    centered = hope_attr.expand(f, torch.tensor([1.0, 0.0], dtype=torch.float64), order=3)
    # Written in powers of (x - x0): e (x2) + e (x1 - 1) x2 + ...
    assert "(x1 - 1.0)" in str(centered.to_sympy(readable=True))
    assert r"\left(x_{1} - 1.0\right)" in centered.to_latex()


def test_to_sympy_is_a_plain_expression_and_readable_on_request() -> None:
    # exp(x1) x2 around (1, 0): substituting numbers gives a float, expand multiplies out
    # (issue 12, item 9: the unevaluated factors made float() fail and expand() a no-op).
    f = lambda x: torch.exp(x[:, :1]) * x[:, 1:]  # noqa: E731
    center = torch.tensor([1.0, 0.0], dtype=torch.float64)
    poly = hope_attr.expand(f, center, order=3)
    x1, x2 = sympy.symbols("x1 x2")
    plain = poly.to_sympy()
    point = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    assert float(plain.subs({x1: 0.5, x2: -1.0})) == pytest.approx(poly(point).item(), rel=1e-14)
    # The cubic Taylor polynomial around (1, 0) in closed form: e x2 (1 + u + u^2 / 2), u = x1 - 1.
    u = x1 - 1
    expected = sympy.expand(sympy.E * x2 * (1 + u + u**2 / 2))
    difference = sympy.Poly(sympy.expand(plain) - expected, x1, x2)
    assert all(abs(float(c)) < 1e-12 for c in difference.coeffs())
    assert sympy.expand(plain) != plain  # expand does multiply out
    readable = poly.to_sympy(readable=True)
    assert readable.atoms(sympy.UnevaluatedExpr)
    assert not plain.atoms(sympy.UnevaluatedExpr)
    assert float(readable.doit().subs({x1: 0.5, x2: -1.0})) == pytest.approx(
        poly(point).item(), rel=1e-14
    )


def test_names_with_spaces_or_commas_stay_one_symbol() -> None:
    poly = TaylorPolynomial(
        torch.zeros(2, dtype=torch.float64),
        torch.tensor([[1, 0], [0, 1]]),
        torch.tensor([2.0, 3.0], dtype=torch.float64),
        names=["tank level", "a,b"],
    )
    expression = poly.to_sympy()
    assert {str(s) for s in expression.free_symbols} == {"tank level", "a,b"}


def test_expand_copies_the_callers_point() -> None:
    x0 = torch.tensor([0.2, -0.3], dtype=torch.float64)
    poly = hope_attr.expand(_smooth_net(), x0, order=2)
    x = torch.tensor([[0.1, 0.1]], dtype=torch.float64)
    before = poly(x).clone()
    x0 += 5.0  # the caller reuses their tensor
    torch.testing.assert_close(poly.center, torch.tensor([0.2, -0.3], dtype=torch.float64))
    torch.testing.assert_close(poly(x), before, rtol=0, atol=0)
    found = hope_attr.discover(_smooth_net(), x0, radius=0.1, num_points=2, order=2)
    x0 -= 5.0
    torch.testing.assert_close(found.mean.center, torch.tensor([5.2, 4.7], dtype=torch.float64))


def test_remainder_bound_holds_on_a_one_dimensional_network() -> None:
    torch.manual_seed(1)
    model = (
        nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
        .double()
        .eval()
    )
    x = torch.linspace(-6, 6, 301, dtype=torch.float64)[:, None]
    with torch.no_grad():
        truth = model(x)
    for order in range(1, 17):
        poly = hope_attr.expand(model, torch.zeros(1, dtype=torch.float64), order)
        bound = poly.remainder_bound(x, radius=6.0, points_per_axis=601)
        lower, upper = poly.bounds(x, radius=6.0, points_per_axis=601)
        error = (poly(x) - truth).abs()
        rounding = 1e-12 * (1 + poly(x).abs())  # evaluating P itself rounds
        assert (bound + rounding >= error).all(), f"order {order}"
        assert (lower <= truth + rounding).all() and (truth <= upper + rounding).all()


def test_convergence_ratios_closed_form() -> None:
    # d^k exp(2x) = 2^k e^(2x): ratios 2^(k-1).
    poly = hope_attr.expand(lambda x: torch.exp(2 * x), torch.zeros(1, dtype=torch.float64), 6)
    expected = torch.tensor([2.0**k for k in range(6)], dtype=torch.float64)
    torch.testing.assert_close(poly.convergence_ratios(), expected)


def test_discovery_recovers_the_terms_of_a_known_function() -> None:
    center = torch.zeros(5, dtype=torch.float64)
    found = hope_attr.discover(known_polynomial, center, radius=1.0, num_points=10, order=3)
    rows = found.terms(threshold=1e-6, around_zero=True, digits=10)
    assert {monomial for _, _, monomial in rows} == set(KNOWN_TERMS)
    for mean, spread, monomial in rows:
        assert math.isclose(mean, KNOWN_TERMS[monomial], abs_tol=1e-9)
        assert spread < 1e-9  # a polynomial re-centers to itself from every point


@pytest.mark.parametrize(
    "exponents",
    [
        [[0, 0], [1, 0], [0, 1], [2, 0], [1, 1], [0, 2], [3, 0], [2, 1]],  # closed, by degree
        [[1, 1], [0, 0], [0, 1], [1, 0], [2, 1], [2, 0]],  # closed, in any order
        [[0, 0], [2, 1], [0, 3]],  # not closed: falls back to powers
    ],
)
def test_evaluation_of_any_set_of_monomials(exponents: list[list[int]]) -> None:
    torch.manual_seed(3)
    center = torch.tensor([0.3, -0.2], dtype=torch.float64)
    coefficients = torch.randn(len(exponents), 2, dtype=torch.float64)
    poly = TaylorPolynomial(center, torch.tensor(exponents), coefficients)
    x = torch.randn(5, 2, dtype=torch.float64)
    expected = torch.tensor(
        [
            [
                sum(
                    c[o] * (row[0] - 0.3) ** a * (row[1] + 0.2) ** b
                    for c, (a, b) in zip(coefficients.tolist(), exponents, strict=True)
                )
                for o in range(2)
            ]
            for row in x.tolist()
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(poly(x), expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(poly.to_module()(x), expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(poly.to_module().float()(x.float()), expected.float())


@pytest.mark.parametrize("exponents", [[[0], [1], [2], [3]], [[2], [0], [3], [1]], [[0], [3]]])
def test_univariate_evaluation(exponents: list[list[int]]) -> None:
    coefficients = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-3.0, 1.5], [0.75, 4.0]])
    coefficients = coefficients[: len(exponents)].double()
    poly = TaylorPolynomial(
        torch.tensor([0.4], dtype=torch.float64), torch.tensor(exponents), coefficients
    )
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    expected = sum(c * (x - 0.4) ** e[0] for c, e in zip(coefficients, exponents, strict=True))
    torch.testing.assert_close(poly(x), expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(poly.to_module()(x), expected, rtol=1e-13, atol=1e-13)


def test_high_order_binomials_and_ratios_are_computed_in_float64() -> None:
    # x^40 around 0, re-centered at 1: the coefficient of (x - 1)^20 is C(40, 20) exactly
    # (float32 binomials are off in the 8th digit there), and the Table 2 ratios stay finite
    # past 34! (which overflows float32).
    poly = hope_attr.expand(lambda x: x**40, torch.zeros(1, dtype=torch.float64), 40)
    moved = poly.recenter(torch.ones(1, dtype=torch.float64))
    row = (moved.exponents[:, 0] == 20).nonzero().item()
    assert moved.coefficients.reshape(len(moved.exponents), -1)[row, 0].item() == pytest.approx(
        math.comb(40, 20), rel=1e-12
    )
    tanh = hope_attr.expand(torch.tanh, torch.zeros(1, dtype=torch.float64), 40)
    assert torch.isfinite(tanh.convergence_ratios()).all()
