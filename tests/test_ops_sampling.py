"""``F.grid_sample`` and ``F.affine_grid`` (spatial transformers), exact, in every mode, padding
and ``align_corners``, 2-d and 3-d.

Nested forward AD has no formula for grid_sample's backward (../shared/FINDINGS.md section 8), so
the references are: PyTorch's own kernel at order 1 (autograd's Jacobian of ``F.grid_sample``),
central finite differences of ``F.grid_sample`` itself at order 2, and a sampler written
independently below (tent weights ``1 - |x - x_i|``, the cubic convolution kernel of the
distance ``|x - x_i|``, reflection as a triangle wave, advanced indexing) under nested
``torch.func.jvp`` at every order; that sampler is checked to compute grid_sample first.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import hope_attr
from hope_attr.engine.expansion import Expansion
from tests.oracle import relative_error, unmixed_reference

W = torch.randn(4, 54, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
# Near the identity, and wider than the image (positions outside: the padding matters).
THETA = {
    (2, False): torch.tensor([[[0.9, 0.2, 0.1], [-0.1, 0.8, -0.2]]], dtype=torch.float64),
    (2, True): torch.tensor([[[1.3, 0.2, 0.1], [-0.1, 1.2, -0.2]]], dtype=torch.float64),
    (3, True): torch.tensor(
        [[[1.3, 0.2, 0.1, 0.05], [-0.1, 1.2, -0.2, 0.1], [0.1, 0.05, 1.25, -0.1]]],
        dtype=torch.float64,
    ),
}
SIZES = {2: (3, 3), 3: (3, 3, 3)}  # the image's spatial size
OUT = {2: (4, 5), 3: (2, 3, 4)}  # the sampled size
CUBIC = -0.75  # PyTorch's cubic convolution constant


# --------------------------------------------------------------------------- the reference
def _reflect(p: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    """Reflection at the edges as a triangle wave of period twice the span."""
    low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    if high == low:
        return p * 0
    span = high - low
    phase = torch.remainder(p - low, 2 * span)
    return (low + span - (phase - span).abs()).clamp(0, size - 1)


def _pad(p: torch.Tensor, size: int, align_corners: bool, padding_mode: str) -> torch.Tensor:
    if padding_mode == "reflection":
        return _reflect(p, size, align_corners)
    return p.clamp(0, size - 1) if padding_mode == "border" else p


def _cubic(distance: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel at ``|distance| < 2``."""
    s = distance.abs()
    near = ((CUBIC + 2) * s - (CUBIC + 3)) * s * s + 1
    far = CUBIC * s**3 - 5 * CUBIC * s**2 + 8 * CUBIC * s - 4 * CUBIC
    return torch.where(s <= 1, near, far)


def _gather(image: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
    """``image[n, :, i, j(, k)]`` as ``(N, *out, C)``, zero outside the image."""
    sizes = image.shape[2:]
    pairs = list(zip(indices, sizes, strict=True))
    inside = torch.stack([(i >= 0) & (i <= s - 1) for i, s in pairs]).all(0)
    clamped = [i.clamp(0, s - 1).long() for i, s in pairs]
    batch = torch.arange(image.shape[0]).reshape(-1, *[1] * (indices[0].dim() - 1))
    return image.movedim(1, -1)[(batch, *clamped)] * inside[..., None]


def _reference_sample(image, grid, mode: str, padding_mode: str, align: bool) -> torch.Tensor:
    """grid_sample by kernel weights of the distance to each pixel, without grid_sample."""
    sizes = image.shape[2:]
    pixels = []
    for axis, size in enumerate(sizes):
        g = grid[..., len(sizes) - 1 - axis]
        pixels.append((g + 1) / 2 * (size - 1) if align else ((g + 1) * size - 1) / 2)
    if mode != "bicubic":
        pixels = [_pad(p, s, align, padding_mode) for p, s in zip(pixels, sizes, strict=True)]
    if mode == "nearest":
        return _gather(image, [torch.round(p) for p in pixels]).movedim(-1, 1)
    kernel, offsets = (_cubic, range(-1, 3)) if mode == "bicubic" else (None, range(2))
    out = 0
    for corner in itertools.product(offsets, repeat=len(sizes)):
        indices = [torch.floor(p) + c for p, c in zip(pixels, corner, strict=True)]
        weight = 1
        for p, i in zip(pixels, indices, strict=True):
            weight = weight * (kernel(p - i) if kernel else 1 - (p - i).abs())
        if mode == "bicubic":  # padding applies to each pixel index
            indices = [_pad(i, s, align, padding_mode) for i, s in zip(indices, sizes, strict=True)]
        out = out + weight[..., None] * _gather(image, indices)
    return out.movedim(-1, 1)


# --------------------------------------------------------------------------- the models
# name: (image is a jet, grid is a jet, align_corners, padding_mode, mode, spatial axes)
SETTINGS = {
    "jet image, constant grid": (True, False, False, "zeros", "bilinear", 2),
    "constant image, jet grid": (False, True, False, "zeros", "bilinear", 2),
    "both jets, border, align_corners": (True, True, True, "border", "bilinear", 2),
    "both jets, zeros, align_corners": (True, True, True, "zeros", "bilinear", 2),
    "reflection": (True, True, False, "reflection", "bilinear", 2),
    "reflection, align_corners": (True, True, True, "reflection", "bilinear", 2),
    "nearest, reflection": (True, True, False, "reflection", "nearest", 2),
    "bicubic, zeros": (True, True, False, "zeros", "bicubic", 2),
    "bicubic, border, align_corners": (True, True, True, "border", "bicubic", 2),
    "bicubic, reflection": (True, True, False, "reflection", "bicubic", 2),
    "bicubic, reflection, align_corners": (True, True, True, "reflection", "bicubic", 2),
    "bicubic, constant image": (False, True, False, "border", "bicubic", 2),
    "3-d, zeros": (True, True, False, "zeros", "bilinear", 3),
    "3-d, border, align_corners": (True, True, True, "border", "bilinear", 3),
    "3-d, reflection": (True, True, False, "reflection", "bilinear", 3),
    "3-d, nearest, border": (True, True, False, "border", "nearest", 3),
}
CONSTANT_IMAGE = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator())


def _image(t: torch.Tensor, spatial: int = 2) -> torch.Tensor:
    size = SIZES[spatial]
    return torch.tanh(t @ W[:, : 2 * size[0] * size[1] * (size[-1] if spatial == 3 else 1)])


def _theta(t: torch.Tensor, spatial: int = 2, wide: bool = False) -> torch.Tensor:
    theta = THETA[(spatial, wide)]
    moved = 0.3 * torch.sin(t[:, :3] @ W[:3, : theta[0].numel()]).reshape(-1, *theta.shape[1:])
    return theta + moved


def _model(image_is_jet, grid_is_jet, align, padding, mode="bilinear", spatial=2, sample=None):
    sample = sample or (lambda i, g: F.grid_sample(i, g, mode, padding, align))
    wide = (padding, mode, spatial) != ("zeros", "bilinear", 2)

    def f(t: torch.Tensor) -> torch.Tensor:
        batch = t.shape[0]
        image = (
            _image(t, spatial).reshape(batch, 2, *SIZES[spatial])
            if image_is_jet
            else CONSTANT_IMAGE.expand(batch, -1, -1, -1)
        )
        theta = THETA[(spatial, wide)].expand(batch, -1, -1)
        if grid_is_jet:
            theta = _theta(t, spatial, wide)
        grid = F.affine_grid(theta, [batch, 2, *OUT[spatial]], align_corners=align)
        return sample(image, grid).flatten(1)

    return f


@pytest.mark.parametrize("name", list(SETTINGS))
def test_grid_sample_against_an_independent_sampler(name: str) -> None:
    image_is_jet, grid_is_jet, align, padding, mode, spatial = SETTINGS[name]
    f = _model(*SETTINGS[name])
    reference = _model(
        *SETTINGS[name], sample=lambda i, g: _reference_sample(i, g, mode, padding, align)
    )
    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(f(x), reference(x))  # the reference computes grid_sample
    actual = hope_attr.unmixed_derivatives(f, x, 3)
    assert relative_error(actual, unmixed_reference(reference, x, 3)) <= 1e-10


@pytest.mark.parametrize("name", list(SETTINGS))
def test_grid_sample_against_pytorchs_kernel(name: str) -> None:
    """Order 1 against autograd through F.grid_sample; order 2 along a direction against
    central differences of F.grid_sample."""
    f = _model(*SETTINGS[name])
    x = torch.randn(1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    jacobian = torch.autograd.functional.jacobian(f, x)[0, :, 0]  # (outputs, features)
    actual = hope_attr.unmixed_derivatives(f, x, 2)
    torch.testing.assert_close(actual[0, 0], jacobian, rtol=1e-10, atol=1e-12)
    v = torch.randn(1, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    second = Expansion(f, x, 2).directional_coefficients((v,))[1, 0] * 2
    step = 1e-4
    difference = (f(x + step * v[0]) - 2 * f(x) + f(x - step * v[0])) / step**2
    torch.testing.assert_close(second, difference, rtol=1e-5, atol=1e-6)


def test_nearest_sampling_passes_the_image_and_not_the_grid() -> None:
    def f(t: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(_theta(t), [t.shape[0], 2, 4, 5], align_corners=False)
        image = _image(t).reshape(-1, 2, 3, 3)
        return F.grid_sample(image, grid, "nearest", align_corners=False).flatten(1)

    def image_only(t: torch.Tensor) -> torch.Tensor:  # the grid frozen at the primal
        grid = F.affine_grid(_theta(x), [t.shape[0], 2, 4, 5], align_corners=False)
        image = _image(t).reshape(-1, 2, 3, 3)
        return F.grid_sample(image, grid, "nearest", align_corners=False).flatten(1)

    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    actual = hope_attr.unmixed_derivatives(f, x, 2)
    jacobian = torch.stack(
        [torch.autograd.functional.jacobian(image_only, x)[b, :, b] for b in range(2)]
    )
    torch.testing.assert_close(actual[0], jacobian, rtol=1e-12, atol=1e-14)


def test_a_3d_affine_grid_is_linear_in_theta() -> None:
    size = [2, 1, 2, 3, 4]

    def f(t: torch.Tensor) -> torch.Tensor:
        return F.affine_grid(_theta(t, 3, True), size, align_corners=False).flatten(1)

    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    actual = hope_attr.unmixed_derivatives(f, x, 3)
    assert relative_error(actual, unmixed_reference(f, x, 3)) <= 1e-12


def test_an_invalid_call_gets_pytorchs_own_error() -> None:
    """Bicubic sampling of a 5-d input is not a mode PyTorch has: its error, not ours."""

    def f(t: torch.Tensor) -> torch.Tensor:
        image = _image(t, 3).reshape(-1, 2, 3, 3, 3)
        grid = F.affine_grid(_theta(t, 3, True), [t.shape[0], 2, 2, 3, 4], align_corners=False)
        return F.grid_sample(image, grid, "bicubic", align_corners=False).flatten(1)

    with pytest.raises(RuntimeError, match="bicubic interpolation only supports 4D input"):
        hope_attr.unmixed_derivatives(f, torch.randn(1, 4, dtype=torch.float64), 1)
