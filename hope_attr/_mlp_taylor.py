"""Mixed partials of MLPs: multivariate Taylor polynomials, and the top degree by an adjoint.

For a chain of ``Linear`` layers and elementwise activations (an MLP) with few inputs, every
partial derivative up to order ``n`` comes cheaper from truncated *multivariate* Taylor arithmetic
than from the univariate jets of :mod:`hope_attr._mixed`:

* **Degrees 1 .. n-1 are propagated forwards**, as polynomials in ``delta = x - x0``: a tensor of
  coefficients ``(B, M_d, W)`` per degree ``d`` (``M_d`` monomials, ordered as
  :func:`hope_attr._mixed.multi_indices`). A linear layer acts on every coefficient (its bias on
  the primal only); an activation ``g`` composes with its Taylor table ``T_j = g^(j)(z0) / j!``,
  read off its registered rule: ``g(z0 + D) - g(z0) = T_1 D + D R`` with
  ``R = sum_{j >= 2} T_j D^(j-1)``, products truncated by degree.
* **The top degree n is not propagated.** A degree-``n`` coefficient reaches every later layer
  only through the first-order term ``T_1 D_n``: what else an activation produces at degree ``n``,
  ``S = [D R]_n``, is built from lower degrees. So the output's degree-``n`` part is linear in
  these sources, through the network's Jacobian from each activation to the output:
  ``y_n = sum over activations of sum_units adj_u S_u``, with ``adj = dy/dh`` from one reverse
  sweep over the primal per output. The sum over units, ``sum_u adj_u D_a,u R_b,u`` for every
  pair of monomials, is one batched matrix product per point.

For ``p = 5`` inputs at order 3 a layer carries 20 coefficients, where the jets carry
``3 * C(7, 3) = 105`` (35 directions, 3 orders each), and activations do a handful of products
instead of a series recurrence per direction. The cost grows like the number of monomials of
degree ``< n`` times ``O`` (outputs) for the adjoints, so :mod:`hope_attr._mixed` uses this path
only where it carries clearly fewer coefficients than the jets (see :func:`is_cheaper`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_attr import _registry
from hope_attr._jet import Jet
from hope_attr._mixed import multi_indices
from hope_attr._primitives import ELEMENTWISE_ACTIVATIONS, activation_table

# Polynomials by degree: {d: coefficients (B|1, M_d, W)}; a missing degree is zero.
Graded = dict[int, Tensor]

# Bytes of the coefficients of one block of points, per thread (each has its own cache): near
# the size of a CPU's L2 cache; `benchmarks/mixed.py` sweeps it.
_BLOCK_BYTES = 2 * 2**20
# When this path is used (see `is_cheaper`).
_MAX_ORDER = 4
_ADVANTAGE = 4
_PASS_THROUGH = (nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class _Step:
    module: nn.Module
    is_linear: bool


def chain_of(expansion: object) -> list[_Step] | None:
    """The MLP's steps if ``expansion`` traced a chain of Linear layers and elementwise
    activations on one flat input ``(B, p)`` with a flat output ``(B, O)``; else ``None``."""
    if len(expansion.inputs) != 1 or expansion.extra or expansion.inputs[0].dim() != 2:
        return None
    if expansion.output.dim() != 2:
        return None
    nodes = list(expansion.graph.graph.nodes)
    if len(nodes) < 3 or nodes[0].op != "placeholder" or nodes[-1].op != "output":
        return None
    steps: list[_Step] = []
    previous = nodes[0]
    for node in nodes[1:-1]:
        if node.op != "call_module" or node.args != (previous,) or node.kwargs:
            return None
        module = expansion.graph.get_submodule(node.target)
        if isinstance(module, nn.Linear):
            steps.append(_Step(module, True))
        elif isinstance(module, ELEMENTWISE_ACTIVATIONS):
            if _registry.module_rule(type(module)) is None:
                return None
            steps.append(_Step(module, False))
        elif not isinstance(module, _PASS_THROUGH):
            return None
        previous = node
    if nodes[-1].args != (previous,) or not any(step.is_linear for step in steps):
        return None
    return steps


def is_cheaper(expansion: object) -> bool:
    """Whether this path should beat the univariate jets, from how many coefficients each
    carries per layer: ``n C(p+n-1, n)`` for the jets, ``O (C(p+n-1, n-1) - 1)`` here (``O``
    outputs: the adjoint contraction runs once per output; the gradient's ``O`` for ``n = 1``).

    Its fixed costs (products of degrees, the reverse sweep) make it pay only when the jets
    carry ``_ADVANTAGE`` times more, and only up to order ``_MAX_ORDER``: the thresholds come
    from the route comparison of ``benchmarks/mixed.py``, which times both routes on MLPs with
    several ``p``, ``n`` and ``O`` and says which one this rule picks.
    """
    order, p = expansion.order, expansion.inputs[0].shape[1]
    outputs = expansion.output.shape[1]
    if order > _MAX_ORDER:
        return False
    jets = order * math.comb(p + order - 1, order)
    lower = math.comb(p + order - 1, order - 1) - 1 if order > 1 else 1
    return jets >= _ADVANTAGE * outputs * lower


def normalized_coefficients(expansion: object, steps: list[_Step]) -> list[Tensor]:
    """Per order ``k``: ``f_a = d^a f / a!`` for every ``|a| = k``, shape ``(B, O, M_k)``.

    Points go in blocks sized for the caches, the primal pass and its tables included: tensors of
    a whole large batch would cost more in memory traffic (and, with glibc's default settings,
    in fresh pages from the kernel) than the blocks' extra operations.
    """
    x, order = expansion.inputs[0], expansion.order
    num_variables = x.shape[1]
    widest = max([num_variables] + [s.module.out_features for s in steps if s.is_linear])
    per_point = sum(_count(num_variables, d) for d in range(1, order)) * widest * x.element_size()
    points = max(1, _BLOCK_BYTES * torch.get_num_threads() // max(per_point, 1))
    blocks = [
        _expand_block(steps, x[start : start + points], order)
        for start in range(0, x.shape[0], points)
    ]
    return [torch.cat(parts) for parts in zip(*blocks, strict=True)]


def _expand_block(steps: list[_Step], x: Tensor, order: int) -> list[Tensor]:
    """Coefficients of degrees ``1..n`` for one block of points: ``(b, O, M_k)`` each."""
    batch, num_variables = x.shape
    with torch.no_grad():
        tables, output = _primal_pass(steps, x, order)
        adjoints, gradient = _adjoint_pass(steps, tables, output)
        if order == 1:
            return [gradient.movedim(0, 1)]  # (O, b, p) -> (b, O, p)
        num_outputs = output.shape[1]
        # delta's degree-1 coefficients: the coefficient of monomial delta_i is e_i.
        eye = torch.eye(num_variables, dtype=x.dtype, device=x.device)
        values: Graded = {1: eye.unsqueeze(0)}
        top = output.new_zeros((batch, num_outputs, _count(num_variables, order)))
        last = max((i for i, t in enumerate(tables) if t is not None), default=-1)
        linear_tail = any(step.is_linear for step in steps[last + 1 :])
        for index, (step, table, adjoint) in enumerate(zip(steps, tables, adjoints, strict=True)):
            if step.is_linear:
                values = {d: F.linear(c, step.module.weight) for d, c in values.items()}
            elif table is not None:
                tail = index == last and linear_tail  # the rest is linear: map to the outputs
                values = _activation(values, table, adjoint, top, num_variables, order, tail)
                if tail:
                    break
    lower = []
    for degree in range(1, order):
        if degree in values:  # (b|1, M_d, O) -> (b, O, M_d)
            coefficients = values[degree].movedim(2, 1)
            lower.append(coefficients.expand(batch, *coefficients.shape[1:]).contiguous())
        else:
            lower.append(top.new_zeros((batch, num_outputs, _count(num_variables, degree))))
    return [*lower, top]


def _primal_pass(steps: list[_Step], x: Tensor, order: int) -> tuple[list, Tensor]:
    """The primal through the chain, and each activation's table ``[T_0 .. T_n]`` at it."""
    tables: list[list[Tensor] | None] = []
    value = x
    for step in steps:
        if step.is_linear:
            tables.append(None)
            value = step.module(value)
        elif isinstance(step.module, _PASS_THROUGH):
            tables.append(None)
        else:
            table = _table(step.module, value, order)
            tables.append(table)
            value = table[0]
    return tables, value


def _table(module: nn.Module, z0: Tensor, order: int) -> list[Tensor]:
    """``[g(z0), g'(z0), g''(z0)/2!, ...]``: read off directly where the built-in rule is a plain
    table, else from the module's own Taylor rule on a unit jet."""
    table = activation_table(module, z0, order)
    if table is not None:
        return table
    unit = Jet(z0, torch.ones_like(z0).unsqueeze(0).unsqueeze(0), order)
    result = _registry.module_rule(type(module))(module, unit)
    series = result.full_series()[:, 0]  # (n, B, W)
    return [result.primal, *series.unbind(0)]


def _adjoint_pass(
    steps: list[_Step], tables: list, output: Tensor
) -> tuple[list[Tensor | None], Tensor]:
    """``dy_o/dh`` at every activation's output, ``(O, B, W)``, and the gradient at the input."""
    num_outputs = output.shape[1]
    eye = torch.eye(num_outputs, dtype=output.dtype, device=output.device)
    adjoint = eye.unsqueeze(1).expand(num_outputs, output.shape[0], num_outputs)
    adjoints: list[Tensor | None] = [None] * len(steps)
    for index in reversed(range(len(steps))):
        step, table = steps[index], tables[index]
        if step.is_linear:
            adjoint = adjoint @ step.module.weight
        elif table is not None:
            adjoints[index] = adjoint
            adjoint = adjoint * table[1]
    return adjoints, adjoint


def _activation(
    values: Graded,
    table: list[Tensor],
    adjoint: Tensor,
    top: Tensor,
    p: int,
    order: int,
    through_adjoint: bool = False,
) -> Graded:
    """Degrees ``1..n-1`` of ``g(z0 + D) - g(z0)``; adds what ``g`` contributes at degree ``n``
    to ``top``, through ``adjoint``.

    ``through_adjoint``: only linear layers follow, whose composition *is* the adjoint, so the
    result is returned already mapped to the outputs, ``(B, M_k, O)``: each term's sum over
    units is a batched matrix product, and the activation's output is never formed.
    """
    t = [c.unsqueeze(1) for c in table]  # (B, 1, W): broadcast over monomials
    powers = [None, values]  # powers[j] = D^j, degrees j .. n-1
    for j in range(2, order):
        powers.append(_multiply(powers[j - 1], values, order - 1, p))
    result: Graded = {}
    for k in range(1, order):
        total = None
        for j in range(1, k + 1):
            if k not in powers[j]:
                continue
            if through_adjoint:  # sum_u P_j[k][b, c, u] (adj T_j)[o, b, u]
                weight = (adjoint * table[j]).permute(1, 2, 0)  # (B, W, O)
                factor = powers[j][k].expand(weight.shape[0], -1, -1)
                product = torch.bmm(factor, weight)
                total = product if total is None else total.add_(product)
            else:
                total = _add_product(total, t[j], powers[j][k])
        if total is not None:
            result[k] = total
    # Degree n: sum_u adj_u [D R]_n,u with R = sum_{j >= 2} T_j D^(j-1), over the splits of n
    # into degrees d + k. For each term, sum_u (D_d,a adj_u T_j,u) [D^(j-1)]_k,c,u over the units
    # for every pair of monomials (a, c) is one batched matrix product per point, with the
    # weights on the degree-d factor. The j = 2 terms, T_2 D_d D_k, are symmetric in (d, k):
    # they are taken once, doubled, for d < k.
    adjoint = adjoint.movedim(0, 1).unsqueeze(2)  # (B, O, 1, W)
    for d in range(1, order):
        if d not in values:
            continue
        k = order - d
        terms = []  # (weight (B, O, 1, W), degree-k factor (B|1, M_k, W))
        if d <= k and k in values:
            terms.append(((2.0 if d < k else 1.0) * table[2].unsqueeze(1), values[k]))
        terms += [(table[j].unsqueeze(1), powers[j - 1].get(k)) for j in range(3, k + 2)]
        pairs = None
        for weight, factor in terms:
            if factor is None:
                continue
            left = adjoint * weight.unsqueeze(2) * values[d].unsqueeze(1)  # (B, O, M_d, W)
            batch, outputs, count, width = left.shape
            right = factor.expand(batch, -1, -1).transpose(1, 2)  # (B, W, M_k)
            product = torch.bmm(left.reshape(batch, outputs * count, width), right)
            pairs = product if pairs is None else pairs.add_(product)
        if pairs is None:
            continue
        # (B, O * M_d, M_k) -> (B, O, M_d * M_k): row-major monomial pairs, as the targets.
        pairs = pairs.reshape(batch, outputs, -1)
        top.index_add_(2, _product_indices(p, d, k)[2].to(top.device), pairs)
    return result


def _add_product(total: Tensor | None, a: Tensor, b: Tensor) -> Tensor:
    """``total + a * b``, in place once ``total`` exists (it has the full broadcast shape)."""
    return a * b if total is None else total.addcmul_(a, b)


def _multiply(a: Graded, b: Graded, max_degree: int, p: int) -> Graded:
    """``a * b`` truncated at ``max_degree`` (both without a constant term): every pair of
    monomials as one outer product, summed onto the monomial of their product.

    The square of a polynomial's degree-1 part needs no sum: each monomial of degree 2 is the
    product of exactly one unordered pair of variables (the first power of every MLP has it).
    """
    result: Graded = {}
    for da, ca in a.items():
        for db, cb in b.items():
            degree = da + db
            if degree > max_degree:
                continue
            if a is b and da == db == 1:
                result[degree] = _square_of_linear(ca)
                continue
            pairs = (ca.unsqueeze(2) * cb.unsqueeze(1)).flatten(1, 2)  # (B, M_a * M_b, W)
            if degree not in result:
                shape = (pairs.shape[0], _count(p, degree), pairs.shape[2])
                result[degree] = pairs.new_zeros(shape)
            result[degree].index_add_(1, _product_indices(p, da, db)[2].to(pairs.device), pairs)
    return result


def _square_of_linear(linear: Tensor) -> Tensor:
    """Degree 2 of ``(sum_i c_i x_i)^2`` from ``c`` ``(B, p, W)``: ``(B, M_2, W)``.

    In the order of :func:`hope_attr._mixed.multi_indices`, the monomials ``x_i x_j`` (``j >= i``)
    of each ``i`` form one run, ``x_i^2`` first, so each run is one broadcast product.
    """
    p = linear.shape[1]
    out = linear.new_empty((linear.shape[0], _count(p, 2), linear.shape[2]))
    doubled = 2 * linear
    start = 0
    for i in range(p):
        row = linear[:, i : i + 1]
        torch.mul(row, row, out=out[:, start : start + 1])
        torch.mul(row, doubled[:, i + 1 :], out=out[:, start + 1 : start + p - i])
        start += p - i
    return out


def _count(p: int, degree: int) -> int:
    return math.comb(p + degree - 1, degree)


@lru_cache(maxsize=256)
def _product_indices(p: int, da: int, db: int) -> tuple[Tensor, Tensor, Tensor]:
    """For every pair of monomials of degrees ``da`` and ``db`` (row-major): their positions,
    and the position of their product among the monomials of degree ``da + db``."""
    left_monomials, right_monomials = multi_indices(p, da), multi_indices(p, db)
    position = {m: i for i, m in enumerate(multi_indices(p, da + db))}
    left, right, target = [], [], []
    for i, a in enumerate(left_monomials):
        for j, b in enumerate(right_monomials):
            left.append(i)
            right.append(j)
            target.append(position[tuple(x + y for x, y in zip(a, b, strict=True))])
    return tuple(torch.tensor(v, dtype=torch.long) for v in (left, right, target))
