"""The figure helpers hand Captum's visualizer the layout it needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hope_attr import HOPEAttribution
from hope_attr.visualization import plot_order_grid, to_hwc


def test_to_hwc_moves_channels_last_and_rejects_ambiguous_layouts() -> None:
    image = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    converted = to_hwc(image)
    assert converted.shape == (5, 6, 2)
    assert converted[3, 4, 1] == image[1, 3, 4]
    assert to_hwc(image.unsqueeze(0)).shape == (5, 6, 2)
    assert to_hwc(torch.zeros(5, 6)).shape == (5, 6, 1)
    with pytest.raises(ValueError, match="already"):
        to_hwc(np.zeros((28, 28, 3)))
    with pytest.raises(ValueError, match="select an example"):
        to_hwc(torch.zeros(2, 1, 5, 5))


def test_order_grid_from_all_targets(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(32, 3)).eval()
    image = torch.rand(1, 1, 6, 6)
    _, orders = HOPEAttribution(model, order=3).attribute_all_targets(image, return_orders=True)
    # (order, B, classes, C, H, W) -> one example's (order, class, C, H, W)
    figure = plot_order_grid(orders[:, 0], original_image=image[0])
    assert len(figure.axes) == 9
    figure.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000
