"""Taylor rules of more elementwise functions: trigonometric and hyperbolic functions and their
inverses, ``erfc``, logarithms and powers of other bases, ``atan2``, ``logsigmoid``, ``sinc``,
``nan_to_num``, ``lerp``, ``glu``, and the piecewise-linear ``prelu``, ``rrelu``, ``threshold``,
``hardshrink``, ``softshrink``.

Each is a table (``tan`` from the ODE it solves, like ``tanh``), an identity over existing rules
(``log2 = log / ln 2``, ``logsigmoid(x) = -softplus(-x)``), or the branch taken at the primal.
An inverse function comes from its derivative (``asin' = (1 - x^2)^(-1/2)``) through
:func:`hope_attr.rules.compositions.antiderivative`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine import registry as _registry
from hope_attr.engine import taylor_tables as tables
from hope_attr.engine.jet import Jet
from hope_attr.engine.memo import cached
from hope_attr.engine.registry import TrainingModeError, register_rule
from hope_attr.rules.checks import refusal
from hope_attr.rules.compositions import antiderivative
from hope_attr.rules.elementwise import ELEMENTWISE_FUNCTIONS


def _elementwise(*targets: object) -> Callable[[Callable[..., Jet]], Callable[..., Jet]]:
    """Register an elementwise rule (also for the paper's rule, which reads the list)."""

    def decorator(rule: Callable[..., Jet]) -> Callable[..., Jet]:
        register_rule(*targets)(rule)
        ELEMENTWISE_FUNCTIONS.update(targets)
        return rule

    return decorator


def _with_primal(primal: Tensor, series_of: Jet) -> Jet:
    """The series of one identity with the primal PyTorch computes (``log2`` rounds better
    than ``log / ln 2``; the derivatives are the identity's)."""
    return Jet(primal, series_of.series, series_of.order)


@_elementwise(torch.tan, torch.Tensor.tan)
def _tan(x: Jet) -> Jet:
    if x.num_stored > 1:  # tan' = 1 + tan^2: the O(n^2) series of the ODE
        value = cached(torch.tan, x.primal)
        return ar.riccati(x, value, 1 + value * value, linear=0.0, quadratic=1.0)
    return ar.elementwise(x, cached(tables.tan, x.primal, x.order))


@_elementwise(torch.sinh, torch.Tensor.sinh)
def _sinh(x: Jet) -> Jet:
    return ar.elementwise(x, cached(tables.sinh, x.primal, x.order))


@_elementwise(torch.cosh, torch.Tensor.cosh)
def _cosh(x: Jet) -> Jet:
    return ar.elementwise(x, cached(tables.cosh, x.primal, x.order))


# Inverse functions from their derivatives (each a composition the rules already expand).
_INVERSES: dict[tuple[object, ...], tuple[Callable[[Tensor], Tensor], Callable[[Jet], Jet]]] = {
    (torch.asin, torch.Tensor.asin, torch.arcsin): (torch.asin, lambda u: (1 - u * u) ** -0.5),
    (torch.acos, torch.Tensor.acos, torch.arccos): (torch.acos, lambda u: -((1 - u * u) ** -0.5)),
    (torch.asinh, torch.Tensor.asinh, torch.arcsinh): (torch.asinh, lambda u: (u * u + 1) ** -0.5),
    (torch.acosh, torch.Tensor.acosh, torch.arccosh): (torch.acosh, lambda u: (u * u - 1) ** -0.5),
    (torch.atanh, torch.Tensor.atanh, torch.arctanh): (torch.atanh, lambda u: 1 / (1 - u * u)),
}
for _targets, (_function, _derivative) in _INVERSES.items():
    _elementwise(*_targets)(
        lambda x, f=_function, d=_derivative: antiderivative(x, cached(f, x.primal), d)
    )


@_elementwise(torch.erfc, torch.Tensor.erfc, torch.special.erfc)
def _erfc(x: Jet) -> Jet:
    return _with_primal(torch.erfc(x.primal), -torch.erf(x))


def _scaled_log(function: Callable[[Tensor], Tensor], base: float) -> Callable[[Jet], Jet]:
    return lambda x: _with_primal(function(x.primal), ar.log(x) * (1 / math.log(base)))


_elementwise(torch.log2, torch.Tensor.log2)(_scaled_log(torch.log2, 2.0))
_elementwise(torch.log10, torch.Tensor.log10)(_scaled_log(torch.log10, 10.0))


@_elementwise(torch.exp2, torch.Tensor.exp2, torch.special.exp2)
def _exp2(x: Jet) -> Jet:
    return _with_primal(torch.exp2(x.primal), ar.exp(x * math.log(2.0)))


@_elementwise(F.logsigmoid)
def _logsigmoid(x: Jet) -> Jet:
    # logsigmoid(x) = -softplus(-x), without softplus's linear cut-off (torch's is exact).
    minus = -x
    softplus = ar.elementwise(minus, cached(tables.softplus, minus.primal, x.order, 1.0, math.inf))
    return _with_primal(F.logsigmoid(x.primal), -softplus)


@_elementwise(torch.sinc, torch.Tensor.sinc, torch.special.sinc)
def _sinc(x: Jet) -> Jet:
    return ar.elementwise(x, cached(tables.sinc, x.primal, x.order))


@register_rule(torch.atan2, torch.Tensor.atan2, torch.arctan2)
def _atan2(y: object, x: object) -> Jet:
    """``atan2(y, x)`` differs from ``atan(y / x)`` and from ``-atan(x / y)`` by constants that
    change only where those quotients are singular: each one's series serves on the half of the
    plane where its divisor is the larger argument."""
    py, px = ar.primal_of(y), ar.primal_of(x)
    by_x = py.abs() <= px.abs()
    turn = torch.atan(torch.where(by_x, y, x) / torch.where(by_x, x, y))
    return _with_primal(torch.atan2(py, px), torch.where(by_x, turn, -turn))


@register_rule(torch.nan_to_num, torch.Tensor.nan_to_num)
def _nan_to_num(
    x: Jet, nan: float = 0.0, posinf: float | None = None, neginf: float | None = None
) -> Jet:
    # A replaced entry is a constant (series 0, also where the series itself is NaN: a product
    # with a 0/1 mask would keep NaN * 0 = NaN); the others pass unchanged.
    primal = torch.nan_to_num(x.primal, nan, posinf, neginf)
    return torch.where(torch.isfinite(x.primal), x, primal)


@register_rule(torch.lerp, torch.Tensor.lerp)
def _lerp(start: object, end: object, weight: object) -> Jet:
    return start + weight * (end - start)


@register_rule(F.glu)
def _glu(x: Jet, dim: int = -1) -> Jet:
    first, second = torch.chunk(x, 2, dim)
    return first * torch.sigmoid(second)


# --------------------------------------------------------------------------- piecewise linear
@_elementwise(F.prelu, torch.prelu)
def _prelu(x: object, weight: object) -> Jet:
    """``x`` where positive, ``weight * x`` elsewhere; ``weight`` runs along the channels."""
    _kinks.report(x, 0.0)
    shape = [1] * ar.primal_of(x).dim()
    if weight.numel() > 1 and len(shape) >= 2:
        shape[1] = weight.numel()
    channels = weight.reshape(shape) if shape else weight.reshape(())
    if ar.is_jet(weight) or not ar.is_jet(x):  # slopes that depend on the input
        return torch.where(ar.primal_of(x) > 0, x, channels * x)
    slope = torch.where(x.primal > 0, 1.0, channels)
    return ar.scale(x, slope.to(x.primal.dtype), F.prelu(x.primal, weight))


@_elementwise(F.rrelu, torch.rrelu)
def _rrelu(
    x: Jet, lower: float = 1 / 8, upper: float = 1 / 3, training: bool = False,
    inplace: bool = False,
) -> Jet:  # fmt: skip
    if training:
        raise TrainingModeError(
            f"rrelu {_registry.engine().where()} is called with training=True (a random "
            "slope); call model.eval() or pass training=False."
        )
    return F.leaky_relu(x, (lower + upper) / 2)


@_elementwise(F.threshold, torch.threshold)
def _threshold(x: Jet, threshold: float, value: float, inplace: bool = False) -> Jet:
    _kinks.report(x, threshold)
    above = x.primal > threshold
    return ar.scale(x, above.to(x.primal.dtype), F.threshold(x.primal, threshold, value))


@_elementwise(F.hardshrink, torch.Tensor.hardshrink)
def _hardshrink(x: Jet, lambd: float = 0.5) -> Jet:
    _kinks.report(x, -lambd, lambd)
    kept = x.primal.abs() > lambd
    return ar.scale(x, kept.to(x.primal.dtype), F.hardshrink(x.primal, lambd))


@_elementwise(F.softshrink)
def _softshrink(x: Jet, lambd: float = 0.5) -> Jet:
    _kinks.report(x, -lambd, lambd)
    moved = x.primal.abs() > lambd
    return ar.scale(x, moved.to(x.primal.dtype), F.softshrink(x.primal, lambd))


# --------------------------------------------------------------------------- refused
# Operations whose fallback would be wrong or would crash inside PyTorch: refused, with what to
# call instead. (torch.binary_cross_entropy_with_logits's decomposition defaults to a mean where
# the function itself does not reduce: its result would have the wrong shape.)
_REFUSED: dict[object, tuple[str, str]] = {
    torch.binary_cross_entropy_with_logits: (
        "its decomposition assumes another reduction than the function's default",
        "Call torch.nn.functional.binary_cross_entropy_with_logits with an explicit reduction.",
    ),
    torch.margin_ranking_loss: (
        "its decomposition assumes another reduction than the function's default",
        "Call torch.nn.functional.margin_ranking_loss with an explicit reduction.",
    ),
    torch.hinge_embedding_loss: (
        "its decomposition assumes another reduction than the function's default",
        "Call torch.nn.functional.hinge_embedding_loss with an explicit reduction.",
    ),
    torch.svd_lowrank: ("singular value decompositions have no Taylor rule",
                        "Keep the decomposition out of the expanded function."),
    torch.pca_lowrank: ("singular value decompositions have no Taylor rule",
                        "Keep the decomposition out of the expanded function."),
}  # fmt: skip


def _refused(target: object, reason: str, fix: str) -> Callable[..., Jet]:
    def rule(*args: object, **kwargs: object) -> Jet:
        raise refusal(f"torch.{target.__name__}", reason, fix)

    return rule


for _target, (_reason, _fix) in _REFUSED.items():
    register_rule(_target)(_refused(_target, _reason, _fix))

# Dynamically quantized layers (torch.ao.quantization.quantize_dynamic): integer weights inside
# fused kernels, a step function of the weights that only approximates the float layer.
_QUANTIZED = (
    "linear_dynamic", "linear_dynamic_fp16", "linear_relu_dynamic", "linear_relu_dynamic_fp16",
    "quantized_lstm_cell_dynamic", "quantized_gru_cell_dynamic",
    "quantized_rnn_tanh_cell_dynamic", "quantized_rnn_relu_cell_dynamic",
)  # fmt: skip
for _name in _QUANTIZED:
    _packet = getattr(torch.ops.quantized, _name, None)
    if _packet is not None:
        register_rule(_packet)(lambda *args, _name=_name, **kwargs: _refuse_quantized(_name))
for _target in (torch.quantized_lstm, torch.quantized_gru, torch.quantized_lstm_cell,
                torch.quantized_gru_cell, torch.quantized_rnn_tanh_cell,
                torch.quantized_rnn_relu_cell):  # fmt: skip
    register_rule(_target)(lambda *args, _t=_target, **kwargs: _refuse_quantized(_t.__name__))


def _refuse_quantized(name: str) -> Jet:
    raise refusal(
        f"a dynamically quantized layer (torch.ops.quantized.{name})",
        "its weights are 8-bit integers inside a fused kernel: the layer is a step function "
        "of them, which only approximates the float layer it was made from",
        "Expand the float model (before torch.ao.quantization.quantize_dynamic); its "
        "derivatives are the ones the quantized model approximates.",
    )
