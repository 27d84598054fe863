"""Normalized Taylor tables ``[g(x), g'(x)/1!, ..., g^(n)(x)/n!]`` of elementwise functions.

Each table is evaluated on the primal only (shape ``(B, *S)``), so its cost does not grow with the
number of directions. Where a function satisfies a simple ODE the table comes from the series form
of that ODE (``tanh' = 1 - tanh^2`` gives ``k y_k = [1 - y^2]_{k-1}``), which stays accurate at
high order where the paper's polynomial-in-``tanh`` coefficients grow like ``k!``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _inverse_factorial(k: int) -> float:
    """``1 / k!`` as a float: ``k!`` itself overflows int64 past ``k = 20``."""
    return math.exp(-math.lgamma(k + 1))


def _square_series(y: list[Tensor], k: int) -> Tensor:
    """Coefficient ``k`` of ``y(t)^2`` from the known coefficients ``y_0..y_k``.

    The sum ``y_0 y_k + y_1 y_{k-1} + ...`` is symmetric: each pair is formed once and doubled,
    half the operations (they run on the primal's shape, where each costs its dispatch).
    """
    middle = y[k // 2] * y[k // 2] if k % 2 == 0 else None
    pairs = [y[i] * y[k - i] for i in range((k + 1) // 2)]
    if not pairs:
        return middle  # type: ignore[return-value]
    doubled = 2 * sum(pairs[1:], pairs[0])
    return doubled if middle is None else doubled + middle


def tanh(x: Tensor, order: int) -> list[Tensor]:
    # y' = 1 - y^2  =>  k y_k = [1 - y^2]_{k-1}
    y = [torch.tanh(x)]
    for k in range(1, order + 1):
        rhs = -_square_series(y, k - 1)
        if k == 1:
            rhs = 1 + rhs
        y.append(rhs / k)
    return y


def sigmoid(x: Tensor, order: int) -> list[Tensor]:
    # y' = y - y^2  =>  k y_k = y_{k-1} - [y^2]_{k-1}
    y = [torch.sigmoid(x)]
    for k in range(1, order + 1):
        y.append((y[k - 1] - _square_series(y, k - 1)) / k)
    return y


def exp(x: Tensor, order: int) -> list[Tensor]:
    value = torch.exp(x)
    return [value] + [value * _inverse_factorial(k) for k in range(1, order + 1)]


def log(x: Tensor, order: int) -> list[Tensor]:
    # log(x + t) = log x + sum_k (-1)^(k+1) t^k / (k x^k)
    inv = 1 / x
    out = [torch.log(x)]
    power = inv
    for k in range(1, order + 1):
        out.append(((-1) ** (k + 1) / k) * power)
        power = power * inv
    return out


def sin(x: Tensor, order: int) -> list[Tensor]:
    s, c = torch.sin(x), torch.cos(x)
    cycle = [s, c, -s, -c]  # sin^(k) = sin(x + k pi / 2)
    return [cycle[k % 4] * _inverse_factorial(k) for k in range(order + 1)]


def cos(x: Tensor, order: int) -> list[Tensor]:
    s, c = torch.sin(x), torch.cos(x)
    cycle = [c, -s, -c, s]
    return [cycle[k % 4] * _inverse_factorial(k) for k in range(order + 1)]


def power(x: Tensor, exponent: float, order: int) -> list[Tensor]:
    """``(x + t)^a = sum_k binom(a, k) x^(a-k) t^k``."""
    if float(exponent).is_integer() and exponent >= 0:
        # Direct powers: no division by x, so x = 0 is fine and terms above the degree are 0.
        a = int(exponent)
        # float(): binomials past 2^63 (a = 400) are beyond torch's integer scalars.
        return [
            float(math.comb(a, k)) * torch.pow(x, a - k) if k <= a else torch.zeros_like(x)
            for k in range(order + 1)
        ]
    out = [torch.pow(x, exponent)]
    inv = 1 / x
    for k in range(1, order + 1):
        out.append(out[-1] * ((exponent - k + 1) / k) * inv)
    return out


def softplus(x: Tensor, order: int, beta: float = 1.0, threshold: float = 20.0) -> list[Tensor]:
    """``softplus' = sigmoid(beta x)``; above ``threshold`` PyTorch is the identity, so is this."""
    z = beta * x
    sig = sigmoid(z, order - 1)
    out = [torch.nn.functional.softplus(x, beta, threshold)]
    linear = z > threshold
    for k in range(1, order + 1):
        smooth = sig[k - 1] * (beta ** (k - 1) / k)
        out.append(torch.where(linear, float(k == 1), smooth))
    return out


def elu(x: Tensor, order: int, alpha: float = 1.0, scale: float = 1.0) -> list[Tensor]:
    """ELU (and SELU through ``scale``): identity for ``x > 0``, ``alpha (e^x - 1)`` otherwise."""
    positive = x > 0
    ex = alpha * scale * torch.exp(torch.where(positive, 0.0, x))
    out = [scale * torch.nn.functional.elu(x, alpha)]
    for k in range(1, order + 1):
        out.append(torch.where(positive, float(k == 1) * scale, ex * _inverse_factorial(k)))
    return out


def gelu(x: Tensor, order: int) -> list[Tensor]:
    """Exact GELU ``x Phi(x)``, with ``Phi^(k) = (-1)^(k-1) He_{k-1}(x) phi(x)`` (Hermite)."""
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    # Phi coefficients: Phi_0 = Phi(x), Phi_k = phi^(k-1)(x) / k!.
    hermite = [torch.ones_like(x), x]  # He_0, He_1
    while len(hermite) < order:
        m = len(hermite) - 1
        hermite.append(x * hermite[m] - m * hermite[m - 1])
    phi = [cdf] + [
        ((-1) ** (k - 1)) * hermite[k - 1] * pdf * _inverse_factorial(k)
        for k in range(1, order + 1)
    ]
    out = [x * cdf]
    for k in range(1, order + 1):
        out.append(x * phi[k] + phi[k - 1])
    return out


def tan(x: Tensor, order: int) -> list[Tensor]:
    # y' = 1 + y^2  =>  k y_k = [1 + y^2]_{k-1}
    y = [torch.tan(x)]
    for k in range(1, order + 1):
        rhs = _square_series(y, k - 1)
        if k == 1:
            rhs = 1 + rhs
        y.append(rhs / k)
    return y


def sinh(x: Tensor, order: int) -> list[Tensor]:
    s, c = torch.sinh(x), torch.cosh(x)
    return [(s if k % 2 == 0 else c) * _inverse_factorial(k) for k in range(order + 1)]


def cosh(x: Tensor, order: int) -> list[Tensor]:
    s, c = torch.sinh(x), torch.cosh(x)
    return [(c if k % 2 == 0 else s) * _inverse_factorial(k) for k in range(order + 1)]


# Where sinc's table comes from its Maclaurin series: |pi x| < 4. Closer to 0 the quotient's
# Leibniz sum cancels (order 8 at x = 0.4 lost 5 digits); out to 4 the alternating Maclaurin
# terms stay below e^4 times the result, and 30 of them reach 4^60 / 61!, about 1e-48.
_SINC_NEAR = 4.0
_SINC_TERMS = 30


def sinc(x: Tensor, order: int) -> list[Tensor]:
    """``sin(pi x) / (pi x)`` (1 at 0), as PyTorch's ``torch.sinc``.

    Near 0 the quotient's series divides by ``pi x``, which loses every digit as ``x -> 0``;
    there the table comes from the Maclaurin series ``sum_j (-1)^j (pi x)^(2j) / (2j + 1)!``
    instead, differentiated term by term: coefficient ``k`` at ``x`` is
    ``sum_j a_j binom(2j, k) x^(2j - k)``.
    """
    near = (math.pi * x).abs() < _SINC_NEAR
    z = torch.where(near, 1.0, math.pi * x)  # a safe divisor where the Maclaurin series serves
    # sin(z) / z at z = pi x: Leibniz on sin(z) * (1/z), in the variable x (dz = pi dx).
    sin_table = [t * math.pi**k for k, t in enumerate(sin(z, order))]
    inv = power(z, -1.0, order)
    inv_table = [t * math.pi**k for k, t in enumerate(inv)]
    quotient = [
        sum(sin_table[i] * inv_table[k - i] for i in range(k + 1)) for k in range(order + 1)
    ]
    near_x = torch.where(near, x, 0.0)
    series = []
    for k in range(order + 1):
        total = torch.zeros_like(x)
        for j in range((k + 1) // 2, _SINC_TERMS + (k + 1) // 2):
            a = (-1) ** j * math.pi ** (2 * j) * _inverse_factorial(2 * j + 1)
            total = total + a * math.comb(2 * j, k) * near_x ** (2 * j - k)
        series.append(total)
    table = [torch.where(near, s, q) for s, q in zip(series, quotient, strict=True)]
    table[0] = torch.sinc(x)
    return table
