"""Taylor rule of ``F.grid_sample`` (spatial transformers, deformable sampling), 2-d.

Bilinear sampling reads the four pixels around each sampling position and weights them by the
position's fractional parts: ``(1 - fx)(1 - fy) v00 + fx (1 - fy) v01 + (1 - fx) fy v10 + fx fy
v11``. Which four pixels is piecewise constant, decided at the primal (a kink where a position
crosses a pixel boundary, reported to :mod:`hope_attr.engine.kinks`); the weights are polynomials
in the grid and the values linear in the input, so both may be jets (their products are Cauchy
products). Nearest sampling reads one pixel: the grid then has no derivative. Bicubic sampling and
5-d (volumetric) inputs are refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine.registry import register_rule
from hope_attr.rules.checks import refusal


def _position(g: object, size: int, align_corners: bool, padding_mode: str) -> object:
    """Grid coordinates in [-1, 1] to pixel coordinates (PyTorch's unnormalization)."""
    pixel = (g + 1) * ((size - 1) / 2) if align_corners else ((g + 1) * size - 1) / 2
    if padding_mode == "border":
        pixel = torch.clamp(pixel, 0, size - 1)
    elif padding_mode == "reflection":
        raise refusal(
            "F.grid_sample(..., padding_mode='reflection')",
            "reflected sampling positions are not implemented by hope_attr's rule",
            "Use padding_mode='zeros' or 'border'.",
        )
    return pixel


def _read(values: object, ys: Tensor, xs: Tensor) -> object:
    """``values[n, :, ys, xs]`` (0 outside the image) for integer positions ``(N, Ho, Wo)``."""
    height, width = ar.primal_of(values).shape[-2:]
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    flat = (ys.clamp(0, height - 1) * width + xs.clamp(0, width - 1)).flatten(1)
    channels = ar.primal_of(values).shape[1]
    index = flat.unsqueeze(1).expand(-1, channels, -1)
    read = torch.gather(torch.flatten(values, 2), 2, index).reshape(*index.shape[:2], *ys.shape[1:])
    return read * inside.unsqueeze(1).to(ar.primal_of(values).dtype)


@register_rule(F.grid_sample)
def _grid_sample(
    input: object,  # noqa: A002
    grid: object,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool | None = None,
) -> object:
    image = ar.primal_of(input)
    if image.dim() != 4 or mode not in ("bilinear", "nearest"):
        raise refusal(
            f"F.grid_sample(mode={mode!r}) of a {image.dim()}-d input",
            "hope_attr's rule samples 4-d inputs bilinearly or at the nearest pixel",
            "Use mode='bilinear' or 'nearest' on an (N, C, H, W) input.",
        )
    height, width = image.shape[-2:]
    x = _position(grid[..., 0], width, bool(align_corners), padding_mode)
    y = _position(grid[..., 1], height, bool(align_corners), padding_mode)
    px, py = ar.primal_of(x), ar.primal_of(y)
    if mode == "nearest":  # one pixel: piecewise constant in the grid
        for position, primal in ((x, px), (y, py)):
            _kinks.report(position, torch.round(primal) - 0.5, torch.round(primal) + 0.5)
        return _read(input, torch.round(py).long(), torch.round(px).long())
    x0, y0 = torch.floor(px), torch.floor(py)
    for position, low in ((x, x0), (y, y0)):
        _kinks.report(position, low, low + 1)
    fx, fy = x - x0, y - y0
    xs, ys = x0.long(), y0.long()
    total = 0.0
    for dy, weight_y in ((0, 1 - fy), (1, fy)):
        for dx, weight_x in ((0, 1 - fx), (1, fx)):
            weight = (weight_x * weight_y).unsqueeze(1)
            total = total + weight * _read(input, ys + dy, xs + dx)
    return total


@register_rule(F.affine_grid)
def _affine_grid(theta: object, size: list[int], align_corners: bool | None = None) -> object:
    """Linear in ``theta``: each position's homogeneous base coordinates times ``theta``."""
    plain = ar.primal_of(theta)
    if len(size) != 4:
        raise refusal(
            "F.affine_grid of a 5-d size",
            "hope_attr's rule builds 2-d grids",
            "Build the grid from a 2-d size (N, C, H, W).",
        )
    identity = torch.eye(2, 3, dtype=plain.dtype, device=plain.device).expand(size[0], 2, 3)
    base = F.affine_grid(identity, size, bool(align_corners))  # (N, H, W, 2): x, y
    homogeneous = torch.cat([base, torch.ones_like(base[..., :1])], -1)
    return torch.einsum("nhwk,njk->nhwj", homogeneous, theta)
