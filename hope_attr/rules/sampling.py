"""Taylor rules of ``F.grid_sample`` (spatial transformers, deformable sampling) and
``F.affine_grid``, 2-d and 3-d.

Sampling reads the pixels around each sampling position and weights them by polynomials of the
position's fractional parts: bilinear (trilinear for a 5-d input) ``(1 - fx)(1 - fy) v00 + fx
(1 - fy) v01 + ...``, bicubic the fixed cubic convolution (``A = -0.75``) of the 4 x 4 pixels
around it. Which pixels is piecewise constant, decided at the primal (a kink where a position
crosses a pixel boundary, reported to :mod:`hope_attr.engine.kinks`); the weights are polynomials
in the grid and the values linear in the input, so both may be jets (their products are Cauchy
products). Nearest sampling reads one pixel: the grid then has no derivative. Padding is
PyTorch's: ``border`` clamps a position into the image, ``reflection`` reflects it at the
image's edges (piecewise linear, with slope +-1), on the continuous position for bilinear and
nearest sampling and on each pixel index for bicubic sampling. The values are PyTorch's own.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine.registry import register_rule

# PyTorch's cubic convolution constant (aten/src/ATen/native/UpSample.h).
_A = -0.75


def _unnormalized(g: object, size: int, align_corners: bool) -> object:
    """Grid coordinates in [-1, 1] to pixel coordinates (PyTorch's unnormalization)."""
    return (g + 1) * ((size - 1) / 2) if align_corners else ((g + 1) * size - 1) / 2


def _padded(pixel: object, size: int, align_corners: bool, padding_mode: str) -> object:
    """A pixel coordinate moved into the image as ``padding_mode`` says (``zeros``: as is)."""
    if padding_mode == "reflection":
        pixel = _reflected(pixel, size, align_corners)
    if padding_mode in ("border", "reflection"):
        pixel = torch.clamp(pixel, 0, size - 1)
    return pixel


def _reflected(pixel: object, size: int, align_corners: bool) -> object:
    """``pixel`` reflected at the image's edges, back and forth: the pixel centres with
    ``align_corners``, else the outer borders of the edge pixels."""
    low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    span = high - low
    if span <= 0:  # a single pixel with align_corners: every position is pixel 0
        return pixel * 0.0
    distance = torch.abs(pixel - low)
    extra = torch.fmod(distance, span)
    flips = torch.floor(ar.primal_of(distance) / span)
    return torch.where(flips % 2 == 0, extra + low, span - extra + low)


def _read(values: object, indices: list[Tensor]) -> object:
    """``values[n, :, i_1, ..., i_s]`` (0 outside the image) for integer index tensors
    ``(N, *out)``, one per spatial axis of ``values`` in its order."""
    image = ar.primal_of(values)
    inside = torch.ones_like(indices[0], dtype=torch.bool)
    flat = torch.zeros_like(indices[0])
    for index, size in zip(indices, image.shape[2:], strict=True):
        inside &= (index >= 0) & (index < size)
        flat = flat * size + index.clamp(0, size - 1)
    gather = flat.flatten(1).unsqueeze(1).expand(-1, image.shape[1], -1)
    read = torch.gather(torch.flatten(values, 2), 2, gather)
    read = read.reshape(*gather.shape[:2], *indices[0].shape[1:])
    return read * inside.unsqueeze(1).to(image.dtype)


def _product(factors: list[object]) -> object:
    total = factors[0]
    for factor in factors[1:]:
        total = total * factor
    return total


def _linear(values: object, positions: list[object]) -> object:
    """Bilinear (trilinear) sampling at pixel ``positions``, one per spatial axis."""
    lows = [torch.floor(ar.primal_of(p)) for p in positions]
    for position, low in zip(positions, lows, strict=True):
        _kinks.report(position, low, low + 1)
    fractions = [p - low for p, low in zip(positions, lows, strict=True)]
    total = 0.0
    for corner in itertools.product((0, 1), repeat=len(positions)):
        weight = _product([f if c else 1 - f for f, c in zip(fractions, corner, strict=True)])
        indices = [low.long() + c for low, c in zip(lows, corner, strict=True)]
        total = total + weight.unsqueeze(1) * _read(values, indices)
    return total


def _cubic_weights(t: object) -> list[object]:
    """The cubic convolution weights of the pixels at offsets -1, 0, 1, 2 from ``floor(x)``,
    ``t = x - floor(x)`` (PyTorch's ``get_cubic_upsample_coefficients``)."""

    def near(x: object) -> object:  # |x| <= 1
        return ((_A + 2) * x - (_A + 3)) * x * x + 1

    def far(x: object) -> object:  # 1 < |x| < 2
        return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _bicubic(
    values: object, positions: list[object], align_corners: bool, padding_mode: str
) -> object:
    """Bicubic sampling: padding applies to each of the 4 x 4 pixel indices."""
    sizes = ar.primal_of(values).shape[2:]
    lows = [torch.floor(ar.primal_of(p)) for p in positions]
    for position, low in zip(positions, lows, strict=True):
        _kinks.report(position, low, low + 1)
    weights = [_cubic_weights(p - low) for p, low in zip(positions, lows, strict=True)]
    total = 0.0
    for offsets in itertools.product(range(-1, 3), repeat=2):
        indices = [
            _padded(low + offset, size, align_corners, padding_mode).long()
            for low, offset, size in zip(lows, offsets, sizes, strict=True)
        ]
        weight = _product([w[o + 1] for w, o in zip(weights, offsets, strict=True)])
        total = total + weight.unsqueeze(1) * _read(values, indices)
    return total


@register_rule(F.grid_sample)
def _grid_sample(
    input: object,  # noqa: A002
    grid: object,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool | None = None,
) -> object:
    # PyTorch's own value, which also checks the arguments with PyTorch's own errors.
    primal = F.grid_sample(
        ar.primal_of(input), ar.primal_of(grid), mode, padding_mode, align_corners
    )
    align = bool(align_corners)
    sizes = ar.primal_of(input).shape[2:]
    # The grid's last axis holds (x, y[, z]): the image's axes from the last one.
    coordinates = [grid[..., len(sizes) - 1 - axis] for axis in range(len(sizes))]
    pixels = [_unnormalized(g, s, align) for g, s in zip(coordinates, sizes, strict=True)]
    if mode == "bicubic":
        total = _bicubic(input, pixels, align, padding_mode)
    else:
        positions = [_padded(p, s, align, padding_mode) for p, s in zip(pixels, sizes, strict=True)]
        if mode == "nearest":  # one pixel: piecewise constant in the grid
            nearest = [torch.round(ar.primal_of(p)) for p in positions]
            for position, index in zip(positions, nearest, strict=True):
                _kinks.report(position, index - 0.5, index + 0.5)
            total = _read(input, [index.long() for index in nearest])
        else:
            total = _linear(input, positions)
    return total.with_series(primal, total.series) if ar.is_jet(total) else primal


@register_rule(F.affine_grid)
def _affine_grid(theta: object, size: list[int], align_corners: bool | None = None) -> object:
    """Linear in ``theta``: each position's homogeneous base coordinates times ``theta``."""
    plain = ar.primal_of(theta)
    spatial = len(size) - 2
    identity = torch.eye(spatial, spatial + 1, dtype=plain.dtype, device=plain.device)
    base = F.affine_grid(identity.expand(size[0], -1, -1), size, bool(align_corners))
    homogeneous = torch.cat([base, torch.ones_like(base[..., :1])], -1)  # (N, *out, s + 1)
    flat = homogeneous.reshape(size[0], math.prod(base.shape[1:-1]), spatial + 1)
    grid = torch.einsum("npk,njk->npj", flat, theta)
    return torch.reshape(grid, base.shape)
