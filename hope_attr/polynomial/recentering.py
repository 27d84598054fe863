"""Exact re-centering: ``sum_a c_a (x - c)^a`` rewritten in powers of ``x - (c + d)``.

Binomial expansion one variable at a time. Moving the center by ``d_i`` along ``x_i`` alone sends
the coefficient of monomial ``a`` to every ``a - j e_i`` (``1 <= j <= a_i``) with weight
``C(a_i, j) d_i^j``, since ``(y_i + d_i)^a_i = sum_j C(a_i, j) d_i^j y_i^(a_i - j)``. Shifts along
different axes commute, so applying them axis after axis is the whole shift. Each axis touches
``sum_a a_i`` (source, target) pairs: memory grows like ``M x n`` for ``M`` monomials of degree
at most ``n``. At ``p = 8``, ``n = 6`` (``M = 3003``, one output) re-centering raised the peak
resident memory by 2.1 MiB in 0.06 s, where the dense ``(M, M, p)`` transform of every pair
before (commit 4567f5f) raised it by 2216 MiB in 21 s
(``OMP_NUM_THREADS=1 python -m benchmarks.recenter_memory``, 2 shared CPU cores).

The targets ``a - j e_i`` must be monomials of the polynomial. Taylor polynomials' sets are
closed under lowering an exponent; other sets are first completed with zero coefficients
(:func:`close_downwards`), refused up front when that would need too many monomials.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

# Keys stay below 2**62: exact mixed-radix keys when the radices fit, else random weights below
# 2**52 times a total degree of at most 1000 (< 2**10).
_KEY_LIMIT = 2**62
_RANDOM_WEIGHT_BITS = 52


class MonomialIndex:
    """Rows of an exponent table ``(M, p)`` found by their exponents, vectorized.

    Each row gets an integer key linear in its exponents, ``key(a) = sum_i a_i w_i``, so the key
    of ``a - j e_i`` is ``key(a) - j w_i`` without building that row. The weights are a mixed
    radix (exact) when ``prod_i (max_i + 1)`` fits in 62 bits, else random; random keys are
    checked against the rows they point to, and redrawn when two rows share one.

    Raises:
        ValueError: two rows are the same monomial.
    """

    def __init__(self, exponents: Tensor) -> None:
        self.exponents = exponents
        radices = (exponents.amax(0) + 1).tolist() if len(exponents) else []
        weights, product = [], 1
        for radix in radices:
            weights.append(product)
            product *= radix
            if product >= _KEY_LIMIT:
                break
        self.exact = product < _KEY_LIMIT
        for seed in range(16):
            if self.exact:
                self.weights = torch.tensor(weights, dtype=torch.long)
            else:
                generator = torch.Generator().manual_seed(seed)
                high = 2**_RANDOM_WEIGHT_BITS
                self.weights = torch.randint(high, (len(radices),), generator=generator)
            self.weights = self.weights.to(exponents.device)
            self.keys = (exponents * self.weights).sum(1)
            self.sorted_keys, self.order = torch.sort(self.keys)
            if self._keys_are_distinct():
                return
        raise RuntimeError("could not index the monomials (16 key collisions in a row)")

    def _keys_are_distinct(self) -> bool:
        same = (self.sorted_keys[1:] == self.sorted_keys[:-1]).nonzero().squeeze(1)
        if len(same) == 0:
            return True
        first, second = self.order[same], self.order[same + 1]
        duplicate = (self.exponents[first] == self.exponents[second]).all(1)
        if duplicate.any():
            row = self.exponents[first[duplicate][0]].tolist()
            raise ValueError(f"the monomial with exponents {row} appears more than once")
        if self.exact:  # cannot happen: mixed-radix keys of distinct rows differ
            raise RuntimeError("exact monomial keys collided")
        return False

    def locate(self, sources: Tensor, variable: int, step: int) -> Tensor:
        """Rows of ``exponents[sources] - step * e_variable``; ``-1`` where there is none."""
        if len(self.keys) == 0:
            return torch.full_like(sources, -1)
        query = self.keys[sources] - step * self.weights[variable]
        position = torch.searchsorted(self.sorted_keys, query).clamp(max=len(self.keys) - 1)
        found = self.order[position]
        hit = self.sorted_keys[position] == query
        if not self.exact:
            checked = hit.nonzero().squeeze(1)
            wanted = self.exponents[sources[checked]]
            wanted[:, variable] -= step
            hit[checked] = (self.exponents[found[checked]] == wanted).all(1)
        return torch.where(hit, found, -1)


def close_downwards(exponents: Tensor, max_monomials: int) -> tuple[Tensor, MonomialIndex]:
    """The set with every monomial that divides one of its monomials, original rows first.

    Raises:
        ValueError: the completed set could exceed ``max_monomials`` (checked before building).
    """
    index = MonomialIndex(exponents)
    missing = _missing_parents(index)
    if len(missing) == 0:
        return exponents, index
    # Each monomial a has prod_i (a_i + 1) divisors: their sum bounds the completed set.
    bound = torch.exp(torch.log1p(exponents.double()).sum(1)).sum().item()
    if bound > max_monomials:
        raise ValueError(
            f"re-centering this polynomial needs the monomials that divide its monomials (every "
            f"(x - c)^a spreads over all of them): up to {bound:.3g}, above the limit of "
            f"{max_monomials:,}; drop the high-degree monomials or keep this center"
        )
    while len(missing):
        exponents = torch.cat([exponents, torch.unique(missing, dim=0)])
        index = MonomialIndex(exponents)
        missing = _missing_parents(index)
    return exponents, index


def _missing_parents(index: MonomialIndex) -> Tensor:
    """``a - e_i`` for every row ``a`` with ``a_i > 0`` that is not itself a row."""
    exponents = index.exponents
    missing = []
    for variable in range(exponents.shape[1]):
        sources = (exponents[:, variable] > 0).nonzero().squeeze(1)
        absent = sources[index.locate(sources, variable, 1) < 0]
        if len(absent):
            rows = exponents[absent].clone()
            rows[:, variable] -= 1
            missing.append(rows)
    return torch.cat(missing) if missing else exponents[:0]


class TaylorShift:
    """The pairs ``(a, a - j e_i)`` and weights ``C(a_i, j)`` of a set closed downwards."""

    def __init__(self, index: MonomialIndex) -> None:
        exponents = index.exponents
        self.num_monomials = len(exponents)
        self.steps: list[tuple[int, list[tuple[int, Tensor, Tensor, Tensor]]]] = []
        for variable in range(exponents.shape[1]):
            column = exponents[:, variable]
            top = int(column.max()) if len(column) else 0
            if top == 0:
                continue
            binomials = binomial_table(top).to(exponents.device)
            per_step = []
            for step in range(1, top + 1):
                sources = (column >= step).nonzero().squeeze(1)
                targets = index.locate(sources, variable, step)
                if (targets < 0).any():
                    raise RuntimeError("TaylorShift needs a set closed under lowering exponents")
                weights = binomials[column[sources], step]
                per_step.append((step, sources, targets, weights))
            self.steps.append((variable, per_step))

    def apply(self, coefficients: Tensor, shift: Tensor) -> Tensor:
        """Re-centered coefficients ``(B, M, F)`` for ``B`` polynomials moved by ``shift (B, p)``.

        Computed in ``coefficients``' dtype (callers pass float64).
        """
        for variable, per_step in self.steps:
            along = shift[:, variable].to(coefficients.dtype)
            if not bool((along != 0).any()):
                continue  # exactly unchanged, not merely rounded back
            moved = coefficients.clone()
            for step, sources, targets, weights in per_step:
                scale = weights.to(coefficients.dtype)[None, :] * along[:, None].pow(step)
                moved.index_add_(1, targets, coefficients[:, sources] * scale[..., None])
            coefficients = moved
        return coefficients


def shift_coefficients(
    shift: TaylorShift, coefficients: Tensor, offsets: Tensor, degree: int
) -> Tensor:
    """``B`` polynomials' coefficients ``(B, M, F)`` re-centered by ``offsets (B, p)``, in float64.

    ``coefficients`` hold the first ``M`` monomials of the set ``shift`` acts on (the original
    rows come first in :func:`close_downwards`); the monomials added to close the set start at
    zero. Returns ``(B, M', F)`` float64, ``M'`` the size of the closed set.

    Raises:
        ValueError: finite coefficients overflow float64 (a shift too far for the ``degree``).
    """
    flat = coefficients.double()
    if shift.num_monomials > flat.shape[1]:  # monomials added to close the set start at zero
        padding = flat.new_zeros(len(flat), shift.num_monomials - flat.shape[1], flat.shape[2])
        flat = torch.cat([flat, padding], dim=1)
    moved = shift.apply(flat, offsets)
    if not bool(torch.isfinite(moved).all()) and bool(torch.isfinite(flat).all()):
        raise ValueError(
            f"re-centering overflowed float64: a shift of up to {offsets.abs().max().item():.3g} "
            f"at degree {degree} makes coefficients beyond 1.8e308; re-center nearer "
            "or lower the order"
        )
    return moved


@lru_cache(maxsize=8)
def binomial_table(top: int) -> Tensor:
    """``(top + 1, top + 1)`` float64: ``C(n, k)`` rounded once from exact integers.

    Pascal's rule in Python integers: ``exp(lgamma)`` is off in the 12th digit near
    ``C(1000, 500)``.
    """
    table = torch.zeros(top + 1, top + 1, dtype=torch.float64)
    row = [1]
    for n in range(top + 1):
        table[n, : n + 1] = torch.tensor([float(value) for value in row], dtype=torch.float64)
        row = [1] + [row[k - 1] + row[k] for k in range(1, n + 1)] + [1]
    return table


def count_monomials(num_variables: int, order: int, limit: int) -> int:
    """``C(p + n, n)``, the monomials of degree ``<= n`` in ``p`` variables; ``limit + 1`` as soon
    as the count passes ``limit`` (instant for any ``p`` and ``n``)."""
    small, large = sorted((num_variables, order))
    total = 1
    for i in range(1, small + 1):
        total = total * (large + i) // i  # C(large + i, i), an integer at every step
        if total > limit:
            return limit + 1
    return total


__all__ = [
    "MonomialIndex",
    "TaylorShift",
    "binomial_table",
    "close_downwards",
    "count_monomials",
    "shift_coefficients",
]
