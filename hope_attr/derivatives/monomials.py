"""Monomials of ``p`` variables by degree, in the one order every mixed-partial routine uses."""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations_with_replacement


@lru_cache(maxsize=64)
def multi_indices(num_variables: int, degree: int) -> tuple[tuple[int, ...], ...]:
    """All exponent vectors ``a`` with ``|a| = degree``, in a fixed (descending lexicographic)
    order: ``x1^2, x1 x2, ..., x1 xp, x2^2, ...`` for degree 2."""
    result = []
    for combination in combinations_with_replacement(range(num_variables), degree):
        exponents = [0] * num_variables
        for variable in combination:
            exponents[variable] += 1
        result.append(tuple(exponents))
    return tuple(sorted(result, reverse=True))


def count(num_variables: int, degree: int) -> int:
    """How many monomials of exactly ``degree`` there are: ``C(p + degree - 1, degree)``."""
    return math.comb(num_variables + degree - 1, degree)
