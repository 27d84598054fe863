"""Heat-map figures of the tutorial: labelled rows, the input digit, a colour bar with a sign key.

Every map is drawn in Captum's signed colours (``visualize_image_attr(sign="all")``: red
negative, white zero, green positive), but with an explicit, stated scale instead of Captum's
per-panel normalisation, so that a colour bar can say what a colour means:

* ``scale="shared"``: one symmetric scale for every map of the figure (maps in the same units,
  e.g. the paper's Fig. 7b, where the rows predict and measure the same quantity);
* ``scale="row"``: one scale per row (e.g. one Taylor order, whose terms shrink with the order);
* ``scale="panel"``: every map scaled to its own largest ``|value|`` (methods in different units);
  the colour bar then only gives the sign.

The scale is the 99th percentile of ``|value|`` (Captum clips outliers before scaling too):
a few extreme pixels would otherwise wash the rest of a map out. Colours saturate beyond it, and
the figure's title says so, under the caller's title (:data:`SCALE_NOTES`).

Figures are at most ``MAX_WIDTH`` inches wide (1595 pixels at ``DPI``): cells shrink to fit, and
column titles wrap at the word and CamelCase boundaries of the method names.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from torch import Tensor

from hope_attr.visualization import to_hwc

SIGNED = LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])
"""Captum's colours for ``sign="all"`` heat maps."""
PERCENTILE = 99.0
SCALES = ("shared", "row", "panel")
DPI = 110
MAX_WIDTH = 14.5  # inches: 1595 pixels at DPI, readable without zooming out on a laptop screen
_LABEL_WIDTH = 1.0  # inches for the row labels (16 characters at 7 pt, up to three lines)
_BAR_WIDTH = 1.2  # inches for the colour bar and its label
_PERCENTILE_TEXT = f"{PERCENTILE:g}th percentile of |value|"
SCALE_NOTES = {
    "shared": f"one colour scale for all maps: \u00b1 their {_PERCENTILE_TEXT}",
    "row": f"one colour scale per row: \u00b1 the row's {_PERCENTILE_TEXT}",
    "panel": f"each map on its own colour scale: \u00b1 its {_PERCENTILE_TEXT} "
    "(compare signs and shapes across maps, not colours)",
}
"""The line each figure's title gets for its ``scale``, with the clipping that every scale has."""
_CLIPPED = "; larger values are clipped to the end colours"


def _plane(attribution: Tensor) -> np.ndarray:
    """``(C, H, W)`` to ``(H, W)``, channels summed (Captum's ``heat_map`` does the same)."""
    return to_hwc(attribution).sum(-1)


def _limit(planes: Sequence[np.ndarray]) -> float:
    """The colour scale of ``planes``: the 99th percentile of ``|value|`` (1 if all are 0)."""
    values = np.abs(np.concatenate([p.ravel() for p in planes]))
    limit = float(np.percentile(values, PERCENTILE))
    if limit == 0:
        limit = float(values.max())
    return limit if limit > 0 else 1.0


def _draw_image(axis: Axes, image: Tensor) -> None:
    axis.imshow(_plane(image), cmap="gray")


def _clean(axis: Axes) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


_BREAKS = re.compile(r"(?= )|(?<=[a-z])(?=[A-Z(])")  # before a space, inside CamelCase, before "("


def wrap_title(title: str, width: int) -> str:
    """``title`` on lines of at most ``width`` characters where it can break.

    Breaks go before spaces and between the words of CamelCase names (no hyphen is added); a
    single word longer than ``width`` stays whole.

    Example:
        >>> wrap_title("NoiseTunnel(Saliency)", 12)
        'NoiseTunnel\\n(Saliency)'
    """
    lines, line = [], ""
    for piece in _BREAKS.split(title):
        if line and len(line + piece) > width:
            lines.append(line)
            line = piece.lstrip()
        else:
            line += piece
    return "\n".join([*lines, line])


def draw_grid(
    images: Sequence[Tensor],
    rows: Sequence[Sequence[Tensor]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    scale: str = "shared",
    value_label: str = "attribution",
    cell_size: float = 1.3,
    title: str = "",
) -> Figure:
    """Rows of maps after their input image, with row labels on the left and colour bars.

    Args:
        images: one ``(C, H, W)`` image per row, drawn in the "input" column.
        rows: per row, the ``(C, H, W)`` maps, one per entry of ``column_labels``.
        row_labels: one per row, wrapped onto several lines (never cut or overlapping).
        column_labels: the titles of the map columns.
        scale: ``"shared"``, ``"row"`` or ``"panel"`` (see the module docstring).
        value_label: what a map's value is, for the colour bar (with the sign key).
        cell_size: inches per cell, at most: cells shrink so that the figure is at most
            ``MAX_WIDTH`` inches wide.
        title: the figure's title; a line that states the colour scale and its clipping
            (:data:`SCALE_NOTES`) follows it.

    Returns:
        The figure; save it with :func:`save`.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    planes = [[_plane(m) for m in maps] for maps in rows]
    columns = 2 + len(column_labels)
    cell_size = min(cell_size, (MAX_WIDTH - _LABEL_WIDTH - _BAR_WIDTH) / (columns - 1))
    label_width = _LABEL_WIDTH / cell_size  # in cells
    title_lines = [wrap_title(label, int(cell_size * 17)) for label in ["input", *column_labels]]
    title_height = 0.12 * max(label.count("\n") for label in title_lines)
    figure = Figure(
        figsize=(
            cell_size * (columns - 1) + _LABEL_WIDTH + _BAR_WIDTH,
            cell_size * len(rows) + 0.85 + title_height,
        ),
        layout="constrained",
    )
    note = SCALE_NOTES[scale] + _CLIPPED
    figure.suptitle(f"{title}\n{note}" if title else note, fontsize=8)
    axes = figure.subplots(
        len(rows), columns, squeeze=False, width_ratios=[label_width] + [1] * (columns - 1)
    )
    shared = _limit([p for row in planes for p in row])
    for row, (image, maps) in enumerate(zip(images, planes, strict=True)):
        label_axis = axes[row][0]
        label_axis.axis("off")
        label_axis.text(
            1.0,
            0.5,
            textwrap.fill(row_labels[row], 16),
            ha="right",
            va="center",
            fontsize=7,
            transform=label_axis.transAxes,
        )
        _draw_image(axes[row][1], image)
        row_limit = _limit(maps) if scale == "row" else shared
        for column, plane in enumerate(maps, start=2):
            limit = _limit([plane]) if scale == "panel" else row_limit
            axes[row][column].imshow(plane, cmap=SIGNED, vmin=-limit, vmax=limit)
        for axis in axes[row][1:]:
            _clean(axis)
        if scale == "row":
            _colorbar(figure, axes[row][2:], row_limit, value_label, compact=True)
    for column, label in enumerate(title_lines, start=1):
        axes[0][column].set_title(label, fontsize=7)
    if scale == "shared":
        _colorbar(figure, axes[:, 2:], shared, value_label)
    elif scale == "panel":
        _colorbar(figure, axes[:, 2:], None, value_label)
    return figure


def _colorbar(
    figure: Figure, axes: np.ndarray, limit: float | None, value_label: str, compact: bool = False
) -> None:
    """A colour bar with the sign key; ``limit=None``: each panel has its own scale."""
    bar = figure.colorbar(
        ScalarMappable(Normalize(-1.0, 1.0) if limit is None else Normalize(-limit, limit), SIGNED),
        ax=axes,
        fraction=0.02 if not compact else 0.015,
        pad=0.01,
        aspect=12 if compact else 20,
    )
    if limit is None:
        bar.set_ticks([-1, 0, 1], labels=["- max", "0", "+ max"])
        text = f"{value_label}\n(each panel: its own max)"
    else:
        bar.set_ticks([-limit, 0, limit], labels=[f"{-limit:.2g}", "0", f"{limit:.2g}"])
        text = value_label
    bar.ax.tick_params(labelsize=6)
    bar.set_label(f"{text}\nred < 0 < green", fontsize=6 if compact else 7)


def method_comparison(
    images: Tensor, labels: Sequence[int], maps: Mapping[str, Tensor], title: str
) -> Figure:
    """Rows are digits, columns are methods (``maps[name]`` is ``(N, C, H, W)``).

    Methods are in different units (a gradient, a score difference, a relevance), so every
    panel has its own scale.
    """
    names = list(maps)
    rows = [[maps[name][index] for name in names] for index in range(len(images))]
    return draw_grid(
        list(images),
        rows,
        [f"test digit {i}, label {t}" for i, t in enumerate(labels)],
        names,
        scale="panel",
        value_label="attribution of the label",
        title=title,
    )


def class_maps(image: Tensor, maps: Mapping[str, Tensor], title: str, value_label: str) -> Figure:
    """Rows are methods, columns are the classes (``maps[name]`` is ``(classes, C, H, W)``).

    One scale for the whole figure: the rows must be comparable colour for colour.
    """
    names = list(maps)
    classes = next(iter(maps.values())).shape[0]
    rows = [list(maps[name]) for name in names]
    return draw_grid(
        [image] * len(names),
        rows,
        names,
        [f"class {c}" for c in range(classes)],
        scale="shared",
        value_label=value_label,
        title=title,
    )


def order_grid(orders: Tensor, image: Tensor, title: str) -> Figure:
    """HOPE's per-order, per-class terms ``(n, classes, C, H, W)`` (the paper's Fig. 4c/7).

    One scale per order (the terms shrink quickly with the order, a shared scale would leave the
    higher orders white), shared by the classes of that order.
    """
    rows = [list(orders[k]) for k in range(orders.shape[0])]
    return draw_grid(
        [image] * len(rows),
        rows,
        [f"order {k + 1} term" for k in range(len(rows))],
        [f"class {c}" for c in range(orders.shape[1])],
        scale="row",
        value_label="score change",
        title=title,
    )


def save(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG (at ``DPI``) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
