"""Taylor rules of elementwise functions, smooth and piecewise linear.

A smooth function composes a jet through its table ``g^(j)(x)/j!`` at the primal (tanh, sigmoid
and exp through the O(n^2) series of the ODE they solve). Piecewise-linear functions (ReLU,
LeakyReLU, Hardtanh, ReLU6, clamp, abs, max/min) take the branch of the expansion point, with
PyTorch's own slope at a kink; their orders >= 2 are exactly zero, and the expansion is valid only
up to the nearest kink (:mod:`hope_attr.engine.kinks` reports where that is).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine import registry as _registry
from hope_attr.engine import taylor_tables as tables
from hope_attr.engine.jet import Jet
from hope_attr.engine.memo import cached
from hope_attr.engine.registry import register_rule
from hope_attr.rules import compositions as _compositions
from hope_attr.rules import spectral as _spectral


@dataclass(frozen=True)
class Activation:
    """An elementwise activation in all its forms: the functions and tensor methods, the module
    class that wraps them, the module's settings as the function's keyword arguments, and its
    Taylor table ``[g(x), g'(x), g''(x)/2!, ...]`` at the primal (``None`` for a composition or a
    piecewise-linear function, whose table comes from its rule)."""

    rule: Callable[..., Jet]
    module: type[nn.Module] | None = None
    functions: tuple[object, ...] = ()
    settings: Callable[[nn.Module], dict] = lambda module: {}
    table: Callable[..., list[Tensor] | None] | None = None


#: Module class -> its activation; the MLP route of mixed partials and the paper's rule read it.
ACTIVATIONS: dict[type[nn.Module], Activation] = {}
#: Every function form of an elementwise activation (the paper's rule reads it).
ELEMENTWISE_FUNCTIONS: set[object] = set()


def activation(*functions: object, **fields: object) -> Activation:
    """Register one activation: its rule for every function form. The module class is only
    recorded (its own ``forward`` calls one of the functions, which reaches the rule)."""
    spec = Activation(functions=functions, **fields)
    register_rule(*functions)(spec.rule)
    if spec.settings is not _dim:  # softmax mixes entries: not elementwise
        ELEMENTWISE_FUNCTIONS.update(functions)
    if spec.module is not None:
        ACTIVATIONS[spec.module] = spec
    return spec


def is_builtin(spec: Activation, module_type: type) -> bool:
    """Whether ``module_type`` computes what ``spec`` says: no user rule for the module type or
    for its functions, and the module's ``forward`` is the torch class's own."""
    return (
        _registry.module_rule(module_type) is None
        and all(_registry.function_rule(f) is spec.rule for f in spec.functions)
        and spec.module is not None
        and module_type.forward is spec.module.forward
    )


def _spec(module_type: type) -> Activation:
    return next(ACTIVATIONS[c] for c in module_type.__mro__ if c in ACTIVATIONS)


def _smooth(table: Callable[..., list[Tensor]]) -> Callable[..., Jet]:
    def rule(x: Jet, *args, **kwargs) -> Jet:
        return ar.elementwise(x, cached(table, x.primal, x.order, *args, **kwargs))

    return rule


def _elu(x: Jet, alpha: float = 1.0, inplace: bool = False) -> Jet:
    return ar.elementwise(x, tables.elu(x.primal, x.order, alpha))


# SELU = scale * ELU(alpha); the constants are PyTorch's.
_SELU_CONSTANTS = (1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


def _selu(x: Jet, inplace: bool = False) -> Jet:
    alpha, scale = _SELU_CONSTANTS
    return ar.elementwise(x, tables.elu(x.primal, x.order, alpha, scale), F.selu(x.primal))


def _selu_table(primal: Tensor, order: int) -> list[Tensor]:
    alpha, scale = _SELU_CONSTANTS
    return [F.selu(primal), *tables.elu(primal, order, alpha, scale)[1:]]


def _gelu(x: Jet, approximate: str = "none") -> Jet:
    if approximate == "tanh":
        return _compositions.gelu_tanh(x)
    return ar.elementwise(x, tables.gelu(x.primal, x.order), F.gelu(x.primal))


def _gelu_table(primal: Tensor, order: int, approximate: str = "none") -> list[Tensor] | None:
    if approximate != "none":
        return None
    return [F.gelu(primal), *tables.gelu(primal, order)[1:]]


def _relu(x: Jet, inplace: bool = False) -> Jet:
    _kinks.report(x, 0.0)
    return ar.scale(x, cached(_positive, x.primal), cached(F.relu, x.primal))


def _positive(primal: Tensor) -> Tensor:
    return (primal > 0).to(primal.dtype)


def _leaky_relu(x: Jet, negative_slope: float = 0.01, inplace: bool = False) -> Jet:
    _kinks.report(x, 0.0)
    slope = torch.full_like(x.primal, negative_slope).masked_fill_(x.primal > 0, 1.0)
    return ar.scale(x, slope, F.leaky_relu(x.primal, negative_slope))


def _hardtanh(x: Jet, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Jet:
    _kinks.report(x, min_val, max_val)
    inside = (x.primal > min_val) & (x.primal < max_val)
    return ar.scale(x, inside.to(x.primal.dtype), F.hardtanh(x.primal, min_val, max_val))


def _dim(module: nn.Module) -> dict:
    return {"dim": module.dim}


# One line per activation. tanh, sigmoid and exp solve Riccati ODEs: their series cost O(n^2).
activation(torch.tanh, torch.Tensor.tanh, F.tanh, rule=ar.tanh, module=nn.Tanh, table=tables.tanh)
activation(
    torch.sigmoid, torch.Tensor.sigmoid, F.sigmoid, torch.special.expit,
    rule=ar.sigmoid, module=nn.Sigmoid, table=tables.sigmoid,
)  # fmt: skip
activation(torch.exp, torch.Tensor.exp, rule=ar.exp, table=tables.exp)
activation(torch.log, torch.Tensor.log, rule=_smooth(tables.log), table=tables.log)
activation(torch.sin, torch.Tensor.sin, rule=_smooth(tables.sin), table=tables.sin)
activation(torch.cos, torch.Tensor.cos, rule=_smooth(tables.cos), table=tables.cos)
activation(
    F.softplus, rule=ar.softplus, module=nn.Softplus, table=tables.softplus,
    settings=lambda m: {"beta": m.beta, "threshold": m.threshold},
)  # fmt: skip
activation(F.elu, rule=_elu, module=nn.ELU, table=tables.elu, settings=lambda m: {"alpha": m.alpha})
activation(F.selu, torch.selu, rule=_selu, module=nn.SELU, table=_selu_table)
activation(
    F.gelu, rule=_gelu, module=nn.GELU, table=_gelu_table,
    settings=lambda m: {"approximate": m.approximate},
)  # fmt: skip
activation(F.relu, torch.relu, torch.Tensor.relu, rule=_relu, module=nn.ReLU)
activation(
    F.leaky_relu, rule=_leaky_relu, module=nn.LeakyReLU,
    settings=lambda m: {"negative_slope": m.negative_slope},
)  # fmt: skip
activation(  # nn.ReLU6 is a Hardtanh
    F.hardtanh, rule=_hardtanh, module=nn.Hardtanh,
    settings=lambda m: {"min_val": m.min_val, "max_val": m.max_val},
)  # fmt: skip
activation(F.relu6, rule=lambda x, inplace=False: _hardtanh(x, 0.0, 6.0))
activation(F.silu, rule=_compositions.silu, module=nn.SiLU)
activation(F.mish, rule=_compositions.mish, module=nn.Mish)
activation(
    F.softmax, torch.softmax, torch.Tensor.softmax,
    rule=_compositions.softmax, module=nn.Softmax, settings=_dim,
)  # fmt: skip
activation(
    F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax,
    rule=_compositions.log_softmax, module=nn.LogSoftmax, settings=_dim,
)  # fmt: skip

#: The elementwise activation modules (softmax is not elementwise).
ELEMENTWISE_ACTIVATIONS = tuple(m for m in ACTIVATIONS if m not in (nn.Softmax, nn.LogSoftmax))


def activation_table(module: nn.Module, primal: Tensor, order: int) -> list[Tensor] | None:
    """``[g(x), g'(x), g''(x)/2!, ..., g^(n)(x)/n!]`` of an activation module whose rule is the
    built-in one and a plain table (``None`` for compositions such as SiLU, and for a rule a user
    registered instead): what the rule composes a jet with, without a jet."""
    spec = _spec(type(module))
    if not is_builtin(spec, type(module)):
        return None
    if spec.table is not None:
        return spec.table(primal, order, **spec.settings(module))
    if spec.rule in (_relu, _leaky_relu, _hardtanh):
        # One slope: what the rule multiplies the series with (it stores one coefficient).
        unit = Jet(primal, torch.ones_like(primal).reshape(1, 1, *primal.shape), order)
        result = spec.rule(unit, **spec.settings(module))
        zeros = [torch.zeros_like(primal)] * (order - 1)
        return [result.primal, result.series[0, 0].expand_as(primal), *zeros]
    return None


@register_rule(torch.sqrt, torch.Tensor.sqrt)
def _sqrt(x: Jet) -> Jet:
    return ar.power(x, 0.5)


@register_rule(torch.rsqrt, torch.Tensor.rsqrt)
def _rsqrt(x: Jet) -> Jet:
    return ar.power(x, -0.5)


@register_rule(torch.reciprocal, torch.Tensor.reciprocal)
def _reciprocal(x: Jet) -> Jet:
    return ar.reciprocal(x)


@register_rule(torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip)
def _clamp(x: object, min: object = None, max: object = None) -> Jet:  # noqa: A002
    if any(isinstance(b, (Tensor, Jet)) for b in (min, max)) or not ar.is_jet(x):
        # Tensor bounds, or bounds that depend on the input: elementwise max, then min.
        if min is not None:
            x = pairwise_selection(x, min, largest=True)
        return pairwise_selection(x, max, largest=False) if max is not None else x
    # Number bounds: autograd of torch 2.14.1 passes the gradient only strictly inside,
    # min < x < max (slope 0 at a bound, like Hardtanh); tensor bounds are max/min above, which
    # split a tie in half.
    _kinks.report(x, min, max)
    inside = torch.ones_like(x.primal, dtype=torch.bool)
    if min is not None:
        inside &= x.primal > min
    if max is not None:
        inside &= x.primal < max
    return ar.scale(x, inside.to(x.primal.dtype), torch.clamp(x.primal, min, max))


@register_rule(torch.where)
def _where(condition: Tensor, a: object, b: object) -> Jet:
    """Select per entry; the condition depends on the primal only, so it is a constant."""
    if ar.is_jet(condition):
        raise TypeError("torch.where needs a boolean condition, got a differentiable tensor")
    primal = torch.where(condition, ar.primal_of(a), ar.primal_of(b))
    jets = [v for v in (a, b) if ar.is_jet(v)]
    m = max(j.num_stored for j in jets)

    def series(value: object) -> Tensor | float:
        if not ar.is_jet(value):
            return 0.0
        # Lifted to the result's rank first: a 0-d jet's series is (m, D), and broadcast as it
        # is, D would line up against the model's last axis.
        return ar._pad_orders(ar.lifted_series(value, primal.dim()), m)

    selected = torch.where(condition, series(a), series(b))
    return Jet(primal, ar._broadcast_series(selected, primal.shape), jets[0].order)


def pairwise_selection(a: object, b: object, largest: bool) -> Jet:
    """Elementwise max/min: the branch taken at the primal; at a tie, half of each argument,
    which is the slope PyTorch's autograd uses there."""
    _kinks.report_pair(a, b)
    pa, pb = ar.primal_of(a), ar.primal_of(b)
    tie = ar.mul(ar.linear_combination(a, b), 0.5)
    first = torch.gt(pa, pb) if largest else torch.lt(pa, pb)
    return _where(pa == pb, tie, _where(first, a, b))


# torch.max/torch.min (reductions, or elementwise with a second tensor): hope_attr.rules.selections
register_rule(torch.maximum, torch.Tensor.maximum, torch.fmax, torch.Tensor.fmax)(
    lambda a, b: pairwise_selection(a, b, largest=True)
)
register_rule(torch.minimum, torch.Tensor.minimum, torch.fmin, torch.Tensor.fmin)(
    lambda a, b: pairwise_selection(a, b, largest=False)
)


def _comparison(compare: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Comparisons are piecewise constant: evaluate them on the primal. Their truth value (which
    ``torch.where``/``masked_fill`` then select with) flips where ``a = b``: a kink."""

    def rule(a: object, b: object) -> Tensor:
        _kinks.report_pair(a, b)
        return compare(ar.primal_of(a), ar.primal_of(b))

    return rule


for _targets, _compare in [
    ((operator.gt, torch.gt, torch.Tensor.gt), torch.gt),
    ((operator.lt, torch.lt, torch.Tensor.lt), torch.lt),
    ((operator.ge, torch.ge, torch.Tensor.ge), torch.ge),
    ((operator.le, torch.le, torch.Tensor.le), torch.le),
    ((operator.eq, torch.eq, torch.Tensor.eq), torch.eq),
    ((operator.ne, torch.ne, torch.Tensor.ne), torch.ne),
]:
    register_rule(*_targets)(_comparison(_compare))


@register_rule(torch.square, torch.Tensor.square)
def _square(x: Jet) -> Jet:
    return ar.mul(x, x)


@register_rule(torch.abs, torch.Tensor.abs, operator.abs)
def _abs(x: Jet) -> Jet:
    if x.primal.is_complex():
        return _spectral.complex_abs(x)
    _kinks.report(x, 0.0)
    return ar.scale(x, torch.sign(x.primal), torch.abs(x.primal))


@register_rule(torch.clamp_min, torch.Tensor.clamp_min)
def _clamp_min(x: Jet, min: float) -> Jet:  # noqa: A002
    return _clamp(x, min=min)


@register_rule(torch.clamp_max, torch.Tensor.clamp_max)
def _clamp_max(x: Jet, max: float) -> Jet:  # noqa: A002
    return _clamp(x, max=max)
