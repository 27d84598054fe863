"""Elementwise functions, norms and distances, normalizations, Fourier transforms, complex
values and recurrent cells (issue 29), each exact against an independent reference: nested
``torch.func.jvp`` in float64 (tests/oracle.py), with the function composed from elementary ops
where PyTorch's own forward-mode formula is missing or loses digits (``glu``, ``cdist``,
``instance_norm``), or a 50-digit ``mpmath`` Taylor series (``sinc``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hope_attr
from tests.oracle import relative_error, unmixed_reference

ORDER = 4
TOLERANCE = 1e-10


def _weights(*shape: int, seed: int = 4) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


W = _weights(4, 6)
C6 = _weights(6, seed=9)
FILTER = torch.view_as_complex(_weights(4, 2, seed=3))  # constants made outside the references


def h(t: torch.Tensor) -> torch.Tensor:
    """``(B, 6)`` in (-1, 1)."""
    return torch.tanh(t @ W)


def _instance_norm_composed(t: torch.Tensor) -> torch.Tensor:
    z = h(t).reshape(-1, 2, 3)
    centered = z - z.mean(-1, keepdim=True)
    y = centered * torch.rsqrt((centered * centered).mean(-1, keepdim=True) + 1e-5)
    return y * torch.tensor([1.5, 0.5], dtype=t.dtype)[:, None] + 0.1


def _rotary(t: torch.Tensor) -> torch.Tensor:
    """Meta-style Llama rotary embedding: pairs of features as complex numbers, rotated."""
    angles = torch.outer(torch.arange(2, dtype=t.dtype), torch.tensor([1.0, 0.1], dtype=t.dtype))
    freqs = torch.polar(torch.ones_like(angles), angles)  # (2 positions, 2 pairs)
    q = h(t)[:, :4].reshape(-1, 1, 2, 2).expand(-1, 2, 2, 2) * 1.0  # (B, positions, pairs, 2)
    rotated = torch.view_as_complex(q.contiguous()) * freqs
    return torch.view_as_real(rotated).flatten(1)


def _global_filter(t: torch.Tensor) -> torch.Tensor:
    """GFNet: rfft, a complex weight, irfft."""
    spectrum = torch.fft.rfft(h(t), dim=1, norm="ortho")
    return torch.fft.irfft(spectrum * FILTER, n=6, dim=1, norm="ortho")


torch.manual_seed(0)
_PRELU_C = nn.PReLU(2, init=0.2).double()
_LSTM = nn.LSTMCell(6, 3).double()
_GRU = nn.GRUCell(6, 3).double()
_RNN_TANH = nn.RNNCell(6, 3).double()
_RNN_RELU = nn.RNNCell(6, 3, nonlinearity="relu").double()
_INSTANCE = nn.InstanceNorm1d(2, affine=True).double()
with torch.no_grad():
    _INSTANCE.weight.copy_(torch.tensor([1.5, 0.5]))
    _INSTANCE.bias.fill_(0.1)
_TRACKED = nn.InstanceNorm1d(2, track_running_stats=True).double().eval()
with torch.no_grad():
    _TRACKED.running_mean.copy_(torch.tensor([0.2, -0.1]))
    _TRACKED.running_var.copy_(torch.tensor([0.5, 2.0]))


# name -> (function, reference or None for the function itself)
CASES = {
    "tan": (lambda t: torch.tan(h(t)), None),
    "tan of a curved argument": (lambda t: torch.tan(torch.sin(t @ W) * 0.7), None),
    "sinh, cosh": (lambda t: torch.sinh(2 * h(t)) * torch.cosh(h(t)), None),
    "asin, acos": (lambda t: torch.asin(0.9 * h(t)) + torch.acos(0.5 * h(t)) ** 2, None),
    "asinh, acosh, atanh": (
        lambda t: torch.asinh(3 * h(t)) + torch.acosh(h(t) + 2) * torch.atanh(0.9 * h(t)),
        None,
    ),
    "erfc": (lambda t: torch.erfc(2 * h(t)), None),
    "log2, log10, exp2": (
        lambda t: torch.log2(h(t) + 1.5) + torch.log10(h(t) + 2) * torch.exp2(h(t)),
        None,
    ),
    "atan2 jet, jet (all four quadrants)": (lambda t: torch.atan2(h(t), torch.sin(t @ W)), None),
    "atan2 jet, constant and constant, jet": (
        lambda t: torch.atan2(h(t), C6) + torch.atan2(C6, h(t) + 0.1),
        None,
    ),
    "logsigmoid, also far below 0": (lambda t: F.logsigmoid(h(t) * torch.tensor([30.0])), None),
    "nan_to_num of an infinite entry": (
        lambda t: torch.nan_to_num(
            h(t) + torch.tensor([math.inf, 0, 0, 0, 0, 0], dtype=t.dtype), posinf=3.0
        ),
        None,
    ),
    "remainder and fmod, constant and jet divisors": (
        lambda t: (
            torch.remainder(5 * h(t), 1.3)
            + torch.fmod(5 * h(t), -0.7)
            + torch.remainder(5 * h(t), torch.sin(t @ W) + 2)
        ),
        None,
    ),  # fmt: skip
    "lerp, scalar and jet weights": (
        lambda t: torch.lerp(h(t), h(t) ** 2, 0.3) + torch.lerp(C6, h(t), torch.sigmoid(h(t))),
        None,
    ),
    "glu": (lambda t: F.glu(h(t), -1), lambda t: h(t)[:, :3] * torch.sigmoid(h(t)[:, 3:])),
    "PReLU, one slope per channel": (
        lambda t: _PRELU_C(h(t).reshape(-1, 2, 3)),
        lambda t: torch.where(h(t) > 0, h(t), _PRELU_C.weight[0] * h(t)).reshape(-1, 2, 3),
    ),
    "rrelu (eval)": (lambda t: F.rrelu(h(t)), lambda t: F.leaky_relu(h(t), (1 / 8 + 1 / 3) / 2)),
    "threshold, hardshrink, softshrink": (
        lambda t: F.threshold(h(t), 0.1, 2.0) + F.hardshrink(h(t), 0.3) + F.softshrink(h(t), 0.2),
        None,
    ),
    "linalg.norm: vector, ord 3 and inf": (
        lambda t: (
            torch.linalg.norm(h(t), dim=1)
            + torch.linalg.norm(h(t), 3, 1)
            + torch.linalg.norm(h(t), math.inf, 1)
        ),
        None,
    ),  # fmt: skip
    "linalg.norm: matrix, Frobenius, 1 and inf": (
        lambda t: (
            torch.linalg.norm(h(t).reshape(-1, 2, 3), dim=(1, 2))
            + torch.linalg.matrix_norm(h(t).reshape(-1, 2, 3), 1)
            + torch.linalg.norm(h(t).reshape(-1, 2, 3), -math.inf, (1, 2))
        ),
        None,
    ),  # fmt: skip
    "cdist p = 2 and 1": (
        lambda t: (
            torch.cdist(h(t).reshape(-1, 3, 2), C6.reshape(1, 3, 2))
            + torch.cdist(h(t).reshape(-1, 3, 2), h(t).reshape(-1, 3, 2) ** 2, p=1.0)
        ),
        lambda t: (
            torch.linalg.vector_norm(h(t).reshape(-1, 3, 1, 2) - C6.reshape(1, 1, 3, 2), dim=-1)
            + (h(t).reshape(-1, 3, 1, 2) - h(t).reshape(-1, 1, 3, 2) ** 2).abs().sum(-1)
        ),
    ),  # fmt: skip
    "cosine_similarity": (
        lambda t: (
            F.cosine_similarity(h(t).reshape(-1, 2, 3), C6.reshape(2, 3), dim=2)
            * F.cosine_similarity(h(t), h(t) ** 2)
        ),
        None,
    ),  # fmt: skip
    "InstanceNorm1d (affine)": (
        lambda t: _INSTANCE(h(t).reshape(-1, 2, 3)),
        _instance_norm_composed,
    ),  # fmt: skip
    "InstanceNorm1d with tracked statistics (eval)": (
        lambda t: _TRACKED(h(t).reshape(-1, 2, 3)),
        lambda t: (
            (h(t).reshape(-1, 2, 3) - torch.tensor([[0.2], [-0.1]], dtype=t.dtype))
            / torch.sqrt(torch.tensor([[0.5], [2.0]], dtype=t.dtype) + 1e-5)
        ),
    ),  # fmt: skip
    "rms_norm": (lambda t: F.rms_norm(h(t), (6,), C6, 1e-6), None),
    "fft, rfft, fft2, fftshift": (
        lambda t: (
            torch.fft.fft(h(t), dim=1).abs()
            + torch.fft.rfft(h(t)).imag.sum(1, True)
            + torch.fft.fft2(h(t).reshape(-1, 2, 3)).real.flatten(1)
            + torch.fft.fftshift(h(t), dim=1)
        ),
        None,
    ),  # fmt: skip
    "fftn over given axes, ifft": (
        lambda t: torch.fft.ifft(
            torch.fft.fftn(h(t).reshape(-1, 2, 3), dim=(1, 2)), dim=2
        ).real.flatten(1),
        None,
    ),  # fmt: skip
    "global filter (rfft, complex weight, irfft)": (_global_filter, None),
    "rotary embedding through view_as_complex": (_rotary, None),
    "torch.complex, conj, angle-free abs": (
        lambda t: torch.abs(torch.complex(h(t), h(t) ** 2).conj() * (1 + 2j)),
        None,
    ),
    "LSTMCell without state": (lambda t: torch.cat(_LSTM(h(t)), 1), None),
    "LSTMCell with state": (
        lambda t: _LSTM(h(t), (h(t)[:, :3], torch.sin(h(t)[:, 3:])))[1],
        None,
    ),  # fmt: skip
    "GRUCell with state": (lambda t: _GRU(h(t), torch.cos(h(t)[:, :3])), None),
    "RNNCell tanh and relu": (lambda t: _RNN_TANH(h(t)) + _RNN_RELU(h(t), h(t)[:, 3:]), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_function_matches_its_reference(name: str) -> None:
    f, reference = CASES[name]
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    actual = hope_attr.unmixed_derivatives(f, x, ORDER)
    expected = unmixed_reference(reference or f, x, ORDER)
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("point", [0.0, 1e-9, -0.3, 0.4, 1.27, 2.5])
def test_sinc_against_a_50_digit_taylor_series(point: float) -> None:
    """At and near 0 the quotient sin(pi x)/(pi x) loses digits (order 8 at 0.4: 5 of them),
    and so does nested jvp of torch.sinc; mpmath's series is the reference."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    order = 8
    x = torch.full((1, 1), point, dtype=torch.float64)
    actual = hope_attr.unmixed_derivatives(torch.sinc, x, order)[:, 0, 0, 0]

    def sinc(v):  # noqa: ANN001, ANN202
        return mpmath.sin(mpmath.pi * v) / (mpmath.pi * v) if v != 0 else mpmath.mpf(1)

    if point == 0.0:  # sinc = sum_j (-1)^j (pi x)^(2j) / (2j + 1)!
        expected = [
            (-1) ** (k // 2) * math.pi**k / (k + 1) if k % 2 == 0 else 0.0
            for k in range(1, order + 1)
        ]
    else:
        series = mpmath.taylor(sinc, mpmath.mpf(point), order)
        expected = [float(series[k] * mpmath.factorial(k)) for k in range(1, order + 1)]
    expected = torch.tensor(expected, dtype=torch.float64)
    scale = expected.abs().max()
    assert ((actual - expected).abs() / scale).max() < 1e-13


def test_glu_and_instance_norm_references_are_pytorchs_functions() -> None:
    """The composed references above compute what F.glu and nn.InstanceNorm1d compute."""
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(F.glu(h(x), -1), CASES["glu"][1](x))
    torch.testing.assert_close(_INSTANCE(h(x).reshape(-1, 2, 3)), _instance_norm_composed(x))
    torch.testing.assert_close(CASES["cdist p = 2 and 1"][0](x), CASES["cdist p = 2 and 1"][1](x))


def test_the_norm_kink_at_zero_takes_slope_zero() -> None:
    """cdist of a point with itself is 0 on the diagonal: the cone's derivative there is taken
    as PyTorch's 0 (like |x|), not NaN."""
    f = lambda t: torch.cdist(h(t).reshape(-1, 3, 2), h(t).reshape(-1, 3, 2)).flatten(1)  # noqa: E731
    d = hope_attr.unmixed_derivatives(f, torch.randn(2, 4, dtype=torch.float64), 2)
    assert torch.isfinite(d).all()
    assert (d[:, :, 0] == 0).all()  # entry (0, 0): the distance of a row to itself


def test_spectral_and_nuclear_norms_are_refused_with_the_fix() -> None:
    with pytest.raises(hope_attr.UnsupportedOperationError, match="ord='fro'") as info:
        hope_attr.unmixed_derivatives(
            lambda t: torch.linalg.matrix_norm(h(t).reshape(-1, 2, 3), "nuc"), _x(), 1
        )
    assert "singular values" in str(info.value) and "test_ops_functions.py" in str(info.value)


def test_fftn_over_every_axis_warns_that_it_mixes_the_batch() -> None:
    from hope_attr.rules.checks import BatchCouplingWarning

    with pytest.warns(BatchCouplingWarning):
        hope_attr.unmixed_derivatives(lambda t: torch.fft.fftn(h(t)).real, _x(), 1)


def _x() -> torch.Tensor:
    return torch.randn(2, 4, dtype=torch.float64)


class _Refuses(nn.Module):
    def __init__(self, op) -> None:
        super().__init__()
        self.op = op

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.op(h(t))


def _write_into_zeros(y: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(2, 6, dtype=torch.float64)
    out[:, :2] = y[:, :2]
    return out


def _transpose_in_place(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(-1, 2, 3).clone().transpose_(1, 2).flatten(1)


REFUSALS = {
    "nuclear norm": (lambda y: torch.linalg.matrix_norm(y.reshape(-1, 2, 3), "nuc"), "ord="),
    "scatter multiply": (
        lambda y: y.scatter(1, torch.tensor([[0], [1]]), y, reduce="multiply"),
        "reduce='add'",
    ),  # fmt: skip
    "einsum of three": (lambda y: torch.einsum("bi,bi,bi->b", y, y, y), "two einsums"),
    "conv with an input-dependent weight": (
        lambda y: F.conv1d(y.reshape(-1, 1, 6), y[:1, :3].reshape(1, 1, 3)),
        "matmul/einsum",
    ),
    "max with out": (
        lambda y: torch.max(y, 1, out=(torch.empty(2).double(), torch.empty(2).long())).values,
        "returned value",
    ),
    "writing into a plain tensor": (_write_into_zeros, "out = h \\* 0"),
    "in-place transpose": (_transpose_in_place, "out of place"),
    "torch.binary_cross_entropy_with_logits": (
        lambda y: torch.binary_cross_entropy_with_logits(y, torch.ones(2, 6).double()),
        "torch.nn.functional.binary_cross_entropy_with_logits",
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_every_refusal_names_the_op_module_line_and_fix(name: str) -> None:
    op, fix = REFUSALS[name]
    model = nn.Sequential(nn.Identity(), _Refuses(op))
    with pytest.raises(hope_attr.UnsupportedOperationError, match=fix) as info:
        hope_attr.unmixed_derivatives(model, torch.randn(2, 4, dtype=torch.float64), 1)
    message = str(info.value)
    assert "module '1' (_Refuses)" in message, message
    assert f'File "{__file__}"' in message, message  # the user's line that called the op


def test_a_dynamically_quantized_layer_is_refused_with_the_fix() -> None:
    quantize = torch.ao.quantization.quantize_dynamic
    with pytest.warns(Warning):  # torch's deprecation notice of its quantization API
        model = quantize(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), {nn.Linear}, torch.qint8)
    with pytest.raises(hope_attr.UnsupportedOperationError, match="float model") as info:
        hope_attr.unmixed_derivatives(model, torch.randn(2, 4), 1)
    assert "module '0' (Linear)" in str(info.value) and "quantize_dynamic" in str(info.value)
