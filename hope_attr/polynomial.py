"""Taylor polynomials of networks: evaluate, print, re-center, replace the network, bound the error.

``expand(f, x0, n)`` returns ``P(x) = sum_{|a| <= n} c_a (x - x0)^a`` with exact coefficients
``c_a = d^a f(x0) / a!`` (from :func:`hope_attr.mixed_derivatives`'s machinery). Everything else
here is exact polynomial algebra on those coefficients.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hope_attr._derivatives import Expansion
from hope_attr._mixed import multi_indices, normalized_coefficients

_FORMAT = "hope_attr.TaylorPolynomial/1"
# Relative size below which a coefficient is rounding noise of the expansion (float64).
_NOISE = 1e-12


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
        self.center = center
        self.exponents = exponents.to(torch.long)
        self.coefficients = coefficients
        self.names = (
            list(names) if names is not None else [f"x{i + 1}" for i in range(center.numel())]
        )
        self._source: Callable[..., Tensor] | None = None  # the expanded function, if known
        self._table: _MonomialTable | None = None  # built on first evaluation

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
        if self._table is None:
            self._table = _MonomialTable(self.exponents)
        return self._table.evaluate(x - self.center, self.coefficients)

    def recenter(self, new_center: Tensor | Sequence[float]) -> TaylorPolynomial:
        """The same polynomial written in powers of ``x - new_center`` (exact algebra).

        ``(y + d)^a = prod_i sum_{b_i <= a_i} C(a_i, b_i) y_i^b_i d_i^(a_i - b_i)`` with
        ``d = new_center - center``.
        """
        new_center = torch.as_tensor(new_center, dtype=self.center.dtype)
        shift = new_center - self.center
        # float64: float32 binomials are wrong past C(40, 20) and their exponentials overflow.
        a = self.exponents[None, :, :].double()  # (1, M, p): source monomials
        b = self.exponents[:, None, :].double()  # (M, 1, p): target monomials
        below = (b <= a).all(-1)
        binomials = torch.exp(
            torch.lgamma(a + 1.0) - torch.lgamma(b + 1.0) - torch.lgamma((a - b).clamp(min=0) + 1.0)
        ).to(shift.dtype)
        powers = shift.pow((a - b).clamp(min=0).to(shift.dtype))
        transform = torch.where(below, (binomials.round() * powers).prod(-1), 0.0)  # (M, M)
        flat = self.coefficients.reshape(len(self.exponents), -1)
        moved = (transform @ flat.to(transform.dtype)).reshape(self.coefficients.shape)
        result = TaylorPolynomial(new_center, self.exponents, moved, self.names)
        result._source = self._source
        return result

    def terms(
        self,
        threshold: float = 0.0,
        output: int | tuple[int, ...] = 0,
        around_zero: bool = False,
        digits: int = 6,
    ) -> list[tuple[float, str]]:
        """``(coefficient, monomial)`` pairs with ``|coefficient| > threshold``, largest first.

        Coefficients are rounded to ``digits`` decimals; those below ``1e-12`` of the largest
        are rounding noise of the expansion and always dropped.
        """
        polynomial = self.recenter(torch.zeros_like(self.center)) if around_zero else self
        coefficients = polynomial._output_coefficients(output)
        cutoff = max(threshold, _NOISE * coefficients.abs().max().item())
        pairs = [
            (round(c, digits), polynomial._monomial_text(exponent, around_zero))
            for c, exponent in zip(coefficients.tolist(), self.exponents.tolist(), strict=True)
            if abs(c) > cutoff
        ]
        return sorted(pairs, key=lambda pair: -abs(pair[0]))

    def to_sympy(
        self,
        output: int | tuple[int, ...] = 0,
        around_zero: bool = False,
        threshold: float = 0.0,
        digits: int | None = None,
    ) -> Any:
        """An explicit ``sympy`` expression in the variable names (``x1..xp`` by default).

        ``around_zero`` writes it in powers of ``x`` (the paper's ``y = 0.50 x2 + 0.51 x1^2``)
        instead of ``x - x0``.
        """
        import sympy

        symbols = sympy.symbols(self.names)
        polynomial = self.recenter(torch.zeros_like(self.center)) if around_zero else self
        coefficients = polynomial._output_coefficients(output).tolist()
        centers = polynomial.center.tolist()
        expression = sympy.Integer(0)
        for coefficient, exponent in zip(coefficients, self.exponents.tolist(), strict=True):
            if abs(coefficient) <= max(threshold, _NOISE * max(map(abs, coefficients))):
                continue
            value = sympy.Float(coefficient, digits) if digits else sympy.Float(coefficient)
            term = value
            for symbol, center, power in zip(symbols, centers, exponent, strict=True):
                if power:
                    # Unevaluated, or sympy distributes the coefficient over (x - x0).
                    base = sympy.UnevaluatedExpr(symbol - sympy.Float(center)) if center else symbol
                    term *= base**power
            expression += term
        return expression

    def to_latex(self, **kwargs: Any) -> str:
        """LaTeX of :meth:`to_sympy` (same arguments)."""
        import sympy

        return sympy.latex(self.to_sympy(**kwargs))

    def to_module(self) -> nn.Module:
        """A small ``nn.Module`` computing the polynomial, for fast inference."""
        return PolynomialModule(self.center, self.exponents, self.coefficients)

    def save(self, path: str | Path) -> None:
        """Write JSON (no pickle: loading runs no code). float64 values round-trip exactly."""
        payload = {
            "format": _FORMAT,
            "names": self.names,
            "center": self.center.double().tolist(),
            "exponents": self.exponents.tolist(),
            "output_shape": list(self.output_shape),
            "coefficients": self.coefficients.double().reshape(len(self.exponents), -1).tolist(),
        }
        Path(path).write_text(json.dumps(payload))

    @classmethod
    def load(cls, path: str | Path) -> TaylorPolynomial:
        """Read a polynomial written by :meth:`save` (plain JSON: no code runs).

        Raises:
            ValueError: the file is not a saved TaylorPolynomial.
        """
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved TaylorPolynomial ({_FORMAT})")
        exponents = torch.tensor(payload["exponents"], dtype=torch.long)
        coefficients = torch.tensor(payload["coefficients"], dtype=torch.float64)
        return cls(
            torch.tensor(payload["center"], dtype=torch.float64),
            exponents,
            coefficients.reshape(len(exponents), *payload["output_shape"]),
            payload["names"],
        )

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
        flat_index = output if isinstance(output, int) else None
        if flat_index is not None and len(self.output_shape) <= 1:
            return self.coefficients.reshape(len(self.exponents), -1)[:, flat_index]
        index = output if isinstance(output, tuple) else (output,)
        return self.coefficients[(slice(None), *index)]

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

    Example:
        >>> import torch, hope_attr
        >>> f = lambda x: torch.exp(x[:, :1]) * x[:, 1:]
        >>> poly = hope_attr.expand(f, torch.zeros(2, dtype=torch.float64), order=3)
        >>> poly.terms()  # exp(x1) x2 = x2 + x1 x2 + x1^2 x2 / 2 + ...
        [(1.0, 'x2'), (1.0, 'x1 x2'), (0.5, 'x1^2 x2')]
    """
    x0 = torch.as_tensor(x0)
    if not x0.is_floating_point():
        x0 = x0.to(torch.get_default_dtype())
    if x0.dim() != 1:
        raise ValueError(f"x0 must be one point (p,), got shape {tuple(x0.shape)}")
    expansion = Expansion(forward_func, x0[None], order, internal_batch_size=internal_batch_size)
    exponents = [(0,) * x0.numel()]
    blocks = [expansion.output[0].unsqueeze(0)]  # (1, *O): the value
    for k, coefficients in enumerate(normalized_coefficients(expansion), start=1):
        exponents.extend(multi_indices(x0.numel(), k))
        blocks.append(coefficients[0].movedim(-1, 0))  # (M_k, *O)
    polynomial = TaylorPolynomial(x0, torch.tensor(exponents), torch.cat(blocks), names)
    polynomial._source = forward_func
    return polynomial


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
    """

    def __init__(self, polynomials: list[TaylorPolynomial]) -> None:
        stacked = torch.stack([p.coefficients for p in polynomials])
        first = polynomials[0]
        self.polynomials = polynomials
        self.mean = TaylorPolynomial(first.center, first.exponents, stacked.mean(0), first.names)
        self.spread = stacked.std(0) if len(polynomials) > 1 else torch.zeros_like(stacked[0])

    def terms(
        self,
        threshold: float = 0.0,
        output: int | tuple[int, ...] = 0,
        around_zero: bool = False,
        digits: int = 4,
    ) -> list[tuple[float, float, str]]:
        """``(mean, spread, monomial)`` of the terms with ``|mean| > threshold``, largest first."""
        mean, spread = self.mean, self.spread
        if around_zero:
            zero = torch.zeros_like(mean.center)
            recentered = [p.recenter(zero).coefficients for p in self.polynomials]
            stacked = torch.stack(recentered)
            mean = TaylorPolynomial(zero, mean.exponents, stacked.mean(0), mean.names)
            spread = stacked.std(0) if len(recentered) > 1 else torch.zeros_like(stacked[0])
        coefficients = mean._output_coefficients(output)
        spreads = TaylorPolynomial(mean.center, mean.exponents, spread)._output_coefficients(output)
        cutoff = max(threshold, _NOISE * coefficients.abs().max().item())
        rows = [
            (round(c, digits), round(s, digits), mean._monomial_text(e, around_zero))
            for c, s, e in zip(
                coefficients.tolist(), spreads.tolist(), mean.exponents.tolist(), strict=True
            )
            if abs(c) > cutoff
        ]
        return sorted(rows, key=lambda row: -abs(row[0]))


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

    Example:
        >>> import torch, hope_attr
        >>> f = lambda x: 0.5 * x[:, :1] ** 2 + 0.5 * x[:, 1:]
        >>> found = hope_attr.discover(f, torch.zeros(2, dtype=torch.float64), 1.0, order=3)
        >>> [(mean, term) for mean, spread, term in found.terms(threshold=0.01)]
        [(0.5, 'x2'), (0.5, 'x1^2')]
    """
    x0 = torch.as_tensor(x0)
    if not x0.is_floating_point():
        x0 = x0.to(torch.get_default_dtype())
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.rand(num_points, x0.numel(), generator=generator, dtype=x0.dtype) * 2 - 1
    points = torch.cat([x0[None], x0 + radius * offsets])
    # One batched expansion at every point, then exact re-centering at x0.
    expansion = Expansion(forward_func, points, order)
    exponents = [(0,) * x0.numel()]
    blocks = [expansion.output.unsqueeze(1)]  # (N, 1, *O)
    for k, coefficients in enumerate(normalized_coefficients(expansion), start=1):
        exponents.extend(multi_indices(x0.numel(), k))
        blocks.append(coefficients.movedim(-1, 1))  # (N, M_k, *O)
    coefficients = torch.cat(blocks, dim=1)
    exponent_tensor = torch.tensor(exponents)
    polynomials = [
        TaylorPolynomial(point, exponent_tensor, c, names).recenter(x0)
        for point, c in zip(points, coefficients, strict=True)
    ]
    return Discovery(polynomials)


__all__ = ["Discovery", "PolynomialModule", "TaylorPolynomial", "discover", "expand"]
