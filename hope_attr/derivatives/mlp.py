"""Mixed partials of MLPs: multivariate Taylor polynomials, and the top degree by an adjoint.

For a chain of ``Linear`` layers and elementwise activations (an MLP) with few inputs, every
partial derivative up to order ``n`` comes cheaper from truncated *multivariate* Taylor arithmetic
than from the univariate jets of :mod:`hope_attr.derivatives.mixed`:

* **Degrees 1 .. n-1 are propagated forwards**, as polynomials in ``delta = x - x0``: a tensor of
  coefficients ``(B, M_d, W)`` per degree ``d`` (``M_d`` monomials, ordered as
  :func:`hope_attr.derivatives.monomials.multi_indices`). A linear layer acts on every coefficient
  (its bias on
  the primal only); an activation ``g`` composes with its Taylor table ``T_j = g^(j)(z0) / j!``
  (:func:`hope_attr.rules.elementwise.activation_table`, or its registered rule applied to a
  one-direction jet): ``g(z0 + D) - g(z0) = T_1 D + D R`` with
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
degree ``< n``, and the adjoint contractions with the number of outputs, so
:mod:`hope_attr.derivatives.mixed` uses this path only where it carries clearly fewer coefficients
than the jets, for few outputs (see :func:`is_cheaper`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_attr.derivatives.monomials import count, multi_indices
from hope_attr.engine import registry as _registry
from hope_attr.engine.jet import Jet
from hope_attr.rules import elementwise as _rules_elementwise
from hope_attr.rules import linear as _rules_linear

if TYPE_CHECKING:
    from hope_attr.engine.expansion import Expansion

# Polynomials by degree: {d: coefficients (B|1, M_d, W)}; a missing degree is zero.
Graded = dict[int, Tensor]
Table = list[Tensor]  # [T_0, T_1, ..., T_n], each (B, W)

# Bytes of one block of points' coefficients and temporaries, per thread. Larger blocks mean
# fewer operations, smaller ones stay in the caches and, with glibc's default allocator, are
# reused from the heap instead of being returned to the kernel and faulted in again. In a fresh
# process with default settings (the practitioner's case of `benchmarks/mixed.py`, 2 threads)
# 8 MiB took 85 ms, 16 MiB 120 ms, 4 MiB 94 ms (median of 9); the benchmark sweeps it.
_BLOCK_BYTES = 8 * 2**20
# When this path is used (see `is_cheaper`).
_MAX_ORDER = 4
_MAX_OUTPUTS = 4
_ADVANTAGE = 4
# Modules that are the identity in eval mode (their built-in rule says so), skipped in a chain.
_PASS_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd, nn.AlphaDropout)


@dataclass(frozen=True)
class _Step:
    """One layer of the chain: a Linear layer or an elementwise activation."""

    module: nn.Module
    is_linear: bool


def chain_of(expansion: Expansion) -> list[_Step] | None:
    """The MLP's steps if ``expansion`` traced a chain of Linear layers and elementwise
    activations on one flat input ``(B, p)`` with a flat output ``(B, O)``; else ``None``.

    Only modules whose rule is the built-in one qualify: this path computes what those rules
    compute, by other means, and would silently ignore a rule a user registered instead.
    Identity and (eval-mode) dropout are skipped.
    """
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
        rule = _registry.module_rule(type(module))
        if isinstance(module, nn.Linear) and rule is _rules_linear._linear_module:
            steps.append(_Step(module, True))
        elif isinstance(module, _rules_elementwise.ELEMENTWISE_ACTIVATIONS) and rule is not None:
            steps.append(_Step(module, False))  # its table comes from its rule: any rule will do
        elif not (isinstance(module, _PASS_THROUGH) and rule is _rules_linear._identity_module):
            return None
        previous = node
    return steps if nodes[-1].args == (previous,) and steps else None


def is_cheaper(expansion: Expansion) -> bool:
    """Whether this path should beat the univariate jets.

    Per layer the jets carry ``n C(p+n-1, n)`` coefficients, this path ``C(p+n-1, n-1) - 1``
    (the monomials of degree ``1..n-1``) plus a contraction per output. Its fixed costs (products
    of degrees, the reverse sweep) make it pay only when the jets carry ``_ADVANTAGE`` times more
    coefficients, up to order ``_MAX_ORDER`` and ``_MAX_OUTPUTS`` outputs. The thresholds come
    from the route comparison of ``benchmarks/mixed.py``, which times both routes on MLPs with
    several ``p``, ``n`` and ``O`` and says which one this rule picks.
    """
    order, p = expansion.order, expansion.inputs[0].shape[1]
    if order > _MAX_ORDER or expansion.output.shape[1] > _MAX_OUTPUTS:
        return False
    jets = order * count(p, order)
    lower = count(p + 1, order - 1) - 1 if order > 1 else 1  # monomials of degree 1..n-1
    return jets >= _ADVANTAGE * lower


def normalized_coefficients(expansion: Expansion, steps: list[_Step]) -> list[Tensor]:
    """Per order ``k``: ``f_a = d^a f / a!`` for every ``|a| = k``, shape ``(B, O, M_k)``.

    Points go in blocks sized for the caches, the primal pass and its tables included: tensors of
    a whole large batch would cost more in memory traffic (and, with glibc's default settings,
    in fresh pages from the kernel) than the blocks' extra operations.
    """
    x, order = expansion.inputs[0], expansion.order
    p, outputs = x.shape[1], expansion.output.shape[1]
    widest = max([p] + [step.module.weight.shape[0] for step in steps if step.is_linear])
    lower = sum(count(p, d) for d in range(1, order))
    pairs = max((count(p, d) * count(p, order - d) for d in range(1, order)), default=0)
    per_point = ((lower + pairs) * widest + outputs * count(p, order)) * x.element_size()
    points = max(1, _BLOCK_BYTES * torch.get_num_threads() // max(per_point, 1))
    blocks = [
        _expand_block(steps, x[start : start + points], order)
        for start in range(0, x.shape[0], points)
    ]
    return [torch.cat(parts) for parts in zip(*blocks, strict=True)]


def _expand_block(steps: list[_Step], x: Tensor, order: int) -> list[Tensor]:
    """Coefficients of degrees ``1..n`` for one block of points: ``(b, O, M_k)`` each."""
    batch, p = x.shape
    with torch.no_grad():
        tables, output = _primal_pass(steps, x, order)
        if order == 1:
            return [_input_gradient(steps, tables, output).movedim(0, 1)]  # (b, O, p)
        adjoints = _adjoint_pass(steps, tables, output)
        num_outputs = output.shape[1]
        # delta's degree-1 coefficients: the coefficient of monomial delta_i is e_i.
        values: Graded = {1: torch.eye(p, dtype=x.dtype, device=x.device).unsqueeze(0)}
        top = output.new_zeros((batch, num_outputs, count(p, order)))
        last = max((i for i, step in enumerate(steps) if not step.is_linear), default=-1)
        linear_tail = last + 1 < len(steps)  # only Linear layers after the last activation
        for index, (step, table, adjoint) in enumerate(zip(steps, tables, adjoints, strict=True)):
            if step.is_linear:
                values = {d: F.linear(c, step.module.weight) for d, c in values.items()}
                continue
            tail = index == last and linear_tail  # the rest is linear: map to the outputs
            values = _activation(values, table, adjoint, top, p, order, tail)
            if tail:
                break
    lower = []
    for degree in range(1, order):
        if degree in values:  # (b|1, M_d, O) -> (b, O, M_d)
            coefficients = values[degree].movedim(2, 1)
            lower.append(coefficients.expand(batch, *coefficients.shape[1:]).contiguous())
        else:
            lower.append(top.new_zeros((batch, num_outputs, count(p, degree))))
    return [*lower, top]


def _primal_pass(steps: list[_Step], x: Tensor, order: int) -> tuple[list[Table | None], Tensor]:
    """The primal through the chain, and each activation's table ``[T_0 .. T_n]`` at it.

    Linear layers run as ``F.linear``, as their rule does: no module hooks, once per block."""
    tables: list[Table | None] = []
    value = x
    for step in steps:
        if step.is_linear:
            tables.append(None)
            value = F.linear(value, step.module.weight, step.module.bias)
        else:
            table = _table(step.module, value, order)
            tables.append(table)
            value = table[0]
    return tables, value


def _table(module: nn.Module, z0: Tensor, order: int) -> Table:
    """``[g(z0), g'(z0), g''(z0)/2!, ...]``: read off directly where the built-in rule is a plain
    table, else from the module's own Taylor rule on a unit jet."""
    table = _rules_elementwise.activation_table(module, z0, order)
    if table is not None:
        return table
    unit = Jet(z0, torch.ones_like(z0).unsqueeze(0).unsqueeze(0), order)
    result = _registry.module_rule(type(module))(module, unit)
    series = result.full_series()[:, 0]  # (n, B, W)
    return [result.primal, *series.unbind(0)]


def _adjoint_pass(
    steps: list[_Step], tables: list[Table | None], output: Tensor
) -> list[Tensor | None]:
    """``dy_o/dh`` at every activation's output, ``(O, B, W)`` (``None`` at Linear layers)."""
    num_outputs = output.shape[1]
    eye = torch.eye(num_outputs, dtype=output.dtype, device=output.device)
    adjoint = eye.unsqueeze(1).expand(num_outputs, output.shape[0], num_outputs)
    adjoints: list[Tensor | None] = [None] * len(steps)
    first = next((i for i, step in enumerate(steps) if not step.is_linear), len(steps))
    for index in reversed(range(first, len(steps))):  # below the first activation: not needed
        if steps[index].is_linear:
            adjoint = adjoint @ steps[index].module.weight
        else:
            adjoints[index] = adjoint
            adjoint = adjoint * tables[index][1]
    return adjoints


def _input_gradient(steps: list[_Step], tables: list[Table | None], output: Tensor) -> Tensor:
    """``dy_o/dx``, ``(O, B, p)``: the reverse sweep all the way down (order 1)."""
    num_outputs = output.shape[1]
    eye = torch.eye(num_outputs, dtype=output.dtype, device=output.device)
    adjoint = eye.unsqueeze(1).expand(num_outputs, output.shape[0], num_outputs)
    for step, table in zip(reversed(steps), reversed(tables), strict=True):
        adjoint = adjoint @ step.module.weight if step.is_linear else adjoint * table[1]
    return adjoint


def _activation(
    values: Graded,
    table: Table,
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
    powers = [None, values]  # powers[j] = D^j, degrees j .. n-1
    for j in range(2, order):
        powers.append(_multiply(powers[j - 1], values, order - 1, p))
    if through_adjoint:
        # weights[j][b, u, o] = adj[o, b, u] T_j[b, u]
        weights = [None] + [(adjoint * table[j]).permute(1, 2, 0) for j in range(1, order)]
    result: Graded = {}
    for k in range(1, order):
        total = None
        for j in range(1, k + 1):
            if k not in powers[j]:
                continue
            if through_adjoint:  # sum_u P_j[k][b, c, u] (adj T_j)[o, b, u]
                factor = powers[j][k].expand(weights[j].shape[0], -1, -1)
                product = torch.bmm(factor, weights[j])
                total = product if total is None else total.add_(product)
            else:
                total = _add_product(total, table[j].unsqueeze(1), powers[j][k])
        if total is not None:
            result[k] = total
    _add_top_degree(values, powers, table, adjoint, top, p, order)
    return result


def _add_top_degree(
    values: Graded,
    powers: list,
    table: Table,
    adjoint: Tensor,
    top: Tensor,
    p: int,
    order: int,
) -> None:
    """Adds ``sum_u adj_u [D R]_n,u`` to ``top`` (``R = sum_{j >= 2} T_j D^(j-1)``).

    Over the splits of ``n`` into degrees ``d + k``: for each term, ``sum_u (D_d,a adj_u T_j,u)
    [D^(j-1)]_k,c,u`` for every pair of monomials ``(a, c)`` is one batched matrix product per
    point, with the weights on the degree-``d`` factor. The ``j = 2`` terms, ``T_2 D_d D_k``, are
    symmetric in ``(d, k)``: they are taken once, doubled, for ``d < k``.
    """
    adjoint = adjoint.movedim(0, 1).unsqueeze(2)  # (B, O, 1, W)
    batch, outputs = adjoint.shape[:2]
    for d in range(1, order):
        if d not in values:
            continue
        k = order - d
        terms = []  # (T_j (B, 1, 1, W), degree-k factor (B|1, M_k, W))
        if d <= k and k in values:
            terms.append(((2.0 if d < k else 1.0) * table[2][:, None, None], values[k]))
        terms += [
            (table[j][:, None, None], powers[j - 1][k])
            for j in range(3, k + 2)
            if k in powers[j - 1]
        ]
        if not terms:  # e.g. d = n - 1 > 1: no split of n puts degree d first
            continue
        weighted = adjoint * values[d].unsqueeze(1)  # (B, O, M_d, W)
        pairs = None
        for weight, factor in terms:
            left = (weighted * weight).reshape(batch, -1, weighted.shape[-1])  # (B, O M_d, W)
            right = factor.expand(batch, -1, -1).transpose(1, 2)  # (B, W, M_k)
            product = torch.bmm(left, right)
            pairs = product if pairs is None else pairs.add_(product)
        if pairs is not None:
            # (B, O * M_d, M_k) -> (B, O, M_d * M_k): row-major monomial pairs, as the targets.
            top.index_add_(
                2, _product_targets(p, d, k, top.device), pairs.reshape(batch, outputs, -1)
            )


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
                result[degree] = pairs.new_zeros((pairs.shape[0], count(p, degree), pairs.shape[2]))
            result[degree].index_add_(1, _product_targets(p, da, db, pairs.device), pairs)
    return result


def _square_of_linear(linear: Tensor) -> Tensor:
    """Degree 2 of ``(sum_i c_i x_i)^2`` from ``c`` ``(B, p, W)``: ``(B, M_2, W)``.

    In the order of :func:`hope_attr.derivatives.monomials.multi_indices`, the monomials ``x_i x_j``
    (``j >= i``) of each ``i`` form one run, ``x_i^2`` first, so each run is one broadcast product.
    """
    p = linear.shape[1]
    out = linear.new_empty((linear.shape[0], count(p, 2), linear.shape[2]))
    doubled = 2 * linear
    start = 0
    for i in range(p):
        row = linear[:, i : i + 1]
        torch.mul(row, row, out=out[:, start : start + 1])
        torch.mul(row, doubled[:, i + 1 :], out=out[:, start + 1 : start + p - i])
        start += p - i
    return out


@lru_cache(maxsize=256)
def _product_targets(p: int, da: int, db: int, device: torch.device) -> Tensor:
    """For every pair of monomials of degrees ``da`` and ``db`` (row-major), the position of
    their product among the monomials of degree ``da + db`` (on ``device``, made once)."""
    position = {m: i for i, m in enumerate(multi_indices(p, da + db))}
    targets = [
        position[tuple(x + y for x, y in zip(a, b, strict=True))]
        for a in multi_indices(p, da)
        for b in multi_indices(p, db)
    ]
    return torch.tensor(targets, dtype=torch.long, device=device)
