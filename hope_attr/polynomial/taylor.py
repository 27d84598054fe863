"""The value type: ``TaylorPolynomial``, exact coefficients around a center, and its evaluation.

``expand(f, x0, n)`` returns ``P(x) = sum_{|a| <= n} c_a (x - x0)^a`` with exact coefficients
``c_a = d^a f(x0) / a!`` (from :func:`hope_attr.mixed_derivatives`'s machinery). Everything else
is exact polynomial algebra on those coefficients, one idea per module; the methods here are thin
and call them: evaluation (:mod:`~hope_attr.polynomial.module`), re-centering
(:mod:`~hope_attr.polynomial.recentering`), formulas (:mod:`~hope_attr.polynomial.symbolic`), the
file format (:mod:`~hope_attr.polynomial.serialization`) and the remainder bounds
(:mod:`~hope_attr.polynomial.bounds`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hope_attr.polynomial import bounds as _bounds
from hope_attr.polynomial import serialization as _serialization
from hope_attr.polynomial import symbolic as _symbolic
from hope_attr.polynomial.module import MonomialTable, PolynomialModule
from hope_attr.polynomial.recentering import TaylorShift, close_downwards, shift_coefficients
from hope_attr.polynomial.validation import (
    MAX_MONOMIALS,
    check_distinct,
    check_polynomial,
    checked_names,
    checked_point,
)


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
            ValueError: shapes disagree, there is no variable (``p = 0``), an exponent is
                negative, a monomial's degree exceeds 1000, a monomial is listed twice, the
                center is not finite, or the names are not ``p`` distinct strings.
        """
        check_polynomial(center, exponents, coefficients)
        self._set(center.clone(), exponents.to(torch.long, copy=True), coefficients.clone(), names)
        check_distinct(self.exponents)

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
        self.names = checked_names(names, center.numel())
        self._source: Callable[..., Tensor] | None = None  # the expanded function, if known
        self._table: MonomialTable | None = None  # built on first evaluation
        # Built on first re-centering: the pairs of monomials, and the exponents closed downwards.
        self._shift: tuple[TaylorShift, Tensor] | None = None

    @classmethod
    def _unchecked(
        cls,
        center: Tensor,
        exponents: Tensor,
        coefficients: Tensor,
        names: Sequence[str] | None = None,
        source: Callable[..., Tensor] | None = None,
        shift: tuple[TaylorShift, Tensor] | None = None,
    ) -> TaylorPolynomial:
        """Built from tensors this package made itself: valid by construction, not shared.

        ``source`` is the expanded function (for :meth:`bounds`); ``shift`` the re-centering
        pairs of a polynomial with the same exponents, which need not be built again.
        """
        polynomial = cls.__new__(cls)
        polynomial._set(center, exponents, coefficients, names)
        polynomial._source = source
        polynomial._shift = shift
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
        self._check_points(x)
        if self._table is None:
            self._table = MonomialTable(self.exponents)
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
        target = checked_point(new_center, self.num_variables, "new_center", self.center.dtype)
        target = target.to(self.center.device)
        shift_table, exponents = self._shift_table()
        flat = self.coefficients.reshape(len(self.exponents), -1)
        offset = (target.double() - self.center.double())[None]
        moved = shift_coefficients(shift_table, flat[None], offset, self.order)[0]
        coefficients = moved.to(self.coefficients.dtype).reshape(-1, *self.output_shape)
        result = TaylorPolynomial._unchecked(
            target, exponents, coefficients, self.names, self._source, (shift_table, exponents)
        )
        if exponents is self.exponents:  # the same monomials: the same table
            result._table = self._table
        return result

    def _shift_table(self) -> tuple[TaylorShift, Tensor]:
        """The re-centering pairs, and the exponents they act on (closed downwards)."""
        if self._shift is None:
            exponents, index = close_downwards(self.exponents, MAX_MONOMIALS)
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

        Example:
            >>> import torch
            >>> from hope_attr import TaylorPolynomial
            >>> poly = TaylorPolynomial(
            ...     torch.tensor([1.0]), torch.tensor([[0], [1]]), torch.tensor([0.5, -2.0])
            ... )
            >>> poly.terms()
            [(-2.0, '(x1 - 1)'), (0.5, '1')]
        """
        one = self._one_output(output, around_zero)
        return _symbolic.term_rows(
            one.names, one.center, one.exponents, [one.coefficients], threshold, digits, around_zero
        )

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
        one = self._one_output(output, around_zero)
        return _symbolic.sympy_expression(
            self.names, one.center, one.exponents, one.coefficients, threshold, digits, readable
        )

    def to_latex(self, readable: bool = True, **kwargs: Any) -> str:
        """LaTeX of :meth:`to_sympy` (same arguments; the readable form by default)."""
        return _symbolic.latex(self.to_sympy(readable=readable, **kwargs))

    def to_module(self) -> nn.Module:
        """A small ``nn.Module`` computing the polynomial, for fast inference."""
        return PolynomialModule(self.center, self.exponents, self.coefficients)

    def save(self, path: str | Path) -> None:
        """Write JSON (no pickle: loading runs no code). float64 values round-trip exactly.

        The format: :mod:`hope_attr.polynomial.serialization`.

        Raises:
            ValueError: a coefficient is NaN or infinite (JSON has no such numbers).
        """
        _serialization.write(path, self.center, self.exponents, self.coefficients, self.names)

    @classmethod
    def load(cls, path: str | Path) -> TaylorPolynomial:
        """Read a polynomial written by :meth:`save` (plain JSON: no code runs).

        Everything is checked before any tensor is built: a malformed or hostile file raises a
        ``ValueError`` that says what is wrong, in well under a second.

        Raises:
            ValueError: the file is not a valid saved TaylorPolynomial (the message says why).
        """
        return _serialization.read(path, cls)

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
        self._check_points(x)
        return _bounds.lagrange_bounds(
            x,
            self.center,
            self.exponents,
            self.coefficients,
            forward_func or self._source,
            radius,
            points_per_axis,
        )

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
        self._check_points(x)
        return _bounds.remainder_bound(
            x,
            self.center,
            self.exponents,
            len(self.output_shape),
            forward_func or self._source,
            radius,
            points_per_axis,
        )

    def convergence_ratios(self) -> Tensor:
        """``||d^k f|| / ||d f||`` for ``k = 1..n`` (the paper's Table 2 diagnostic).

        ``||d^k f||`` is the Frobenius norm of the symmetric ``k``-th derivative tensor (each
        monomial's derivative counted with its multiplicity). Ratios that grow with ``k`` mean
        the series converges slowly or not at all at this scale.

        Example:
            >>> import torch
            >>> from hope_attr import TaylorPolynomial
            >>> # 1 + x + 2 x^2: f' = 1, f'' = 4
            >>> poly = TaylorPolynomial(
            ...     torch.zeros(1), torch.tensor([[0], [1], [2]]), torch.tensor([1.0, 1.0, 2.0])
            ... )
            >>> poly.convergence_ratios()
            tensor([1., 4.], dtype=torch.float64)
        """
        return _bounds.convergence_ratios(self.exponents, self.coefficients)

    # ------------------------------------------------------------------ helpers
    def _check_points(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.num_variables:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"evaluate the polynomial at a tensor of points (N, {self.num_variables}), got "
                f"{shape}; for one point use x[None]"
            )

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
        """One monomial as text, in this polynomial's names and center."""
        return _symbolic.monomial_text(self.names, self.center.tolist(), exponent, around_zero)


__all__ = ["TaylorPolynomial"]
