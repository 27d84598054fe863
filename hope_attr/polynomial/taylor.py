"""Taylor polynomials of networks: evaluate, print, re-center, replace the network, bound the error.

``expand(f, x0, n)`` returns ``P(x) = sum_{|a| <= n} c_a (x - x0)^a`` with exact coefficients
``c_a = d^a f(x0) / a!`` (from :func:`hope_attr.mixed_derivatives`'s machinery). Everything else
here is exact polynomial algebra on those coefficients.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hope_attr.derivatives.mixed import normalized_coefficients
from hope_attr.derivatives.monomials import multi_indices
from hope_attr.engine.expansion import Expansion
from hope_attr.polynomial.recentering import (
    MonomialIndex,
    TaylorShift,
    close_downwards,
    count_monomials,
)

_FORMAT = "hope_attr.TaylorPolynomial/1"
# Relative size below which a coefficient is rounding noise of the expansion (float64).
_NOISE = 1e-12
# Highest total degree of a monomial: re-centering needs binomials C(n, k), which stay finite in
# float64 up to C(1000, 500) ~ 2.7e299 (C(1030, 515) overflows); the per-degree loops of
# evaluation stay short, and a hostile file's exponent of 10**7 is refused at once.
_MAX_DEGREE = 1000
# Most monomials in one polynomial (expand, discover, or completing a set to re-center it):
# exponents alone are M x p integers, and the Python list of multi-indices behind `expand` takes
# about a second per million.
_MAX_MONOMIALS = 1_000_000
# Most bytes of the (M, p) exponents plus one output's (points x M) coefficients.
_MAX_TABLE_BYTES = 2 * 2**30
# Most grid points `bounds` expands at.
_MAX_GRID_POINTS = 1_000_000


class TaylorPolynomial:
    """``P(x) = sum_a coefficients[a] * prod_i (x_i - center_i) ** exponents[a, i]``.

    Args:
        center: the expansion point ``(p,)``.
        exponents: ``(M, p)`` integer exponents, degree 0 first.
        coefficients: ``(M, *O)``, one polynomial per output.
        names: variable names (default ``x1..xp``).

    Usually built by :func:`hope_attr.expand`, which fills it with a network's Taylor
    coefficients.

    Example:
        >>> import torch
        >>> from hope_attr import TaylorPolynomial
        >>> # 1 + 2 (x1 - 1) + 3 (x1 - 1) x2, centered at (1, 0)
        >>> poly = TaylorPolynomial(
        ...     torch.tensor([1.0, 0.0]),
        ...     torch.tensor([[0, 0], [1, 0], [1, 1]]),
        ...     torch.tensor([[1.0], [2.0], [3.0]]),
        ... )
        >>> poly(torch.tensor([[2.0, 1.0]]))  # 1 + 2 + 3
        tensor([[6.]])
        >>> poly.order, poly.num_variables
        (2, 2)
    """

    def __init__(
        self,
        center: Tensor,
        exponents: Tensor,
        coefficients: Tensor,
        names: Sequence[str] | None = None,
    ) -> None:
        """Copies the tensors: changing the caller's later cannot change the polynomial.

        Raises:
            TypeError: an argument is not a tensor, or of the wrong dtype.
            ValueError: shapes disagree, an exponent is negative, a monomial's degree exceeds
                1000, a monomial is listed twice, the center is not finite, or the names are not
                ``p`` distinct strings.
        """
        _check_polynomial(center, exponents, coefficients)
        self._set(center.clone(), exponents.to(torch.long, copy=True), coefficients.clone(), names)
        _check_distinct(self.exponents)

    def _set(
        self,
        center: Tensor,
        exponents: Tensor,
        coefficients: Tensor,
        names: Sequence[str] | None,
    ) -> None:
        self.center = center
        self.exponents = exponents
        self.coefficients = coefficients
        self.names = _checked_names(names, center.numel())
        self._source: Callable[..., Tensor] | None = None  # the expanded function, if known
        self._table: _MonomialTable | None = None  # built on first evaluation
        # Built on first re-centering: the pairs of monomials, and the exponents closed downwards.
        self._shift: tuple[TaylorShift, Tensor] | None = None

    @classmethod
    def _unchecked(
        cls,
        center: Tensor,
        exponents: Tensor,
        coefficients: Tensor,
        names: Sequence[str] | None = None,
    ) -> TaylorPolynomial:
        """Built from tensors this module made itself: valid by construction, not shared."""
        polynomial = cls.__new__(cls)
        polynomial._set(center, exponents, coefficients, names)
        return polynomial

    @property
    def order(self) -> int:
        """The highest degree among the monomials."""
        return int(self.exponents.sum(1).max())

    @property
    def num_variables(self) -> int:
        """``p``, the number of input variables."""
        return self.center.numel()

    @property
    def output_shape(self) -> torch.Size:
        """``O``: one polynomial per output entry (``(10,)`` for a 10-class network)."""
        return self.coefficients.shape[1:]

    def __call__(self, x: Tensor) -> Tensor:
        """Evaluate at a batch ``(N, p)``; returns ``(N, *O)``. Vectorized over terms."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.num_variables:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"evaluate the polynomial at a tensor of points (N, {self.num_variables}), got "
                f"{shape}; for one point use x[None]"
            )
        if self._table is None:
            self._table = _MonomialTable(self.exponents)
        return self._table.evaluate(x - self.center, self.coefficients)

    def recenter(self, new_center: Tensor | Sequence[float]) -> TaylorPolynomial:
        """The same polynomial written in powers of ``x - new_center`` (exact algebra).

        ``(y + d)^a = prod_i sum_{b_i <= a_i} C(a_i, b_i) y_i^b_i d_i^(a_i - b_i)`` with
        ``d = new_center - center``, expanded one variable at a time in float64
        (:mod:`hope_attr.polynomial.recentering`): memory grows with the number of monomials ``M``,
        not ``M^2``. A set of monomials that is not closed under lowering an exponent (a Taylor
        polynomial's always is) gains the missing ones, with the coefficients they receive.

        Raises:
            ValueError: ``new_center`` is not ``p`` finite numbers; completing the set of
                monomials would need more than a million; or the shifted coefficients overflow
                float64 (a shift too far for the degree).

        Example:
            >>> import torch
            >>> from hope_attr import TaylorPolynomial
            >>> # x^2 around 0, written around 1: (x - 1)^2 + 2 (x - 1) + 1
            >>> poly = TaylorPolynomial(
            ...     torch.zeros(1, dtype=torch.float64), torch.tensor([[2]]), torch.ones(1, 1)
            ... )
            >>> poly.recenter([1.0]).terms()
            [(2.0, '(x1 - 1)'), (1.0, '(x1 - 1)^2'), (1.0, '1')]
        """
        target = _checked_point(new_center, self.num_variables, "new_center", self.center.dtype)
        target = target.to(self.center.device)
        shift_table, exponents = self._shift_table()
        flat = self.coefficients.reshape(len(self.exponents), -1).double()
        if len(exponents) > len(flat):  # monomials added to close the set start at zero
            flat = torch.cat([flat, flat.new_zeros(len(exponents) - len(flat), flat.shape[1])])
        shift = (target.double() - self.center.double())[None]
        moved = shift_table.apply(flat[None], shift)[0]
        if not bool(torch.isfinite(moved).all()) and bool(torch.isfinite(flat).all()):
            raise ValueError(
                f"re-centering overflowed float64: a shift of up to {shift.abs().max().item():.3g}"
                f" at degree {self.order} makes coefficients beyond 1.8e308; re-center nearer "
                "or lower the order"
            )
        coefficients = moved.to(self.coefficients.dtype).reshape(-1, *self.output_shape)
        result = TaylorPolynomial._unchecked(target, exponents, coefficients, self.names)
        result._source = self._source
        result._shift = (shift_table, exponents)  # the same monomials: reuse the pairs
        if exponents is self.exponents:
            result._table = self._table
        return result

    def _shift_table(self) -> tuple[TaylorShift, Tensor]:
        """The re-centering pairs, and the exponents they act on (closed downwards)."""
        if self._shift is None:
            exponents, index = close_downwards(self.exponents, _MAX_MONOMIALS)
            self._shift = (TaylorShift(index), exponents)
        return self._shift

    def terms(
        self,
        threshold: float = 0.0,
        output: int | tuple[int, ...] = 0,
        around_zero: bool = False,
        digits: int = 6,
    ) -> list[tuple[float, str]]:
        """``(coefficient, monomial)`` pairs with ``|coefficient| > threshold``, largest first.

        Coefficients are rounded to ``digits`` decimals; those below ``1e-12`` of the largest
        are rounding noise of the expansion and always dropped. ``around_zero`` writes the
        polynomial in powers of ``x`` instead of ``x - x0`` (re-centered at 0, one output only).
        """
        polynomial = self._one_output(output, around_zero)
        coefficients = polynomial.coefficients
        cutoff = max(threshold, _NOISE * coefficients.abs().max().item())
        pairs = [
            (round(c, digits), polynomial._monomial_text(exponent, around_zero))
            for c, exponent in zip(
                coefficients.tolist(), polynomial.exponents.tolist(), strict=True
            )
            if abs(c) > cutoff
        ]
        return sorted(pairs, key=lambda pair: -abs(pair[0]))

    def to_sympy(
        self,
        output: int | tuple[int, ...] = 0,
        around_zero: bool = False,
        threshold: float = 0.0,
        digits: int | None = None,
        readable: bool = False,
    ) -> Any:
        """An explicit ``sympy`` expression in the variable names (``x1..xp`` by default).

        By default a plain expression: ``subs`` then ``float`` evaluate it, ``sympy.expand``
        multiplies it out. ``readable=True`` keeps each ``(x_i - c_i)`` as one unevaluated
        factor for printing (sympy would otherwise distribute a lone coefficient over it);
        ``.doit()`` turns that form into the plain one. ``around_zero`` writes the polynomial
        in powers of ``x`` (the paper's ``y = 0.50 x2 + 0.51 x1^2``) instead of ``x - x0``.

        Example:
            >>> import sympy, torch, hope_attr
            >>> f = lambda x: x[:, :1] ** 2
            >>> expr = hope_attr.expand(f, torch.ones(1, dtype=torch.float64), 2).to_sympy()
            >>> float(expr.subs(sympy.Symbol("x1"), 3.0))
            9.0
        """
        import sympy

        symbols = [sympy.Symbol(name) for name in self.names]  # "x y" stays one name
        polynomial = self._one_output(output, around_zero)
        coefficients = polynomial.coefficients.tolist()
        centers = polynomial.center.tolist()
        cutoff = max(threshold, _NOISE * max(map(abs, coefficients), default=0.0))
        expression = sympy.Integer(0)
        for coefficient, exponent in zip(coefficients, polynomial.exponents.tolist(), strict=True):
            if abs(coefficient) <= cutoff:
                continue
            term = sympy.Float(coefficient, digits) if digits else sympy.Float(coefficient)
            for symbol, center, power in zip(symbols, centers, exponent, strict=True):
                if power:
                    base = symbol - sympy.Float(center) if center else symbol
                    if readable and center:
                        base = sympy.UnevaluatedExpr(base)
                    term *= base**power
            expression += term
        return expression

    def to_latex(self, readable: bool = True, **kwargs: Any) -> str:
        """LaTeX of :meth:`to_sympy` (same arguments; the readable form by default)."""
        import sympy

        return sympy.latex(self.to_sympy(readable=readable, **kwargs))

    def to_module(self) -> nn.Module:
        """A small ``nn.Module`` computing the polynomial, for fast inference."""
        return PolynomialModule(self.center, self.exponents, self.coefficients)

    def save(self, path: str | Path) -> None:
        """Write JSON (no pickle: loading runs no code). float64 values round-trip exactly.

        Raises:
            ValueError: a coefficient is NaN or infinite (JSON has no such numbers).
        """
        payload = {
            "format": _FORMAT,
            "names": self.names,
            "center": self.center.double().tolist(),
            "exponents": self.exponents.tolist(),
            "output_shape": list(self.output_shape),
            "coefficients": self.coefficients.double().reshape(len(self.exponents), -1).tolist(),
        }
        if not bool(torch.isfinite(self.coefficients).all()):
            raise ValueError("cannot save a polynomial with NaN or infinite coefficients")
        Path(path).write_text(json.dumps(payload, allow_nan=False))

    @classmethod
    def load(cls, path: str | Path) -> TaylorPolynomial:
        """Read a polynomial written by :meth:`save` (plain JSON: no code runs).

        Everything is checked before any tensor is built: a malformed or hostile file raises a
        ``ValueError`` that says what is wrong, in well under a second.

        Raises:
            ValueError: the file is not a valid saved TaylorPolynomial (the message says why).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
            payload = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            # RecursionError: thousands of nested brackets.
            reason = "nested too deeply" if isinstance(error, RecursionError) else error
            raise ValueError(
                f"{path} is not a saved TaylorPolynomial: not JSON ({reason})"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved TaylorPolynomial ({_FORMAT})")
        try:
            return cls(*_parse_payload(payload))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a valid saved TaylorPolynomial: {error}") from None

    def bounds(
        self,
        x: Tensor,
        radius: float | Sequence[float],
        forward_func: Callable[..., Tensor] | None = None,
        points_per_axis: int = 21,
    ) -> tuple[Tensor, Tensor]:
        """The paper's Lagrange bounds (Eq. 63-65) on the network at ``x`` (inside the box).

        ``f(x) = T_{n-1}(x) + sum_{|a| = n} d^a f(xi) / a! (x - x0)^a`` for some ``xi`` on the
        segment, so ``f`` lies between the sums taken with the smallest and the largest value of
        each ``n``-th partial over the box ``x0 +- radius``. Those ranges are estimated on a grid
        of ``points_per_axis`` points per axis (sampling, not interval arithmetic: a finer grid
        is safer), plus the center.

        Returns:
            ``(lower, upper)``, each ``(N, *O)``.
        """
        lowest, highest = self._top_order_range(radius, forward_func, points_per_axis)
        top = self.exponents.sum(1) == self.order
        lower_order = TaylorPolynomial(
            self.center, self.exponents[~top], self.coefficients[~top], self.names
        )
        base = lower_order(x)
        monomials = _monomials(x - self.center, self.exponents[top])  # (N, M_n)
        a = monomials.reshape(*monomials.shape, *([1] * len(self.output_shape)))
        at_lowest, at_highest = a * lowest[None], a * highest[None]
        low_terms = torch.minimum(at_lowest, at_highest)
        high_terms = torch.maximum(at_lowest, at_highest)
        return base + low_terms.sum(1), base + high_terms.sum(1)

    def remainder_bound(
        self,
        x: Tensor,
        radius: float | Sequence[float],
        forward_func: Callable[..., Tensor] | None = None,
        points_per_axis: int = 21,
    ) -> Tensor:
        """An upper bound on ``|P(x) - f(x)|`` (the paper's Eq. 66), ``(N, *O)``.

        ``f - P = sum_{|a| = n} (d^a f(xi) - d^a f(x0)) / a! (x - x0)^a``, bounded by the range
        of each ``n``-th partial over the box (estimated as in :meth:`bounds`). Summed directly,
        not as ``upper - lower``, which would cancel to zero near ``x0``.
        """
        lowest, highest = self._top_order_range(radius, forward_func, points_per_axis)
        top = self.exponents.sum(1) == self.order
        monomials = _monomials(x - self.center, self.exponents[top]).abs()
        a = monomials.reshape(*monomials.shape, *([1] * len(self.output_shape)))
        return (a * (highest - lowest)[None]).sum(1)

    def convergence_ratios(self) -> Tensor:
        """``||d^k f|| / ||d f||`` for ``k = 1..n`` (the paper's Table 2 diagnostic).

        ``||d^k f||`` is the Frobenius norm of the symmetric ``k``-th derivative tensor (each
        monomial's derivative counted with its multiplicity). Ratios that grow with ``k`` mean
        the series converges slowly or not at all at this scale.
        """
        degree = self.exponents.sum(1)
        exponents = self.exponents.double()  # float32 factorials overflow past 34!
        factorials = torch.exp(torch.lgamma(exponents + 1.0).sum(1))
        multiplicity = torch.exp(torch.lgamma(degree.double() + 1.0)) / factorials
        flat = self.coefficients.reshape(len(self.exponents), -1).double()
        derivative = flat * factorials.double()[:, None]
        norms = torch.stack(
            [
                (derivative[degree == k] ** 2 * multiplicity.double()[degree == k, None])
                .sum()
                .sqrt()
                for k in range(1, self.order + 1)
            ]
        )
        return norms / norms[0]

    # ------------------------------------------------------------------ helpers
    def _output_coefficients(self, output: int | tuple[int, ...]) -> Tensor:
        """``(M,)``: one output's coefficients (a flat index, or one index per output axis)."""
        shape = tuple(self.output_shape)
        index = output if isinstance(output, tuple) else (output,)
        flat = len(index) == 1 and len(shape) <= 1
        bounds = (max(math.prod(shape), 1),) if flat else shape
        valid = len(index) == len(bounds) and all(
            isinstance(i, int) and not isinstance(i, bool) and -n <= i < n
            for i, n in zip(index, bounds, strict=True)
        )
        if not valid:
            raise ValueError(
                f"output must pick one output: an int (or a tuple of ints, one per axis) within "
                f"the output shape {shape}, got {output!r}"
            )
        if flat:
            return self.coefficients.reshape(len(self.exponents), -1)[:, index[0]]
        return self.coefficients[(slice(None), *index)]

    def _one_output(self, output: int | tuple[int, ...], around_zero: bool) -> TaylorPolynomial:
        """One output's polynomial ``(M,)``, re-centered at 0 if asked (a single output is
        cheaper to re-center than all of them)."""
        single = TaylorPolynomial._unchecked(
            self.center, self.exponents, self._output_coefficients(output), self.names
        )
        single._shift, single._table = self._shift, self._table
        if not around_zero:
            return single
        moved = single.recenter(torch.zeros_like(self.center))
        self._shift = single._shift  # the pairs only depend on the exponents: keep them
        return moved

    def _monomial_text(self, exponent: list[int], around_zero: bool) -> str:
        parts = []
        for name, center, power in zip(self.names, self.center.tolist(), exponent, strict=True):
            if not power:
                continue
            sign = "-" if center > 0 else "+"
            base = name if around_zero or center == 0 else f"({name} {sign} {abs(center):.4g})"
            parts.append(base if power == 1 else f"{base}^{power}")
        return " ".join(parts) if parts else "1"

    def _top_order_range(
        self,
        radius: float | Sequence[float],
        forward_func: Callable[..., Tensor] | None,
        points_per_axis: int,
    ) -> tuple[Tensor, Tensor]:
        forward_func = forward_func or self._source
        if forward_func is None:
            raise ValueError("bounds need the expanded function: pass forward_func=")
        if not isinstance(points_per_axis, int) or points_per_axis < 1:
            raise ValueError(f"points_per_axis must be a positive int, got {points_per_axis!r}")
        if points_per_axis**self.num_variables > _MAX_GRID_POINTS:
            raise ValueError(
                f"the grid of points_per_axis ** p = {points_per_axis}^{self.num_variables} "
                f"points is above the limit of {_MAX_GRID_POINTS:,}; use fewer points_per_axis"
            )
        radius_tensor = torch.as_tensor(radius, dtype=self.center.dtype).expand_as(self.center)
        axes = [
            torch.linspace(-1.0, 1.0, points_per_axis, dtype=self.center.dtype) * r
            for r in radius_tensor
        ]
        grid = torch.cartesian_prod(*axes).reshape(-1, self.num_variables) + self.center
        grid = torch.cat([self.center[None], grid])
        top = self.exponents.sum(1) == self.order
        coefficients = normalized_coefficients(Expansion(forward_func, grid, self.order))[-1]
        # (G, *O, M_n) normalized coefficients at every grid point, ordered like multi_indices.
        order_in_poly = _positions(self.exponents[top], self.num_variables, self.order)
        values = coefficients[..., order_in_poly].movedim(-1, 1)  # (G, M_n, *O)
        return values.amin(0), values.amax(0)


class PolynomialModule(nn.Module):
    """``P(x)`` as a module: buffers only; one product per monomial, then one matmul."""

    def __init__(self, center: Tensor, exponents: Tensor, coefficients: Tensor) -> None:
        super().__init__()
        self.register_buffer("center", center.clone())
        self.register_buffer("exponents", exponents.clone())
        self.register_buffer("coefficients", coefficients.clone())
        self.monomials = _MonomialTable(exponents)

    def forward(self, x: Tensor) -> Tensor:
        return self.monomials.evaluate(x - self.center, self.coefficients)


class _MonomialTable(nn.Module):
    """``(N, p) -> (N, M)``: every monomial ``prod_i dx_i ** exponents[m, i]``.

    When the set of exponents is closed under lowering one exponent (every Taylor polynomial's
    is), each monomial of degree ``d`` is a monomial of degree ``d - 1`` times one variable: one
    multiplication per monomial, degree by degree, instead of ``p`` powers per monomial (5x
    faster for ``p = 5``, ``n = 3`` at 4096 points). Other sets fall back to powers. A complete
    univariate polynomial is evaluated by Horner's rule instead, one fused multiply-add per
    degree: a handful of kernel launches, which is what a small surrogate's speed is made of.
    """

    def __init__(self, exponents: Tensor) -> None:
        super().__init__()
        exponents = exponents.to(torch.long)
        self.register_buffer("exponents", exponents.clone(), persistent=False)
        degree = exponents.sum(1)
        order = torch.argsort(degree, stable=True)  # degree by degree
        position = {tuple(e): i for i, e in enumerate(exponents[order].tolist())}
        self.levels: list[tuple[str, str]] = []
        self.closed = bool((degree[order][:1] == 0).all()) and len(position) == len(exponents)
        for level in range(1, int(degree.max()) + 1 if len(degree) else 0):
            parents, variables = [], []
            for exponent in exponents[order][degree[order] == level].tolist():
                variable = max(i for i, power in enumerate(exponent) if power)
                exponent[variable] -= 1
                parent = position.get(tuple(exponent))
                if parent is None:
                    self.closed = False
                    break
                parents.append(parent)
                variables.append(variable)
            if not self.closed:
                break
            names = (f"parents{level}", f"variables{level}")
            self.register_buffer(names[0], torch.tensor(parents), persistent=False)
            self.register_buffer(names[1], torch.tensor(variables), persistent=False)
            self.levels.append(names)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("inverse", torch.argsort(order), persistent=False)
        self.sorted = bool((order == torch.arange(len(order))).all())
        self.horner = self.closed and exponents.shape[1] == 1

    def forward(self, dx: Tensor) -> Tensor:
        if not self.closed:
            return _monomials(dx, self.exponents)
        # Built monomial-major, (M, N): gathering whole rows is several times faster than
        # gathering columns of an (N, M) table.
        columns = dx.t().contiguous()  # (p, N)
        table = torch.ones(1, dx.shape[0], dtype=dx.dtype, device=dx.device)
        for parents, variables in self.levels:
            fresh = table[getattr(self, parents)] * columns[getattr(self, variables)]
            table = torch.cat([table, fresh], dim=0)
        return (table if self.sorted else table[self.inverse]).t()

    def evaluate(self, dx: Tensor, coefficients: Tensor) -> Tensor:
        """``sum_m coefficients[m] * monomial_m(dx)``: ``(N, p), (M, *O) -> (N, *O)``."""
        if not self.horner:
            return _combine(self(dx), coefficients)
        flat = coefficients.reshape(len(coefficients), -1).to(dx.dtype)
        flat = flat if self.sorted else flat[self.order]  # by degree
        value = flat[-1].expand(dx.shape[0], -1)
        for degree in range(len(flat) - 2, -1, -1):
            value = torch.addcmul(flat[degree], value, dx)  # coefficient + value * dx
        return value.reshape(dx.shape[0], *coefficients.shape[1:])


def _combine(monomials: Tensor, coefficients: Tensor) -> Tensor:
    """``(N, M) x (M, *O) -> (N, *O)``."""
    flat = coefficients.reshape(len(coefficients), -1).to(monomials.dtype)
    return (monomials @ flat).reshape(len(monomials), *coefficients.shape[1:])


def expand(
    forward_func: Callable[..., Tensor],
    x0: Tensor | Sequence[float],
    order: int,
    names: Sequence[str] | None = None,
    internal_batch_size: int | None = None,
) -> TaylorPolynomial:
    """Expand ``forward_func`` (``(B, p) -> (B, *O)``) into its order-``n`` Taylor polynomial.

    Raises:
        TypeError: ``order`` is not an int, or ``x0`` not numbers.
        ValueError: ``x0`` is not one finite point ``(p,)``; ``order`` is not in ``1..1000``;
            the polynomial would have more than a million monomials (or 2 GiB of tables);
            ``names`` are not ``p`` distinct strings.

    Example:
        >>> import torch, hope_attr
        >>> f = lambda x: torch.exp(x[:, :1]) * x[:, 1:]
        >>> poly = hope_attr.expand(f, torch.zeros(2, dtype=torch.float64), order=3)
        >>> poly.terms()  # exp(x1) x2 = x2 + x1 x2 + x1^2 x2 / 2 + ...
        [(1.0, 'x2'), (1.0, 'x1 x2'), (0.5, 'x1^2 x2')]
    """
    _check_order(order)
    x0 = _checked_point(x0, None, "x0")  # a copy: the caller's tensor stays theirs
    names = _checked_names(names, x0.numel())
    _check_table_size("expand", x0.numel(), order, points=1)
    expansion = Expansion(forward_func, x0[None], order, internal_batch_size=internal_batch_size)
    exponents = [(0,) * x0.numel()]
    blocks = [expansion.output[0].unsqueeze(0)]  # (1, *O): the value
    for k, coefficients in enumerate(normalized_coefficients(expansion), start=1):
        exponents.extend(multi_indices(x0.numel(), k))
        blocks.append(coefficients[0].movedim(-1, 0))  # (M_k, *O)
    polynomial = TaylorPolynomial._unchecked(
        x0, torch.tensor(exponents), torch.cat(blocks).detach(), names
    )
    polynomial._source = forward_func
    return polynomial


def _check_order(order: int) -> None:
    if not isinstance(order, int) or isinstance(order, bool):
        raise TypeError(f"order must be an int, got {type(order).__name__}")
    if not 1 <= order <= _MAX_DEGREE:
        raise ValueError(
            f"order must be from 1 to {_MAX_DEGREE} (binomials and factorials of higher degrees "
            f"overflow float64), got {order}; use an order in that range"
        )


def _check_table_size(what: str, num_variables: int, order: int, points: int) -> None:
    """Refuse, before any work, polynomials whose tables alone would not fit."""
    monomials = count_monomials(num_variables, order, _MAX_MONOMIALS)
    size = monomials * (num_variables + points) * 8
    if monomials > _MAX_MONOMIALS or size > _MAX_TABLE_BYTES:
        counted = (
            f"more than {_MAX_MONOMIALS:,}" if monomials > _MAX_MONOMIALS else f"{monomials:,}"
        )
        raise ValueError(
            f"{what}: order {order} in {num_variables} variables has {counted} monomials "
            f"({'at least ' if monomials > _MAX_MONOMIALS else ''}{size / 2**30:.3g} GiB of "
            f"exponents and coefficients for {points} point(s) and one output), above the limit "
            f"of {_MAX_MONOMIALS:,} monomials and {_MAX_TABLE_BYTES / 2**30:.0f} GiB; use a lower "
            "order or fewer variables (a function of the few inputs of interest)"
        )


def _check_polynomial(center: Tensor, exponents: Tensor, coefficients: Tensor) -> None:
    for name, value in (
        ("center", center),
        ("exponents", exponents),
        ("coefficients", coefficients),
    ):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not center.is_floating_point() or center.dim() != 1:
        raise TypeError(
            f"center must be a floating-point tensor (p,), got {center.dtype} {tuple(center.shape)}"
        )
    if not bool(torch.isfinite(center).all()):
        raise ValueError(f"center must be finite, got {center.tolist()}")
    if exponents.is_floating_point() or exponents.is_complex() or exponents.dtype == torch.bool:
        raise TypeError(f"exponents must be an integer tensor, got {exponents.dtype}")
    if exponents.dim() != 2 or exponents.shape[1] != center.numel() or len(exponents) == 0:
        raise ValueError(
            f"exponents must be (M, p) = (M, {center.numel()}) with M >= 1 monomials, got "
            f"{tuple(exponents.shape)}"
        )
    if bool((exponents < 0).any()):
        raise ValueError("exponents must be non-negative")
    # The maximum first: the row sums of huge exponents could overflow.
    if int(exponents.max()) > _MAX_DEGREE or int(exponents.sum(1).max()) > _MAX_DEGREE:
        raise ValueError(
            f"a monomial's degree is above the limit of {_MAX_DEGREE} (binomials and factorials "
            "of higher degrees overflow float64)"
        )
    if not coefficients.is_floating_point() or coefficients.dim() < 1:
        raise TypeError(
            f"coefficients must be a floating-point tensor (M, *O), got {coefficients.dtype} "
            f"{tuple(coefficients.shape)}"
        )
    if coefficients.shape[0] != len(exponents):
        raise ValueError(
            f"coefficients need one row per monomial: {len(exponents)} exponents, "
            f"{coefficients.shape[0]} rows of coefficients"
        )


def _check_distinct(exponents: Tensor) -> None:
    MonomialIndex(exponents)  # raises on a repeated monomial


def _checked_names(names: Sequence[str] | None, num_variables: int) -> list[str]:
    if names is None:
        return [f"x{i + 1}" for i in range(num_variables)]
    if isinstance(names, str) or not all(isinstance(name, str) and name for name in names):
        raise TypeError(f"names must be a list of non-empty strings, got {names!r}")
    names = list(names)
    if len(names) != num_variables or len(set(names)) != len(names):
        raise ValueError(
            f"names must be {num_variables} distinct strings, one per variable, got {names!r}"
        )
    return names


def _checked_point(
    value: Tensor | Sequence[float],
    num_variables: int | None,
    what: str,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """A finite point ``(p,)`` as a new floating-point tensor (never the caller's)."""
    if isinstance(value, Tensor):
        point = value.detach().clone()
    else:
        try:
            point = torch.tensor(value)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise TypeError(
                f"{what} must be a tensor or a sequence of numbers, got {reprlib.repr(value)}"
            ) from None
    if point.is_complex() or point.dtype == torch.bool:
        raise TypeError(f"{what} must hold real numbers, got {point.dtype}")
    if dtype is not None:
        point = point.to(dtype)
    elif not point.is_floating_point():
        point = point.to(torch.get_default_dtype())
    wanted = "p" if num_variables is None else str(num_variables)
    if point.dim() != 1 or (num_variables is not None and point.numel() != num_variables):
        raise ValueError(f"{what} must be one point of shape ({wanted},), got {tuple(point.shape)}")
    if not bool(torch.isfinite(point).all()):
        raise ValueError(f"{what} must be finite, got {point.tolist()}")
    return point


_PAYLOAD_KEYS = ("names", "center", "exponents", "output_shape", "coefficients")


def _parse_payload(payload: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Tensors from a saved polynomial's JSON, each field checked in plain Python first (a type
    error deep in a nested list would otherwise surface as torch's own message, or not at all:
    ``torch.tensor`` truncates the exponent 1.5 to 1)."""
    missing = [key for key in _PAYLOAD_KEYS if key not in payload]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    names, center, exponents, shape, coefficients = (payload[key] for key in _PAYLOAD_KEYS)
    if not isinstance(names, list):
        raise ValueError(f"names must be a list of strings, got {reprlib.repr(names)}")
    center = _finite_numbers(center, "center")
    if not isinstance(exponents, list) or not exponents:
        raise ValueError(
            f"exponents must be a non-empty list of rows, got {reprlib.repr(exponents)}"
        )
    for row in exponents:
        if not isinstance(row, list) or len(row) != len(center):
            raise ValueError(
                f"each row of exponents must list {len(center)} integers (one per variable, as "
                f"in center), got {reprlib.repr(row)}"
            )
        for value in row:
            if type(value) is not int or not 0 <= value <= _MAX_DEGREE:
                raise ValueError(
                    f"exponents must be integers from 0 to {_MAX_DEGREE}, got {reprlib.repr(value)}"
                )
    if not isinstance(shape, list) or not all(type(n) is int and n >= 1 for n in shape):
        raise ValueError(
            f"output_shape must be a list of positive integers, got {reprlib.repr(shape)}"
        )
    width = math.prod(shape)
    if not isinstance(coefficients, list) or len(coefficients) != len(exponents):
        raise ValueError(
            f"coefficients must be a list of one row per monomial ({len(exponents)} rows), got "
            f"{reprlib.repr(coefficients)}"
        )
    rows = [_finite_numbers(row, "each row of coefficients", width) for row in coefficients]
    return (
        torch.tensor(center, dtype=torch.float64),
        torch.tensor(exponents, dtype=torch.long),
        torch.tensor(rows, dtype=torch.float64).reshape(len(exponents), *shape),
        names,
    )


def _finite_numbers(values: Any, what: str, length: int | None = None) -> list[float]:
    if not isinstance(values, list) or (length is not None and len(values) != length):
        size = "" if length is None else f" of length {length}"
        raise ValueError(f"{what} must be a list{size} of numbers, got {reprlib.repr(values)}")
    for value in values:
        if type(value) not in (int, float):
            raise ValueError(f"{what} must hold numbers, got {reprlib.repr(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float64
            finite = False
        if not finite:
            raise ValueError(f"{what} must hold finite numbers, got {reprlib.repr(value)}")
    return values


def _monomials(dx: Tensor, exponents: Tensor) -> Tensor:
    """``(N, M)``: ``prod_i dx_i ** exponents[m, i]``; ``0 ** 0 = 1``."""
    return (dx[:, None, :] ** exponents[None].to(dx.dtype)).prod(-1)


def _positions(exponents: Tensor, num_variables: int, degree: int) -> Tensor:
    lookup = {m: i for i, m in enumerate(multi_indices(num_variables, degree))}
    return torch.tensor([lookup[tuple(e)] for e in exponents.tolist()], dtype=torch.long)


class Discovery:
    """Polynomials expanded around many points, all re-centered at one point (the paper's
    ``global.py``): terms that are real agree across points, artefacts of one point do not.

    Attributes:
        mean: the average re-centered :class:`TaylorPolynomial`.
        spread: standard deviation of each coefficient across points, shaped like
            ``mean.coefficients``.
        polynomials: the individual re-centered polynomials.

    Raises:
        ValueError: no polynomials, or polynomials with different centers or monomials.
    """

    def __init__(self, polynomials: list[TaylorPolynomial]) -> None:
        if not polynomials:
            raise ValueError("Discovery needs at least one polynomial")
        first = polynomials[0]
        for other in polynomials[1:]:
            same = other.exponents.shape == first.exponents.shape and torch.equal(
                other.exponents, first.exponents
            )
            if not same or not torch.equal(other.center, first.center):
                raise ValueError(
                    "Discovery aggregates polynomials with the same center and monomials; "
                    "re-center them at one point first (TaylorPolynomial.recenter)"
                )
        stacked = torch.stack([p.coefficients for p in polynomials])
        self.polynomials = polynomials
        self.mean = TaylorPolynomial._unchecked(
            first.center, first.exponents, stacked.mean(0), first.names
        )
        self.mean._shift = first._shift
        self.spread = stacked.std(0) if len(polynomials) > 1 else torch.zeros_like(stacked[0])

    def terms(
        self,
        threshold: float = 0.0,
        output: int | tuple[int, ...] = 0,
        around_zero: bool = False,
        digits: int = 4,
    ) -> list[tuple[float, float, str]]:
        """``(mean, spread, monomial)`` of the terms with ``|mean| > threshold``, largest first.

        ``around_zero``: each polynomial is re-centered at 0 before the mean and the spread are
        taken (all at once, memory growing with the number of monomials).
        """
        mean = self.mean
        coefficients = mean._output_coefficients(output)
        spread = TaylorPolynomial._unchecked(
            mean.center, mean.exponents, self.spread
        )._output_coefficients(output)
        exponents = mean.exponents
        if around_zero:
            stacked = torch.stack([p._output_coefficients(output) for p in self.polynomials])
            exponents, moved = _recenter_many(
                mean, stacked[..., None], mean.center[None], torch.zeros_like(mean.center)
            )
            moved = moved[..., 0].to(stacked.dtype)
            coefficients = moved.mean(0)
            spread = moved.std(0) if len(moved) > 1 else torch.zeros_like(moved[0])
        cutoff = max(threshold, _NOISE * coefficients.abs().max().item())
        rows = [
            (round(c, digits), round(s, digits), mean._monomial_text(e, around_zero))
            for c, s, e in zip(
                coefficients.tolist(), spread.tolist(), exponents.tolist(), strict=True
            )
            if abs(c) > cutoff
        ]
        return sorted(rows, key=lambda row: -abs(row[0]))


def _recenter_many(
    template: TaylorPolynomial, coefficients: Tensor, centers: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """Polynomials with ``template``'s monomials, coefficients ``(N, M, F)`` around ``centers``
    ``(N, p)`` (or one center ``(1, p)``), all re-centered at ``target``: the exponents and
    ``(N, M', F)`` float64 coefficients. One batched shift, with ``template``'s pairs."""
    shift_table, exponents = template._shift_table()
    flat = coefficients.double()
    if len(exponents) > flat.shape[1]:  # monomials added to close the set start at zero
        padding = flat.new_zeros(len(flat), len(exponents) - flat.shape[1], flat.shape[2])
        flat = torch.cat([flat, padding], dim=1)
    shift = (target.double() - centers.double()).expand(len(flat), -1)
    moved = shift_table.apply(flat, shift)
    if not bool(torch.isfinite(moved).all()) and bool(torch.isfinite(flat).all()):
        raise ValueError(
            f"re-centering overflowed float64: a shift of up to {shift.abs().max().item():.3g} "
            f"at degree {template.order} makes coefficients beyond 1.8e308; re-center nearer "
            "or lower the order"
        )
    return exponents, moved


def discover(
    forward_func: Callable[..., Tensor],
    x0: Tensor | Sequence[float],
    radius: float,
    num_points: int = 30,
    order: int = 4,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> Discovery:
    """Function discovery: expand at ``num_points`` uniform points of the box ``x0 +- radius``
    (and at ``x0``), re-center every polynomial at ``x0``, and aggregate.

    The re-centering is one batched exact shift whose memory grows with the number of points
    times the number of monomials (:mod:`hope_attr.polynomial.recentering`).

    Raises:
        TypeError: ``order``, ``num_points`` or ``seed`` is not an int.
        ValueError: ``x0`` is not one finite point; ``radius`` is negative or not finite;
            ``order`` is not in ``1..1000``; the points' polynomials would exceed a million
            monomials or 2 GiB of tables.

    Example:
        >>> import torch, hope_attr
        >>> f = lambda x: 0.5 * x[:, :1] ** 2 + 0.5 * x[:, 1:]
        >>> found = hope_attr.discover(f, torch.zeros(2, dtype=torch.float64), 1.0, order=3)
        >>> [(mean, term) for mean, spread, term in found.terms(threshold=0.01)]
        [(0.5, 'x2'), (0.5, 'x1^2')]
    """
    _check_order(order)
    for name, value in (("num_points", num_points), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if num_points < 0:
        raise ValueError(f"num_points must be >= 0, got {num_points}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)):
        raise TypeError(f"radius must be a number, got {type(radius).__name__}")
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    x0 = _checked_point(x0, None, "x0")
    names = _checked_names(names, x0.numel())
    _check_table_size("discover", x0.numel(), order, points=num_points + 1)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.rand(num_points, x0.numel(), generator=generator, dtype=x0.dtype) * 2 - 1
    points = torch.cat([x0[None], x0 + radius * offsets.to(x0.device)])
    # One batched expansion at every point, then one exact re-centering of all of them at x0.
    expansion = Expansion(forward_func, points, order)
    exponents = [(0,) * x0.numel()]
    blocks = [expansion.output.unsqueeze(1)]  # (N, 1, *O)
    for k, coefficients in enumerate(normalized_coefficients(expansion), start=1):
        exponents.extend(multi_indices(x0.numel(), k))
        blocks.append(coefficients.movedim(-1, 1))  # (N, M_k, *O)
    coefficients = torch.cat(blocks, dim=1).detach()
    output_shape = coefficients.shape[2:]
    template = TaylorPolynomial._unchecked(x0, torch.tensor(exponents), coefficients[0], names)
    closed, moved = _recenter_many(
        template, coefficients.reshape(*coefficients.shape[:2], -1), points, x0
    )
    moved = moved.to(coefficients.dtype).reshape(len(points), -1, *output_shape)
    polynomials = []
    for c in moved:
        polynomial = TaylorPolynomial._unchecked(x0.clone(), closed, c, names)
        polynomial._shift = template._shift  # same monomials: the same pairs
        polynomial._source = forward_func
        polynomials.append(polynomial)
    return Discovery(polynomials)


__all__ = ["Discovery", "PolynomialModule", "TaylorPolynomial", "discover", "expand"]
