"""``F.grid_sample`` and ``F.affine_grid`` (spatial transformers), exact.

Nested forward AD has no formula for grid_sample's backward (../shared/FINDINGS.md section 8), so
the references are: PyTorch's own kernel at order 1 (autograd's Jacobian of ``F.grid_sample``),
a bilinear sampler written independently below (tent weights ``1 - |x - x_i|`` and advanced
indexing) under nested ``torch.func.jvp`` at every order, and central finite differences of
``F.grid_sample`` itself at order 2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import hope_attr
from hope_attr.engine.expansion import Expansion
from tests.oracle import relative_error, unmixed_reference

W = torch.randn(4, 18, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
THETA = torch.tensor([[[0.9, 0.2, 0.1], [-0.1, 0.8, -0.2]]], dtype=torch.float64)


def _image(t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(t @ W).reshape(-1, 2, 3, 3)


def _theta(t: torch.Tensor) -> torch.Tensor:
    return THETA + 0.3 * torch.sin(t[:, :3] @ W[:3, :6]).reshape(-1, 2, 3)


def _reference_sample(image, grid, align_corners: bool, padding_mode: str) -> torch.Tensor:
    """Bilinear sampling by tent weights, written without grid_sample."""
    height, width = image.shape[-2:]

    def pixel(g: torch.Tensor, size: int) -> torch.Tensor:
        p = (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2
        return p.clamp(0, size - 1) if padding_mode == "border" else p

    x, y = pixel(grid[..., 0], width), pixel(grid[..., 1], height)
    x0, y0 = torch.floor(x), torch.floor(y)
    batch = torch.arange(image.shape[0]).reshape(-1, 1, 1)
    out = 0
    for ys in (y0, y0 + 1):
        for xs in (x0, x0 + 1):
            weight = (1 - (x - xs).abs()) * (1 - (y - ys).abs())
            inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
            rows = ys.clamp(0, height - 1).long()
            columns = xs.clamp(0, width - 1).long()
            values = image[batch, :, rows, columns]  # (N, Ho, Wo, C)
            out = out + (weight * inside)[..., None] * values
    return out.permute(0, 3, 1, 2)


SETTINGS = {
    "jet image, constant grid": (True, False, False, "zeros"),
    "constant image, jet grid": (False, True, False, "zeros"),
    "both jets, border, align_corners": (True, True, True, "border"),
    "both jets, zeros, align_corners": (True, True, True, "zeros"),
}
CONSTANT_IMAGE = torch.randn(1, 2, 3, 3, dtype=torch.float64, generator=torch.Generator())


def _model(image_is_jet: bool, grid_is_jet: bool, align: bool, padding: str, sample=None):
    sample = sample or (lambda i, g: F.grid_sample(i, g, "bilinear", padding, align))

    def f(t: torch.Tensor) -> torch.Tensor:
        image = _image(t) if image_is_jet else CONSTANT_IMAGE.expand(t.shape[0], -1, -1, -1)
        theta = _theta(t) if grid_is_jet else THETA.expand(t.shape[0], -1, -1)
        grid = F.affine_grid(theta, [t.shape[0], 2, 4, 5], align_corners=align)
        return sample(image, grid).flatten(1)

    return f


@pytest.mark.parametrize("name", list(SETTINGS))
def test_bilinear_grid_sample_against_an_independent_sampler(name: str) -> None:
    image_is_jet, grid_is_jet, align, padding = SETTINGS[name]
    f = _model(image_is_jet, grid_is_jet, align, padding)
    reference = _model(
        image_is_jet, grid_is_jet, align, padding,
        lambda i, g: _reference_sample(i, g, align, padding),
    )  # fmt: skip
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
        return F.grid_sample(_image(t), grid, "nearest", align_corners=False).flatten(1)

    def image_only(t: torch.Tensor) -> torch.Tensor:  # the grid frozen at the primal
        grid = F.affine_grid(_theta(x), [t.shape[0], 2, 4, 5], align_corners=False)
        return F.grid_sample(_image(t), grid, "nearest", align_corners=False).flatten(1)

    x = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    actual = hope_attr.unmixed_derivatives(f, x, 2)
    jacobian = torch.stack(
        [torch.autograd.functional.jacobian(image_only, x)[b, :, b] for b in range(2)]
    )
    torch.testing.assert_close(actual[0], jacobian, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("call", "fix"),
    [
        (lambda i, g: F.grid_sample(i, g, "bicubic", align_corners=False), "mode='bilinear'"),
        (
            lambda i, g: F.grid_sample(i, g, padding_mode="reflection", align_corners=False),
            "padding_mode='zeros'",
        ),
    ],  # fmt: skip
)
def test_bicubic_and_reflection_are_refused_with_the_fix(call, fix: str) -> None:
    def f(t: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(THETA.expand(t.shape[0], -1, -1), [t.shape[0], 2, 4, 5], False)
        return call(_image(t), grid).flatten(1)

    with pytest.raises(hope_attr.UnsupportedOperationError, match=fix) as info:
        hope_attr.unmixed_derivatives(f, torch.randn(1, 4, dtype=torch.float64), 1)
    assert "test_ops_sampling.py" in str(info.value)
