"""On a CUDA device, every entry point gives the CPU's float64 results (skipped without one).

Run on a GPU machine with ``python -m pytest tests/test_cuda.py``; the results of the last such
run are recorded in benchmarks/results/gpu.md.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hope_attr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    assert actual.is_cuda
    scale = expected.abs().max().clamp_min(1e-300)
    assert ((actual.cpu() - expected).abs().max() / scale).item() < rtol


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(4, 8, 3), nn.Tanh(),
        nn.Flatten(), nn.Linear(8 * 6 * 6, 10),
    ).double().eval()  # fmt: skip


def test_unmixed_derivatives_with_windows_and_chunks() -> None:
    model, x = _cnn(), torch.rand(3, 1, 20, 20, dtype=torch.float64)
    expected = hope_attr.unmixed_derivatives(model, x, 6)
    for chunk in (None, 37):
        got = hope_attr.unmixed_derivatives(model.cuda(), x.cuda(), 6, directions_per_chunk=chunk)
        _close(got, expected)
        model.cpu()


def test_float32_on_cuda_matches_float64_at_order_ten() -> None:
    model, x = _cnn(), torch.rand(2, 1, 20, 20, dtype=torch.float64)
    expected = hope_attr.unmixed_derivatives(model, x, 10)
    got = hope_attr.unmixed_derivatives(model.float().cuda(), x.float().cuda(), 10)
    for k in range(10):
        _close(got[k].double(), expected[k], rtol=1e-4)


def test_attribution_all_targets_and_mask() -> None:
    model, x = _cnn(), torch.rand(2, 1, 20, 20, dtype=torch.float64)
    mask = torch.arange(25).reshape(5, 5).repeat_interleave(4, 0).repeat_interleave(4, 1)
    expected = hope_attr.HOPEAttribution(model, order=4).attribute_all_targets(
        x, feature_mask=mask[None, None]
    )
    got = hope_attr.HOPEAttribution(model.cuda(), order=4).attribute_all_targets(
        x.cuda(), feature_mask=mask[None, None].cuda()
    )
    _close(got, expected)


def test_eager_engine_on_real_architectures() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], 10)
    vit = torchvision.models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10)
    for parameter in vit.heads.parameters():
        nn.init.normal_(parameter, std=0.5)
    lstm = nn.LSTM(3 * 32, 8, batch_first=True)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    for model, forward in (
        (resnet, None),
        (vit, None),
        (lstm, lambda m: lambda t: m(t.permute(0, 2, 1, 3).reshape(1, 32, 96))[0][:, -1]),
    ):
        model = model.double().eval()
        call = forward(model) if forward else model
        mask = torch.arange(16).reshape(4, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
        mask = mask.expand(1, 3, 32, 32)
        expected = hope_attr.HOPEAttribution(call, order=3).attribute_all_targets(
            x, feature_mask=mask
        )
        model.cuda()
        call = forward(model) if forward else model
        got = hope_attr.HOPEAttribution(call, order=3).attribute_all_targets(
            x.cuda(), feature_mask=mask.cuda()
        )
        _close(got, expected)


def test_mixed_derivatives_and_expand() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = hope_attr.mixed_derivatives(model, x, 4)
    got = hope_attr.mixed_derivatives(model.cuda(), x.cuda(), 4)
    for g, e in zip(got, expected, strict=True):
        _close(g, e)
    polynomial = hope_attr.expand(model, x[0].cuda(), order=3)
    model.cpu()
    _close(polynomial(x.cuda()), hope_attr.expand(model, x[0], order=3)(x))
