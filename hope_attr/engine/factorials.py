"""From normalized Taylor coefficients ``f^(a) / a!`` to derivatives ``f^(a)``, without ever
forming a factorial in the output dtype.

``35!`` overflows float32 (and ``171!`` float64, where Python's ``float(math.factorial(171))``
raises ``OverflowError``), while the derivative it multiplies often fits: the 36th derivative of
``tanh`` at 0.3 is ``1.37e34``, and a Linear model's is 0 (``0 * inf`` would be NaN). So each
factorial is split exactly into a float64 mantissa and a power of two, the coefficient is scaled
in float64 by the mantissa and then by powers of two (exact unless the result leaves float64's
range), and only the finished derivative is rounded to the output dtype. A derivative that is
too large for that dtype becomes ``inf`` with a :class:`DerivativeRangeWarning`: it is a true
overflow (the coefficient itself is finite), and the other derivatives stay usable.

The engine's normalized coefficients have the opposite limit: at order ``k`` a derivative below
``k! * finfo.tiny`` has a coefficient below ``finfo.tiny``, which has lost precision (subnormal) or
underflowed to 0 (float32 from order 34, where ``34! * tiny = 3.5``; float64 from order 171). A
0 there cannot be told apart from a true 0 (a Linear model's), so both get the same warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from hope_attr.engine.stacklevel import user_stacklevel

# Powers of two applied per multiplication: 2^1000 and its products stay exact in float64.
_STEP = 1000


class DerivativeRangeWarning(RuntimeWarning):
    """A derivative is outside the output dtype's range: too large (returned as ``inf``), or so
    small that its normalized coefficient lost precision or underflowed to 0."""


def max_order(dtype: torch.dtype) -> int:
    """The highest order whose normalized coefficients ``f^(k)/k!`` can be normal numbers of
    ``dtype`` for some derivative the dtype can hold: past it, ``k! > finfo.max / finfo.tiny``
    and every coefficient is subnormal or 0, so no result of that order would mean anything
    (float32: 56, float64: 300). Orders below it can still underflow for small derivatives;
    :func:`times_integers` warns of those.

    Example:
        >>> import torch
        >>> max_order(torch.float32), max_order(torch.float64)
        (56, 300)
    """
    info = torch.finfo(dtype)
    limit = math.log(info.max) - math.log(info.tiny)
    order = 1
    while math.lgamma(order + 2) <= limit:
        order += 1
    return order


def check_order(order: object, dtype: torch.dtype | None = None) -> None:
    """Refuse an order that is not an int >= 1, or (given the dtype) above :func:`max_order`."""
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an int >= 1, got {order!r}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}: order 1 is the gradient")
    if dtype is None or not dtype.is_floating_point:
        return
    highest = max_order(dtype)
    if order > highest:
        raise ValueError(
            f"order {order} is beyond what {dtype} can represent: from order {highest + 1} on, "
            f"every normalized Taylor coefficient f^(k)/k! is below {dtype}'s smallest normal "
            f"number for any derivative it can hold (k! > {torch.finfo(dtype).max:.3g} / "
            f"{torch.finfo(dtype).tiny:.3g}). Use order <= {highest}"
            + ("" if dtype == torch.float64 else ", or float64 inputs for up to order 300")
            + "."
        )


def split(value: int) -> tuple[float, int]:
    """``value = mantissa * 2**exponent`` with ``mantissa`` a float64 in ``[0.5, 1)``, for any
    positive int (``math.frexp`` would first convert it to a float, which overflows)."""
    exponent = value.bit_length()
    shift = max(0, exponent - 64)  # keep 64 bits: float() rounds them to 53 once
    return float(value >> shift) / 2.0 ** (exponent - shift), exponent


def times_integers(
    coefficients: Tensor, scales: Sequence[int], what: str = "derivatives"
) -> Tensor:
    """``coefficients * scales`` along the last axis, in float64, rounded once to the input dtype.

    Args:
        coefficients: ``(..., S)`` normalized coefficients, any floating dtype.
        scales: ``S`` positive Python ints (factorials), exact.
        what: how the warning names the values (e.g. "derivatives of order 40").

    Returns:
        ``(..., S)`` in the dtype of ``coefficients``; ``inf`` only where the exact product
        exceeds that dtype's range. A :class:`DerivativeRangeWarning` says so, and also when a
        coefficient is subnormal, or 0 where ``scale * finfo.tiny > 1`` (possibly underflowed).

    Example:
        >>> import math, torch
        >>> c = torch.tensor([1e-8, -2e-8])  # float32; 36! = 3.7e41 does not fit in it
        >>> times_integers(c, [math.factorial(36)] * 2)
        tensor([ 3.7199e+33, -7.4399e+33])
    """
    parts = [split(s) for s in scales]
    device = coefficients.device
    info = torch.finfo(coefficients.dtype)
    if all(e < _STEP for _, e in parts):
        # Every scale is a float64 (rounded once, as its mantissa would be): one product.
        floats = torch.tensor([m * 2.0**e for m, e in parts], dtype=torch.float64, device=device)
        out = (coefficients.to(torch.float64) * floats).to(coefficients.dtype)
    else:
        mantissas = torch.tensor([m for m, _ in parts], dtype=torch.float64, device=device)
        exponents = torch.tensor([e for _, e in parts], dtype=torch.float64, device=device)
        result = coefficients.to(torch.float64) * mantissas
        while bool((exponents > 0).any()):
            step = exponents.clamp(max=_STEP)
            result = result * torch.exp2(step)  # exact: a power of two, below 2^1024
            exponents = exponents - step
        out = result.to(coefficients.dtype)
    # A product within range of float64 that the dtype cannot hold (an overflow) is inf in
    # `out` only; checked on the (smaller) coefficients' side only when it can happen at all.
    largest_scale = max(m * 2.0**e if e < 1024 else math.inf for m, e in parts)
    magnitude = coefficients.detach().abs()
    biggest = float(magnitude.max()) if magnitude.numel() else 0.0
    overflow_possible = largest_scale * biggest > info.max
    overflow = torch.isinf(out) & torch.isfinite(coefficients) if overflow_possible else None
    if overflow is not None and bool(overflow.any()):
        warnings.warn(
            f"{int(overflow.sum())} {what} exceed the range of {coefficients.dtype} "
            f"(max {info.max:.3g}) and were returned as inf; compute in float64 if possible, or "
            "use the "
            "normalized Taylor coefficients f^(a)/a! (hope_attr.expand), which stay finite",
            DerivativeRangeWarning,
            stacklevel=user_stacklevel(),
        )
    if coefficients.numel() == 0 or not float(magnitude.min()) < info.tiny:
        return out  # no coefficient is subnormal or 0 (NaN compares False: nothing to say)
    tiny_log2 = math.log2(info.tiny)
    coarse = torch.tensor([math.log2(m) + e + tiny_log2 > 0 for m, e in parts], device=device)
    lost = ((magnitude > 0) & (magnitude < info.tiny)) | ((magnitude == 0) & coarse)
    if bool(lost.any()):
        fix = "a lower order" if coefficients.dtype == torch.float64 else "float64"
        warnings.warn(
            f"{int(lost.sum())} {what} may be inexact: their normalized coefficients f^(a)/a! "
            f"are below {coefficients.dtype}'s smallest normal number {info.tiny:.3g} (subnormal, "
            "or 0 that may be an underflow: at this order a derivative below a! * tiny is not "
            f"representable); compute in {fix}",
            DerivativeRangeWarning,
            stacklevel=user_stacklevel(),
        )
    return out


def factorial_product(exponents: Sequence[int]) -> int:
    """``a! = prod_i a_i!`` for a multi-index ``a``, as an exact int."""
    return math.prod(math.factorial(e) for e in exponents)
