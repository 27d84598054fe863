"""Heat-map figures, every cell drawn with Captum's ``visualize_image_attr``.

Captum wants ``(H, W, C)`` numpy arrays; :func:`hope_attr.visualization.to_hwc` converts (and
checks) PyTorch's ``(C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from captum.attr import visualization
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from hope_attr.visualization import plot_order_grid, to_hwc


def _draw_map(figure: Figure, axis: Axes, attribution: Tensor) -> None:
    cell = to_hwc(attribution)
    if np.abs(cell).max() == 0:  # Captum cannot scale an all-zero map
        axis.imshow(np.zeros(cell.shape[:2]), cmap="gray", vmin=-1, vmax=1)
        return
    visualization.visualize_image_attr(
        cell, method="heat_map", sign="all", plt_fig_axis=(figure, axis), use_pyplot=False
    )


def _draw_image(figure: Figure, axis: Axes, image: Tensor) -> None:
    picture = to_hwc(image)
    visualization.visualize_image_attr(
        picture, picture, method="original_image", plt_fig_axis=(figure, axis), use_pyplot=False
    )
    axis.images[-1].set_cmap("gray")  # Captum draws one-channel images with the default map


def draw_grid(
    images: Sequence[Tensor],
    rows: Sequence[Sequence[Tensor]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    cell_size: float = 1.3,
) -> Figure:
    """One row per entry of ``rows``: the image, then its maps (signed, red < 0 < green)."""
    columns = 1 + len(column_labels)
    figure = Figure(figsize=(cell_size * columns, cell_size * len(rows) + 0.4))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row, (image, maps) in enumerate(zip(images, rows, strict=True)):
        _draw_image(figure, axes[row][0], image)
        axes[row][0].set_ylabel(row_labels[row], fontsize=7)
        for column, attribution in enumerate(maps, start=1):
            _draw_map(figure, axes[row][column], attribution)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    for column, label in enumerate(["input", *column_labels]):
        axes[0][column].set_title(label, fontsize=6)
    figure.tight_layout()
    return figure


def method_comparison(
    images: Tensor, labels: Sequence[int], maps: Mapping[str, Tensor], title: str
) -> Figure:
    """Rows are digits, columns are methods (``maps[name]`` is ``(N, C, H, W)``)."""
    names = list(maps)
    rows = [[maps[name][index] for name in names] for index in range(len(images))]
    figure = draw_grid(list(images), rows, [f"label {t}" for t in labels], names)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    return figure


def class_maps(image: Tensor, maps: Mapping[str, Tensor], title: str) -> Figure:
    """Rows are methods, columns are the 10 classes (``maps[name]`` is ``(10, C, H, W)``)."""
    names = list(maps)
    classes = next(iter(maps.values())).shape[0]
    rows = [list(maps[name]) for name in names]
    figure = draw_grid([image] * len(names), rows, names, [f"class {c}" for c in range(classes)])
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    return figure


def order_grid(orders: Tensor, image: Tensor, title: str) -> Figure:
    """HOPE's per-order, per-class terms ``(n, classes, C, H, W)`` (the paper's Fig. 4c/7)."""
    figure = plot_order_grid(orders, original_image=image)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    return figure


def save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
