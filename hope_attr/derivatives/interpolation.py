"""Directions for univariate jets, and the recovery of every mixed coefficient from them.

Along a direction ``z`` the order-``d`` Taylor coefficient of ``t -> f(x0 + t z)`` is
``P_d(z) = sum_{|a| = d} f_a z^a`` with ``f_a = d^a f / a!``. Recovering the ``f_a`` from such
values is an interpolation problem, and its conditioning depends on the directions only.
Integer directions ``|j| = n`` (Griewank, Utke and Walther, Math. Comp. 2000) make it a
Vandermonde system on integers: exact in rational arithmetic, but it amplifies the jets' rounding
by ``~1e6`` at ``p = 2, n = 16`` and ``~1e12`` at ``n = 30`` (the exact inverse, computed with
sympy), and its dense inverse has ``D^2`` entries (330 MB at ``p = 8, n = 8``).

Two observations fix both:

* **Faces.** ``f_a`` depends only on ``f`` restricted to the coordinates in ``supp(a)``. So the
  directions are grouped by support ``S``: ``C(n-1, s-1)`` *interior* directions (every
  component of ``S`` nonzero, ``s = |S|``) per face, which is exactly one per monomial of degree
  ``n`` with support ``S`` (``C(p+n-1, n)`` directions in all, as GUW). Faces are solved by
  increasing size: along an interior direction of ``S``, the monomials of smaller support are
  already known and subtracted, and the rest is a small square (``d = n``) or overdetermined
  (``d < n``) system that is the same for every face of a size. Memory and work grow like the
  output times the face sizes, never its square.
* **Angles.** On 2-faces the interior directions are unit vectors ``(cos t, sin t)`` at equally
  spaced angles over the half circle (not the integer points of a segment): ``P_d`` is then a
  trigonometric polynomial, and its coefficients come back almost as well as a Fourier series'.
  The amplification of rounding for ``exp(x1 + x2)``'s top coefficients falls from ``1e6`` to
  ``9e1`` at ``n = 16`` and from ``1e12`` to ``8e3`` at ``n = 30``.

Faces of 3 or more variables use the integer interior points ``j / n`` (``j_i >= 1``,
``|j| = n``): fine at the orders where such faces are affordable, ill-conditioned at high order
(see ``docs/derivation.md``, Section 10, for measured accuracies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import torch
from torch import Tensor

from hope_attr.derivatives.monomials import multi_indices


def _interior_points(size: int, order: int) -> list[tuple[float, ...]]:
    """The ``C(order-1, size-1)`` interior directions of a face of ``size`` variables."""
    if size == 1:
        return [(1.0,)]
    if size == 2:
        # Equal angles k pi / N with N even, so that 0 and pi/2 (the two vertices, e1 and e2,
        # which belong to the 1-faces) are among them and every other angle has both cos and
        # sin clearly nonzero; the interior ones are the first order - 1 of the rest.
        steps = order + 1 if (order + 1) % 2 == 0 else order + 2
        angles = [math.pi * k / steps for k in range(1, steps) if 2 * k != steps]
        return [(math.cos(t), math.sin(t)) for t in angles[: order - 1]]
    return [
        tuple(e / order for e in point)
        for point in multi_indices(size, order)
        if all(e >= 1 for e in point)
    ]


# Up to this many entries (8 MiB in float64), the recovery is one dense (D, M) matrix product;
# the practitioner's case (p = 5, n = 3) has 35 x 35.
_DENSE_ENTRIES = 2**20


@dataclass(frozen=True)
class _FaceStep:
    """How the monomials of one degree with support of one size are recovered, for all faces of
    that size at once."""

    rows: Tensor  # (F, I): the faces' interior directions, indices into the directions
    full: Tensor  # (F, Mf): positions of the monomials whose support is the whole face
    sub: Tensor  # (F, Ms): positions of the face's other monomials (known by then)
    evaluate: Tensor  # (I, Ms): sub-monomials at the interior directions
    solve: Tensor  # (Mf, I): least-squares inverse of the full monomials there


@lru_cache(maxsize=32)
def directions(num_variables: int, order: int, dtype: torch.dtype) -> Tensor:
    """``(C(p+n-1, n), p)``: every face's interior directions, faces by size then
    lexicographically, in ``dtype`` (the recovery is built from these rounded values)."""
    rows = []
    for size in range(1, min(num_variables, order) + 1):
        local = _interior_points(size, order)
        for face in combinations(range(num_variables), size):
            for point in local:
                row = [0.0] * num_variables
                for variable, value in zip(face, point, strict=True):
                    row[variable] = value
                rows.append(row)
    return torch.tensor(rows, dtype=torch.float64).to(dtype)


@lru_cache(maxsize=128)
def _plan(num_variables: int, order: int, degree: int, dtype: torch.dtype) -> list[_FaceStep]:
    """The face steps recovering degree ``degree`` from jets of order ``order``."""
    position = {m: i for i, m in enumerate(multi_indices(num_variables, degree))}
    start, steps = 0, []
    for size in range(1, min(num_variables, order) + 1):
        local = torch.tensor(_interior_points(size, order), dtype=torch.float64)
        local = local.to(dtype).to(torch.float64)  # the directions the jets really take
        faces = list(combinations(range(num_variables), size))
        count = len(local)
        rows = torch.arange(start, start + len(faces) * count).reshape(len(faces), count)
        start += len(faces) * count
        monomials = multi_indices(size, degree)
        full = [m for m in monomials if all(e >= 1 for e in m)]
        if not full:  # size > degree: no monomial of this degree has such a support
            continue
        sub = [m for m in monomials if not all(e >= 1 for e in m)]

        steps.append(
            _FaceStep(
                rows=rows,
                full=_positions(full, faces, position, num_variables),
                sub=_positions(sub, faces, position, num_variables),
                evaluate=_powers(local, sub),
                solve=torch.linalg.pinv(_powers(local, full)),
            )
        )
    return steps


def _positions(
    local: list[tuple[int, ...]],
    faces: list[tuple[int, ...]],
    position: dict[tuple[int, ...], int],
    num_variables: int,
) -> Tensor:
    """``(F, M)``: where each face's local monomials sit among all monomials of the degree."""
    result = []
    for face in faces:
        row = []
        for m in local:
            exponents = [0] * num_variables
            for variable, e in zip(face, m, strict=True):
                exponents[variable] = e
            row.append(position[tuple(exponents)])
        result.append(row)
    return torch.tensor(result, dtype=torch.long).reshape(len(faces), len(local))


def _powers(points: Tensor, monomials: list[tuple[int, ...]]) -> Tensor:
    """``(I, M)``: every monomial at every point (``0 ** 0 = 1``)."""
    if not monomials:
        return points.new_zeros((points.shape[0], 0))
    exponents = torch.tensor(monomials, dtype=points.dtype)
    return (points[:, None, :] ** exponents[None]).prod(-1)


def recover(values: Tensor, num_variables: int, order: int, degree: int) -> Tensor:
    """``(..., D)`` order-``degree`` coefficients along :func:`directions` ->
    ``(..., M_degree)`` normalized coefficients ``f_a``, ordered as ``multi_indices``.

    Example:
        >>> import torch
        >>> z = directions(2, 2, torch.float64)  # e1, e2, then one interior direction
        >>> f = torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)  # 3 x1^2 - x1 x2 + x2^2 / 2
        >>> values = 3 * z[:, 0] ** 2 - z[:, 0] * z[:, 1] + 0.5 * z[:, 1] ** 2
        >>> torch.allclose(recover(values, 2, 2, 2), f)
        True
    """
    if (
        math.comb(num_variables + order - 1, order) * math.comb(num_variables + degree - 1, degree)
        <= _DENSE_ENTRIES
    ):
        return values @ _dense(num_variables, order, degree, values.dtype).to(values)
    return _recover_by_faces(values, num_variables, order, degree)


@lru_cache(maxsize=128)
def _dense(num_variables: int, order: int, degree: int, dtype: torch.dtype) -> Tensor:
    """``(D, M)``: the face steps composed into one matrix (in float64), for small problems
    where one matrix product beats a few gathers and scatters."""
    size = math.comb(num_variables + order - 1, order)
    identity = torch.eye(size, dtype=torch.float64)
    plan = _plan(num_variables, order, degree, dtype)
    return _recover_by_faces(identity, num_variables, order, degree, plan)


def _recover_by_faces(
    values: Tensor,
    num_variables: int,
    order: int,
    degree: int,
    steps: list[_FaceStep] | None = None,
) -> Tensor:
    if steps is None:
        steps = _plan(num_variables, order, degree, values.dtype)
    result = values.new_zeros((*values.shape[:-1], math.comb(num_variables + degree - 1, degree)))
    for step in steps:
        device = values.device
        residual = values[..., step.rows.to(device)]  # (..., F, I)
        if step.sub.shape[1]:
            known = result[..., step.sub.to(device)]  # (..., F, Ms)
            residual = residual - known @ step.evaluate.to(values).T
        result[..., step.full.to(device)] = residual @ step.solve.to(values).T
    return result
