"""Figures of HOPE's per-order maps, drawn with Captum's own visualizer.

Captum's ``visualize_image_attr`` expects ``(H, W, C)`` numpy arrays and silently sums over the
wrong axis when given PyTorch's ``(C, H, W)``; :func:`to_hwc` converts and checks the layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import visualization
from matplotlib.figure import Figure


def to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Convert one image or attribution map from PyTorch's layout to Captum's ``(H, W, C)``.

    Accepts ``(C, H, W)``, ``(1, C, H, W)`` or ``(H, W)``.

    Example:
        >>> to_hwc(torch.zeros(1, 3, 28, 28)).shape
        (28, 28, 3)
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise ValueError(
            f"expected one image (C, H, W), (1, C, H, W) or (H, W), got shape {array.shape}; "
            "select an example first, e.g. attributions[0]"
        )
    channels = array.shape[0]
    if channels > 4 or array.shape[-1] <= 4 < array.shape[1]:
        raise ValueError(
            f"shape {array.shape} does not look like (C, H, W) with 1-4 channels; if it is "
            "already (H, W, C), pass it to Captum's visualizer directly"
        )
    return np.transpose(array, (1, 2, 0))


def plot_order_grid(
    maps: torch.Tensor,
    column_titles: Sequence[str] | None = None,
    original_image: torch.Tensor | None = None,
    method: str = "heat_map",
    sign: str = "all",
    cell_size: float = 1.6,
    outlier_perc: float = 2,
) -> Figure:
    """A grid of maps: rows are Taylor orders, columns are classes or methods.

    Args:
        maps: ``(rows, columns, C, H, W)`` or ``(rows, columns, H, W)``; e.g. the per-order terms
            of :meth:`HOPEAttribution.attribute_all_targets` for one example, moved to
            ``(order, class, C, H, W)``.
        column_titles: one per column (default ``"class c"``).
        original_image: ``(C, H, W)``, needed by Captum's blended methods.
        method: passed to ``captum.attr.visualization.visualize_image_attr``
            (``"heat_map"``, ``"blended_heat_map"``, ...).
        sign: passed to ``visualize_image_attr`` (``"all"``, ``"positive"``, ...).
        cell_size: inches per cell.
        outlier_perc: passed to ``visualize_image_attr``: the percentage of largest values
            clipped before scaling the colours.

    Returns:
        The matplotlib figure (not shown; save it with ``figure.savefig``).

    Example:
        >>> figure = plot_order_grid(torch.randn(2, 3, 1, 8, 8))
        >>> len(figure.axes)
        6
    """
    if maps.dim() == 4:
        maps = maps.unsqueeze(2)
    if maps.dim() != 5:
        raise ValueError(f"maps must be (rows, columns, [C,] H, W), got {tuple(maps.shape)}")
    rows, columns = maps.shape[:2]
    titles = (
        list(column_titles) if column_titles is not None else [f"class {c}" for c in range(columns)]
    )
    if len(titles) != columns:
        raise ValueError(f"got {len(titles)} column titles for {columns} columns")
    figure = Figure(figsize=(cell_size * columns, cell_size * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    image = to_hwc(original_image) if original_image is not None else None
    for row in range(rows):
        for column in range(columns):
            cell = to_hwc(maps[row, column])
            axis = axes[row][column]
            if np.abs(cell).max() == 0:  # Captum cannot scale an all-zero map
                axis.imshow(np.zeros(cell.shape[:2]), cmap="gray", vmin=-1, vmax=1)
            else:
                visualization.visualize_image_attr(
                    cell,
                    image,
                    method=method,
                    sign=sign,
                    plt_fig_axis=(figure, axis),
                    outlier_perc=outlier_perc,
                    use_pyplot=False,
                )
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column], fontsize=8)
            if column == 0:
                axis.set_ylabel(f"order {row + 1}", fontsize=8)
    figure.tight_layout()
    return figure
