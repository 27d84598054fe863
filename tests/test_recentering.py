"""Re-centering is exact, memory grows with the number of monomials, and sizes are refused fast.

References: exact rational arithmetic (``fractions``) on the explicit binomial formula over every
pair of monomials, and evaluation of both polynomials at points by a plain power-sum evaluator
written here (not the package's monomial table).
"""

from __future__ import annotations

import math
import resource
import time
from fractions import Fraction
from itertools import product

import pytest
import torch

import hope_attr
from hope_attr import TaylorPolynomial
from hope_attr.derivatives.monomials import multi_indices
from hope_attr.polynomial.recentering import MonomialIndex, binomial_table


def full_exponents(num_variables: int, order: int) -> torch.Tensor:
    rows = [(0,) * num_variables]
    for degree in range(1, order + 1):
        rows.extend(multi_indices(num_variables, degree))
    return torch.tensor(rows)


def random_polynomial(num_variables: int, order: int, outputs: int = 2) -> TaylorPolynomial:
    generator = torch.Generator().manual_seed(num_variables * 100 + order)
    exponents = full_exponents(num_variables, order)
    coefficients = torch.rand(len(exponents), outputs, generator=generator, dtype=torch.float64)
    # Multiples of 1/16: exact rationals with small denominators keep the reference fast.
    center = (torch.rand(num_variables, generator=generator, dtype=torch.float64) * 16).round()
    center = center / 16 - 0.5
    return TaylorPolynomial(center, exponents, 2 * coefficients - 1)


def evaluate(poly: TaylorPolynomial, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``P(x)`` as a plain sum of powers, and the sum of the terms' magnitudes (for tolerances)."""
    dx = x[:, None, :] - poly.center
    monomials = (dx ** poly.exponents.double()).prod(-1)  # (N, M)
    flat = poly.coefficients.reshape(len(poly.exponents), -1)
    return monomials @ flat, monomials.abs() @ flat.abs()


def recentered_by_fractions(poly: TaylorPolynomial, target: list[float]) -> dict:
    """``c'_b = sum_{a >= b} c_a prod_i C(a_i, b_i) d_i^(a_i - b_i)`` in exact rationals."""
    shift = [Fraction(t) - Fraction(c) for t, c in zip(target, poly.center.tolist(), strict=True)]
    exponents = [tuple(row) for row in poly.exponents.tolist()]
    coefficients = [[Fraction(v) for v in row] for row in poly.coefficients.tolist()]
    result = {}
    for b in exponents:
        sums = [Fraction(0)] * len(coefficients[0])
        for a, row in zip(exponents, coefficients, strict=True):
            if all(bi <= ai for ai, bi in zip(a, b, strict=True)):
                weight = Fraction(1)
                for ai, bi, d in zip(a, b, shift, strict=True):
                    weight *= math.comb(ai, bi) * d ** (ai - bi)
                sums = [s + weight * c for s, c in zip(sums, row, strict=True)]
        result[b] = [float(s) for s in sums]
    return result


def test_recentering_matches_exact_rational_arithmetic() -> None:
    poly = random_polynomial(3, 5)
    target = [0.75, -1.25, 0.3]
    moved = poly.recenter(torch.tensor(target, dtype=torch.float64))
    expected = recentered_by_fractions(poly, target)
    for row, values in zip(moved.exponents.tolist(), moved.coefficients.tolist(), strict=True):
        torch.testing.assert_close(
            torch.tensor(values), torch.tensor(expected[tuple(row)]), rtol=1e-13, atol=1e-13
        )


def test_recentering_at_p8_n6_is_exact_fast_and_small() -> None:
    # The size where the dense (M, M, p) transform took 2.2 GiB and 21 s (M = 3003).
    poly = random_polynomial(8, 6)
    target = poly.center + 0.5
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, only ever grows
    start = time.perf_counter()
    moved = poly.recenter(target)
    around_zero = poly.terms(around_zero=True, output=1)
    seconds = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert seconds < 3.0
    assert grown_mib < 200
    x = target + 0.3 * torch.randn(16, 8, generator=torch.Generator().manual_seed(1)).double()
    value, scale = evaluate(poly, x)
    moved_value, _ = evaluate(moved, x)
    assert ((moved_value - value).abs() <= 1e-13 * scale).all()
    assert len(around_zero) == len(poly.exponents)  # random coefficients: no term vanishes


def test_recentering_a_set_that_is_not_closed_keeps_every_term() -> None:
    # x^3 + 2 y^2 x around (0, 0), moved to (1, -2): the old dense transform kept only the
    # monomials already present and silently dropped (x - 1)^2, (x - 1), ... .
    poly = TaylorPolynomial(
        torch.zeros(2, dtype=torch.float64),
        torch.tensor([[3, 0], [1, 2]]),
        torch.tensor([[1.0], [2.0]], dtype=torch.float64),
    )
    moved = poly.recenter([1.0, -2.0])
    assert len(moved.exponents) == 4 + 6 - 2  # divisors of x^3 and of x y^2, shared ones once
    expected = recentered_by_fractions(
        TaylorPolynomial(
            poly.center,
            moved.exponents,
            torch.cat([poly.coefficients, torch.zeros(len(moved.exponents) - 2, 1).double()]),
        ),
        [1.0, -2.0],
    )
    for row, values in zip(moved.exponents.tolist(), moved.coefficients.tolist(), strict=True):
        assert values == pytest.approx(expected[tuple(row)], rel=1e-15, abs=1e-15)
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(2)).double()
    torch.testing.assert_close(evaluate(moved, x)[0], evaluate(poly, x)[0], rtol=1e-13, atol=1e-13)
    back = moved.recenter(torch.zeros(2))
    torch.testing.assert_close(back(x), poly(x), rtol=1e-13, atol=1e-13)


def test_recentering_with_many_variables_uses_checked_random_keys() -> None:
    # 70 variables: (max_i + 1)^70 = 3^70 does not fit 62 bits, so rows get random keys.
    poly = random_polynomial(70, 2, outputs=1)
    assert not MonomialIndex(poly.exponents).exact
    target = torch.linspace(-1, 1, 70, dtype=torch.float64)
    moved = poly.recenter(target)
    x = target + 0.2 * torch.randn(5, 70, generator=torch.Generator().manual_seed(3)).double()
    value, scale = evaluate(poly, x)
    assert ((evaluate(moved, x)[0] - value).abs() <= 1e-13 * scale).all()


def test_duplicate_monomials_are_found_with_both_kinds_of_keys() -> None:
    for num_variables in (3, 70):
        exponents = torch.zeros(4, num_variables, dtype=torch.long)
        exponents[1, 0], exponents[2, -1], exponents[3, 0] = 1, 2, 1  # rows 1 and 3 repeat
        with pytest.raises(ValueError, match="appears more than once"):
            MonomialIndex(exponents)


def test_binomials_are_the_correctly_rounded_integers() -> None:
    table = binomial_table(1000)
    for n in (0, 1, 40, 57, 500, 999, 1000):
        row = [float(math.comb(n, k)) for k in range(n + 1)]
        assert table[n, : n + 1].tolist() == row
    assert torch.isfinite(table).all()


def test_discovery_matches_recentering_each_polynomial_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    model = model.double().eval()
    center = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    found = hope_attr.discover(model, center, radius=0.5, num_points=4, order=3)
    for poly in found.polynomials:
        torch.testing.assert_close(poly.center, center)
    # Independent route: expand at each point alone, re-center with the fractions formula.
    generator = torch.Generator().manual_seed(0)
    offsets = torch.rand(4, 3, generator=generator, dtype=torch.float64) * 2 - 1
    points = torch.cat([center[None], center + 0.5 * offsets])
    for point, poly in zip(points, found.polynomials, strict=True):
        local = hope_attr.expand(model, point, 3)
        expected = recentered_by_fractions(local, center.tolist())
        for row, values in zip(poly.exponents.tolist(), poly.coefficients.tolist(), strict=True):
            assert values == pytest.approx(expected[tuple(row)], rel=1e-10, abs=1e-12)
    rows = {text: mean for mean, _, text in found.terms(around_zero=True, output=1, digits=12)}
    references = [recentered_by_fractions(p, [0.0, 0.0, 0.0]) for p in found.polynomials]
    for exponent in found.polynomials[0].exponents.tolist():
        text = found.mean._monomial_text(exponent, around_zero=True)
        expected = sum(r[tuple(exponent)][1] for r in references) / len(references)
        if text in rows:
            assert rows[text] == pytest.approx(expected, abs=1e-11)
        else:
            assert abs(expected) < 1e-11


def test_overflowing_shift_is_refused() -> None:
    # x^400 moved by 1000: the coefficient of x^200 is C(400, 200) 1e600.
    poly = TaylorPolynomial(
        torch.zeros(1, dtype=torch.float64), torch.tensor([[400]]), torch.ones(1)
    )
    with pytest.raises(ValueError, match="overflowed float64"):
        poly.recenter([1e3])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hope_attr.expand(torch.sin, torch.zeros(2), 10**6), "order must be from 1"),
        (lambda: hope_attr.expand(torch.sin, torch.zeros(8), 100), "more than 1,000,000 monomials"),
        (lambda: hope_attr.expand(torch.sin, torch.zeros(2), 0), "order must be from 1"),
        (lambda: hope_attr.discover(torch.sin, torch.zeros(8), 1.0, 10**5, 6), "GiB"),
        (
            lambda: TaylorPolynomial(
                torch.zeros(8), torch.full((1, 8), 125), torch.ones(1, 1)
            ).recenter(torch.ones(8)),
            "needs the monomials that divide",
        ),
        (
            lambda: hope_attr.expand(torch.sin, torch.zeros(8), 1).bounds(torch.zeros(1, 8), 1.0),
            "points_per_axis",
        ),
    ],
)
def test_sizes_are_refused_up_front(call, message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as raised:
        call()
    assert time.perf_counter() - start < 0.5
    assert "use " in str(raised.value) or "drop " in str(raised.value)  # the fix


def test_any_set_of_monomials_recenters_exactly() -> None:
    # Subsets of the monomials of degree <= 2 per variable in two variables, closed or not.
    cells = list(product(range(3), range(3)))
    center = torch.tensor([0.25, -0.5], dtype=torch.float64)
    for mask in range(1, 2 ** len(cells), 37):
        rows = [cell for bit, cell in enumerate(cells) if mask >> bit & 1]
        coefficients = torch.arange(1, len(rows) + 1, dtype=torch.float64)[:, None]
        poly = TaylorPolynomial(center, torch.tensor(rows), coefficients)
        moved = poly.recenter([1.0, 2.0])
        x = torch.tensor([[0.3, 0.7], [-1.0, 2.0]], dtype=torch.float64)
        torch.testing.assert_close(moved(x), poly(x), rtol=1e-13, atol=1e-13)
