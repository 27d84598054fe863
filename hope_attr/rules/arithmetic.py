"""Taylor rules of arithmetic: sums and differences act on coefficients, products are Cauchy
products, division goes through the reciprocal, powers through their binomial table. Floor
division is a step function (no series), and ``remainder``/``fmod`` are ``a - b q`` with that
step ``q`` a constant.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine import scope as _scope
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import register_rule


@register_rule(operator.add, operator.iadd, torch.add, torch.Tensor.add)
def _add(a: object, b: object, *, alpha: float = 1.0) -> Jet:
    return ar.linear_combination(a, b, alpha)


@register_rule(operator.sub, operator.isub, torch.sub, torch.Tensor.sub, torch.subtract)
def _sub(a: object, b: object, *, alpha: float = 1.0) -> Jet:
    return ar.linear_combination(a, b, -alpha)


@register_rule(torch.Tensor.__rsub__, torch.rsub)
def _rsub(a: object, b: object, *, alpha: float = 1.0) -> Jet:
    return ar.linear_combination(b, a, -alpha)


@register_rule(operator.mul, operator.imul, torch.mul, torch.Tensor.mul, torch.multiply)
def _mul(a: object, b: object) -> Jet:
    return ar.mul(a, b)


@register_rule(
    operator.truediv,
    operator.itruediv,
    torch.div,
    torch.Tensor.div,
    torch.divide,
    torch.true_divide,
)
def _div(a: object, b: object, *, rounding_mode: str | None = None) -> Jet | Tensor:
    if rounding_mode is not None:
        return _rounded_quotient(a, b, rounding_mode)
    return ar.div(a, b)


def _rounded_quotient(a: object, b: object, rounding_mode: str) -> Tensor:
    """``floor(a / b)`` or ``trunc(a / b)``: a step function of its arguments, a constant between
    its jumps (as autograd treats it). It jumps where ``a / b`` crosses an integer: Taylor
    continuation is told where that is (:mod:`hope_attr.engine.kinks`)."""
    if _scope.current().watch is not None:  # the quotient's series only when someone asks
        quotient = ar.div(a, b)
        _kinks.report(quotient, torch.floor(quotient.primal), torch.ceil(quotient.primal))
    return torch.div(ar.primal_of(a), ar.primal_of(b), rounding_mode=rounding_mode)


@register_rule(
    torch.floor_divide, torch.Tensor.floor_divide, operator.floordiv, torch.Tensor.__floordiv__
)
def _floor_divide(a: object, b: object) -> Tensor:
    return _rounded_quotient(a, b, "floor")


@register_rule(torch.Tensor.__rfloordiv__)
def _rfloordiv(a: object, b: object) -> Tensor:
    return _rounded_quotient(b, a, "floor")


def _remainder(rounding_mode: str, plain: Callable[..., Tensor]) -> Callable[..., Jet]:
    """``a - b * q`` with the rounded quotient ``q`` a constant: ``remainder`` (floor) and
    ``fmod`` (trunc). The value is PyTorch's own, which rounds differently from ``a - b q``."""

    def rule(a: object, b: object) -> Jet:
        quotient = _rounded_quotient(a, b, rounding_mode)
        rest = ar.sub(a, ar.mul(b, quotient) if ar.is_jet(b) else b * quotient)
        return rest.with_series(plain(ar.primal_of(a), ar.primal_of(b)), rest.series)

    return rule


register_rule(torch.remainder, torch.Tensor.remainder, operator.mod, torch.Tensor.__mod__)(
    _remainder("floor", torch.remainder)
)
register_rule(torch.Tensor.__rmod__)(lambda a, b: _remainder("floor", torch.remainder)(b, a))
register_rule(torch.fmod, torch.Tensor.fmod)(_remainder("trunc", torch.fmod))


@register_rule(operator.neg, torch.neg, torch.Tensor.neg, torch.negative, torch.Tensor.negative)
def _neg(x: Jet) -> Jet:
    return -x


@register_rule(
    operator.matmul,
    torch.matmul,
    torch.Tensor.matmul,
    torch.bmm,
    torch.Tensor.bmm,
    torch.mm,
    torch.Tensor.mm,
)
def _matmul(a: object, b: object) -> Jet:
    # The series products need matrices in one layout. A vector on the right becomes a column
    # (a constant matrix times a vector's series would read the directions as its rows), one on
    # the left a row when both sides are jets, and the lower-rank side of two jets gets leading
    # unit axes (a (B, L, d) @ (d, e) product).
    if ar.is_jet(b) and b.primal.dim() == 1:
        return torch.squeeze(_matmul(a, torch.unsqueeze(b, -1)), -1)
    if ar.is_jet(a) and ar.is_jet(b):
        if a.primal.dim() == 1:
            return torch.squeeze(_matmul(torch.unsqueeze(a, 0), b), -2)
        while a.primal.dim() < b.primal.dim():
            a = torch.unsqueeze(a, 0)
        while b.primal.dim() < a.primal.dim():
            b = torch.unsqueeze(b, 0)
    return ar.matmul(a, b)


@register_rule(operator.pow, torch.pow, torch.Tensor.pow)
def _pow(base: object, exponent: object) -> Jet:
    if not ar.is_jet(exponent):
        if isinstance(exponent, Tensor):
            if exponent.numel() != 1:
                return ar.exp(ar.mul(ar.log(base), exponent))
            exponent = exponent.item()
        return ar.power(base, float(exponent))
    # c ** x = exp(x log c); x ** y = exp(y log x). A constant base's log in the exponent's
    # dtype: torch.as_tensor(10.0) is float32, whose log is 5e-8 off in a float64 model.
    if ar.is_jet(base):
        log_base = ar.log(base)
    else:
        primal = exponent.primal
        log_base = torch.log(torch.as_tensor(base, dtype=primal.dtype, device=primal.device))
    return ar.exp(ar.mul(exponent, log_base))


# `plain ** jet` reaches torch.Tensor.__pow__ (a Python wrapper around torch.pow), which would
# turn the jet's TypeError into NotImplemented; `plain **= jet` rebinds the name to the result.
register_rule(torch.Tensor.__pow__)(_pow)
register_rule(torch.Tensor.__rpow__)(lambda exponent, base: _pow(base, exponent))


@register_rule(torch.Tensor.__ipow__)
def _ipow(base: object, exponent: object) -> Jet:
    result = _pow(base, exponent)
    return base.assign(result) if ar.is_jet(base) else result
