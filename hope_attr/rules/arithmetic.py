"""Taylor rules of arithmetic: sums and differences act on coefficients, products are Cauchy
products, division goes through the reciprocal, powers through their binomial table.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from hope_attr.engine import arithmetic as ar
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
def _div(a: object, b: object, *, rounding_mode: str | None = None) -> Jet:
    if rounding_mode is not None:
        raise ValueError("rounding division is piecewise constant; it has no Taylor expansion")
    return ar.div(a, b)


@register_rule(operator.neg, torch.neg, torch.Tensor.neg)
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
