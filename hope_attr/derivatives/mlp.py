"""Mixed partials of MLPs: multivariate Taylor polynomials, and the top degree by an adjoint.

For an ``nn.Sequential`` of ``Linear`` layers and elementwise activations (an MLP) with few
inputs, every partial derivative up to order ``n`` comes cheaper from truncated *multivariate*
Taylor arithmetic than from the univariate jets of :mod:`hope_attr.derivatives.mixed`:

* **Degrees 1 .. n-1 are propagated forwards**, as polynomials in ``delta = x - x0``: a tensor of
  coefficients ``(B, M_d, W)`` per degree ``d`` (``M_d`` monomials, ordered as
  :func:`hope_attr.derivatives.monomials.multi_indices`). A linear layer acts on every coefficient
  (its bias on the primal only); an activation ``g`` composes with its Taylor table
  ``T_j = g^(j)(z0) / j!`` (its ``table`` in :data:`hope_attr.rules.elementwise.ACTIVATIONS`, or
  its built-in rule applied to a one-direction jet): ``g(z0 + D) - g(z0) = T_1 D + D R`` with
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

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from hope_attr.derivatives.monomials import count, multi_indices
from hope_attr.engine import registry as _registry
from hope_attr.engine import sequential as _sequential
from hope_attr.engine.jet import Jet
from hope_attr.rules.elementwise import ACTIVATIONS, ELEMENTWISE_ACTIVATIONS, Activation

if TYPE_CHECKING:
    from hope_attr.engine.expansion import Expansion

# Polynomials by degree: {d: coefficients (B|1, M_d, W)}; a missing degree is zero.
Graded = dict[int, Tensor]
Table = list[Tensor]  # [T_0, T_1, ..., T_n], each (B, W)

# The bytes of one block of points' coefficients and temporaries, per thread, are the resource
# policy's `mlp_block_bytes` (hope_attr.engine.resources): larger blocks mean fewer operations,
# smaller ones stay in the caches and, with glibc's default allocator, are reused from the heap
# instead of being returned to the kernel and faulted in again. `benchmarks/mixed.py` sweeps it.

# When this path is used (see `is_cheaper`).
_MAX_ORDER = 4
_MAX_OUTPUTS = 4
_ADVANTAGE = 4
# The classes whose forward is the identity in eval mode (training mode is refused earlier, by
# the expansion's eval check): skipped in a chain.
IDENTITY_IN_EVAL = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


@dataclass(frozen=True)
class _Step:
    """One layer of the chain: a Linear layer (``activation is None``) or an elementwise
    activation, with what its table is read from."""

    module: nn.Module
    activation: Activation | None = None

    @property
    def is_linear(self) -> bool:
        return self.activation is None


def chain_of(expansion: Expansion) -> list[_Step] | None:
    """The MLP's steps if ``expansion`` is of a plain ``nn.Sequential`` of Linear layers and
    elementwise activations on one flat input ``(B, p)`` with a flat output ``(B, O)`` and no
    additional arguments; else ``None`` (the jets route runs, which takes any model).

    Decided by looking at the modules (:func:`hope_attr.engine.sequential.sequential_layers`:
    nested plain ``Sequential`` containers are flattened; module hooks rule the chain out), and
    by calling each layer once on the first point, which shows the torch functions it calls.
    This path computes what the built-in rules compute, by other means, so whatever a user
    registered instead would be silently ignored: a layer whose type has a user's module rule,
    a subclass with its own ``forward``, or a layer calling a function with a user's rule
    (``register_rule(torch.tanh, override=True)``) sends the model to the jets, which honour
    them. Identity and (eval-mode) dropout are skipped.
    """
    x = expansion.inputs[0]
    if len(expansion.inputs) != 1 or expansion.extra or x.dim() != 2:
        return None
    if expansion.output.dim() != 2:
        return None
    model, inputs = expansion.forward_func, expansion.inputs
    layers = _sequential.sequential_layers(model, inputs, expansion.extra)
    if not layers:
        return None
    steps: list[_Step] = []
    value = x[:1]
    for _, layer in layers:
        owner = forward_owner(type(layer))
        if owner is nn.Linear:
            step = _Step(layer)
        elif owner in ELEMENTWISE_ACTIVATIONS:
            step = _Step(layer, ACTIVATIONS[owner])
        elif owner in IDENTITY_IN_EVAL:
            step = None
        else:
            return None
        value, called = call_recording(layer, value)
        if user_rule_of(layer, called) is not None:
            return None
        if step is not None:
            steps.append(step)
    return steps or None


def forward_owner(module_type: type[nn.Module]) -> type[nn.Module]:
    """The class along the MRO whose ``forward`` instances of ``module_type`` run: a subclass
    that does not override ``forward`` computes what its base computes.

    Example:
        >>> from torch import nn
        >>> forward_owner(nn.ReLU6).__name__  # ReLU6 is a Hardtanh with fixed bounds
        'Hardtanh'
    """
    return next(c for c in module_type.__mro__ if "forward" in vars(c))


class Call(NamedTuple):
    """One torch function a layer's ``forward`` called: whether the layer's input was its first
    argument, and what it returned."""

    function: object
    on_input: bool
    result: object


class _Calls(TorchFunctionMode):
    """Records the torch functions called at the top level (those they call in turn run with
    the mode off): the ones a jet would take to their rules."""

    def __init__(self, argument: Tensor) -> None:
        super().__init__()
        self.argument = argument
        self.seen: list[Call] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        result = func(*args, **(kwargs or {}))
        self.seen.append(Call(func, bool(args) and args[0] is self.argument, result))
        return result


def call_recording(layer: nn.Module, value: Tensor) -> tuple[Tensor, list[Call]]:
    """``layer(value)`` without autograd, and the torch functions its ``forward`` called.

    The layer gets a copy: an in-place layer (``nn.ELU(inplace=True)``) must change neither
    ``value``, which the caller keeps as this layer's input, nor a user's input tensor.

    Example:
        >>> import torch
        >>> _, calls = call_recording(torch.nn.Tanh(), torch.zeros(1, 2))
        >>> [(call.function.__name__, call.on_input) for call in calls]
        [('tanh', True)]
    """
    argument = value.clone()
    with torch.no_grad(), _Calls(argument) as calls:
        output = layer(argument)
    return output, calls.seen


def user_rule_of(layer: nn.Module, called: Iterable[Call]) -> str | None:
    """What a user registered that running ``layer`` on a jet would meet: a module rule for its
    type, or a function rule for one of the functions it ``called`` (say which), else ``None``.

    Every module rule is a user's (the built-in rules are function rules); the built-in
    function rules are all defined inside ``hope_attr``, so any other one is the user's.
    """
    if _registry.module_rule(type(layer)) is not None:
        return f"a Taylor rule registered for {type(layer).__qualname__}"
    for function, _, _ in called:
        if _is_user_rule(_registry.function_rule(function)):
            name = getattr(function, "__qualname__", None) or repr(function)
            return f"a Taylor rule registered for {name}, which its forward calls"
    return None


def _is_user_rule(rule: object) -> bool:
    home = getattr(rule, "__module__", None) or ""
    return rule is not None and not home.startswith("hope_attr.")


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
    budget = expansion.resources.mlp_block_bytes * torch.get_num_threads()
    points = max(1, budget // max(per_point, 1))
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
            table = _table(step, value, order)
            tables.append(table)
            value = table[0]
    return tables, value


def _table(step: _Step, z0: Tensor, order: int) -> Table:
    """``[g(z0), g'(z0), g''(z0)/2!, ...]`` of an activation step: read off its plain table
    where it has one, else from its built-in rule applied to a unit jet (compositions such as
    SiLU, piecewise-linear functions)."""
    spec, module = step.activation, step.module
    assert spec is not None
    settings = spec.settings(module)
    table = spec.table(z0, order, **settings) if spec.table is not None else None
    if table is not None:
        return table
    unit = Jet(z0, torch.ones_like(z0).reshape(1, 1, *z0.shape), order)
    result = spec.rule(unit, **settings)
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
