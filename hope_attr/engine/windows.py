"""Receptive-field windows: the series of one-pixel directions through a network's first layers.

The direction that moves one input position ``p`` reaches only those outputs of the first
convolution whose kernel covers ``p``: a kernel-sized window of the feature map. Elementwise
functions keep that window, and a pooling whose kernel equals its stride shrinks it. Storing each
direction's series as its window, plus where the window sits, instead of the whole feature map
makes these layers cost ``window / map`` of the dense work (for a 5x5 kernel on a 28x28 MNIST
digit, 25 / 576).

A windowed :class:`~hope_attr.engine.jet.Jet` scatters its windows into a dense series the first
time a
rule reads ``jet.series``, so only the rules that keep windows (the first convolution, elementwise
functions, average pooling) know about them; every other rule is unchanged.

Layout: a windowed series is ``(m, D, B|1, C, *size)``; entry ``e`` of direction ``d`` sits at
spatial position ``offsets[d] + e`` of a feature map with spatial shape ``full``. Invariant: every
entry that falls outside the map is zero.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import resources as _resources
from hope_attr.engine import workspace as _workspace

__all__ = ["Window", "block_mean"]

# Values per direction (coefficients x batch x channels x window entries) from which a CPU
# scatters windows by slice copies rather than by advanced indexing.
_SLICE_COPY_ENTRIES = 2**16


class Window:
    """Where each direction's window sits in a feature map.

    Args:
        offsets: ``(D, nd)`` integer positions of each direction's entry ``0`` (may be negative:
            windows hang over the map's edges, with zeros there).
        size: the window's extent per spatial axis (the same for every direction).
        full: the feature map's spatial shape.
    """

    def __init__(self, offsets: Tensor, size: tuple[int, ...], full: tuple[int, ...]) -> None:
        self.offsets = offsets
        self.size = tuple(size)
        self.full = tuple(full)
        self._layout: tuple[Tensor, Tensor] | None = None

    @property
    def num_entries(self) -> int:
        return math.prod(self.size)

    def is_worthwhile(self) -> bool:
        """Windows pay off when they hold fewer entries than the map.

        Even a 7x7 window in an 8x8 map saves the zeros of the border and lets a convolution run
        as one matrix product. ``Resources.windows = False`` turns them off.
        """
        return _resources.current().windows and self.num_entries < math.prod(self.full)

    def layout(self) -> tuple[Tensor, Tensor]:
        """``(flat, inside)``, each ``(D, E)``: every entry's flat position in the map (clamped
        into it) and whether the entry is inside the map."""
        if self._layout is None:
            device = self.offsets.device
            grids = torch.meshgrid(
                *[torch.arange(s, device=device) for s in self.size], indexing="ij"
            )
            flat = torch.zeros((), dtype=torch.long, device=device)
            inside = torch.ones((), dtype=torch.bool, device=device)
            for axis, extent in enumerate(self.full):
                position = self.offsets[:, axis, None] + grids[axis].reshape(1, -1)
                inside = inside & (position >= 0) & (position < extent)
                flat = flat * extent + position.clamp(0, extent - 1)
            self._layout = (flat, inside)
        return self._layout

    def gather(self, values: Tensor) -> Tensor:
        """``(*L, B, C, *full)`` -> ``(*L, D, B, C, *size)``: the values under each window, 0
        outside, for any leading axes ``L`` (the entries of a Taylor table at once).

        ``torch.gather`` with the positions broadcast over the maps: several times faster on a
        CPU than advanced indexing, and one call serves a whole table.
        """
        flat, inside = self.layout()
        maps = values.shape[: values.dim() - len(self.full)]  # (*L, B, C)
        source = values.reshape(-1, math.prod(self.full))
        picked = source.gather(1, flat.reshape(1, -1).expand(source.shape[0], -1))
        picked = picked.reshape(*maps, *flat.shape) * inside  # (*L, B, C, D, E)
        picked = picked.movedim(-2, len(maps) - 2)  # (*L, D, B, C, E)
        return picked.reshape(*picked.shape[:-1], *self.size)

    def scatter(self, series: Tensor) -> Tensor:
        """``(m, D, B, C, *size)`` -> the dense series ``(m, D, B, C, *full)``."""
        m, d, b, c = series.shape[:4]
        if series.device.type == "cpu" and m * b * c * self.num_entries >= _SLICE_COPY_ENTRIES:
            return self._scatter_by_slices(series)
        flat, inside = self.layout()
        direction = torch.arange(d, device=flat.device)[:, None].expand_as(flat)[inside]
        entry = torch.arange(flat.shape[1], device=flat.device).expand_as(flat)[inside]
        source = series.reshape(m, d, b * c, -1)
        dense = series.new_zeros((m, d, b * c, math.prod(self.full)))
        dense[:, direction, :, flat[inside]] = source[:, direction, :, entry]
        return dense.reshape(m, d, b, c, *self.full)

    def _scatter_by_slices(self, series: Tensor) -> Tensor:
        """:meth:`scatter` as one slice copy per direction: on a CPU, cheaper than advanced
        indexing once a direction's window holds many values (the MNIST CNN's second convolution
        at order 10: 2.2 ms instead of 3.1 ms per chunk of 24 directions), and without its
        temporary copy of the windows."""
        m, d, b, c = series.shape[:4]
        dense = _workspace.zeros(series, (m, d, b, c, *self.full))
        for direction, offset in enumerate(self.offsets.tolist()):
            target: list[slice | int] = [slice(None), direction, slice(None), slice(None)]
            source = list(target)
            for start, width, extent in zip(offset, self.size, self.full, strict=True):
                low, high = max(start, 0), min(start + width, extent)
                target.append(slice(low, max(high, low)))
                source.append(slice(low - start, max(high, low) - start))
            dense[tuple(target)] = series[tuple(source)]
        return dense

    def average_pool(self, series: Tensor, stride: tuple[int, ...]) -> tuple[Tensor, Window | None]:
        """Average pooling with kernel == stride and no padding: the pooled series and its
        window, or the dense series and ``None`` once windows no longer pay.

        Linear, and the same for every direction up to its offset modulo the stride: one small
        matrix per direction (:meth:`_pooling_matrices`) applied as one batched product; if the
        result is dense, the matrix places the pooled entries in the map as well. On a CPU that
        is 8-16x faster than shifting, padding and block-averaging the windows (the MNIST CNN
        at order 10: 0.4 ms instead of 7 ms per chunk of 25 directions).
        """
        window = self._pooled_window(stride)
        matrices = self._pooling_matrices(window, stride, series.dtype)  # (D, E, E')
        dense = not window.is_worthwhile()
        if dense:
            matrices = torch.bmm(matrices, window._placement(series.dtype))  # (D, E, *full)
        m, d, b, c = series.shape[:4]
        windows = series.reshape(m * d, b * c, self.num_entries)
        per_coefficient = matrices.expand(m, *matrices.shape).reshape(m * d, *matrices.shape[1:])
        pooled = _workspace.empty(series, (m * d, b * c, matrices.shape[2]))
        torch.bmm(windows, per_coefficient, out=pooled)
        if dense:
            return pooled.reshape(m, d, b, c, *window.full), None
        return pooled.reshape(m, d, b, c, *window.size), window

    def _placement(self, dtype: torch.dtype) -> Tensor:
        """``(D, E, prod(full))``: 1 where a window entry inside the map sits in the map."""
        flat, inside = self.layout()
        return F.one_hot(flat, math.prod(self.full)).to(dtype) * inside[..., None]

    def _pooling_matrices(
        self, window: Window, stride: tuple[int, ...], dtype: torch.dtype
    ) -> Tensor:
        """``(D, E, E')``: the pooled window's entries as weighted sums of this window's.

        Entry ``e`` of a direction sits at map position ``offset + e``, inside pooled entry
        ``(offset mod stride + e) // stride`` (per axis), with weight ``1 / stride``. Pooled
        entries outside the map (past its last full block) get no weight: the invariant.
        """
        device = self.offsets.device
        step = torch.tensor(stride, device=device)
        shift = self.offsets - window.offsets * step  # (D, nd), in [0, stride)
        matrices = torch.ones((self.offsets.shape[0], 1, 1), dtype=dtype, device=device)
        for axis, s in enumerate(stride):
            entry = torch.arange(self.size[axis], device=device)
            pooled = torch.arange(window.size[axis], device=device)
            target = torch.div(shift[:, axis, None] + entry, s, rounding_mode="floor")
            axis_matrix = (target[:, :, None] == pooled).to(dtype) / s  # (D, w, w')
            d, rows, columns = matrices.shape
            matrices = matrices[:, :, None, :, None] * axis_matrix[:, None, :, None, :]
            matrices = matrices.reshape(d, rows * self.size[axis], columns * window.size[axis])
        _, inside = window.layout()
        return matrices * inside[:, None, :]

    def max_pool(
        self, series: Tensor, indices: Tensor, stride: tuple[int, ...]
    ) -> tuple[Tensor, Window]:
        """Max pooling with kernel == stride and no padding, window to window.

        Each output copies the input entry that is largest at the primal: ``indices``
        ``(B, C, *pooled)`` holds its flat position in the input map (PyTorch's
        ``return_indices``). An output keeps a direction's value only where that entry lies in
        the direction's window.
        """
        window = self._pooled_window(stride)
        source = window.gather(indices)  # (D, B, C, *size): flat input positions
        _, inside = window.layout()
        valid = inside.reshape(inside.shape[0], 1, 1, *window.size)
        relative = torch.zeros_like(source)
        remainder = source
        coordinates = []
        for extent in reversed(self.full):
            coordinates.append(remainder % extent)
            remainder = remainder // extent
        coordinates.reverse()
        for axis, coordinate in enumerate(coordinates):
            shift = self.offsets[:, axis].reshape(-1, 1, 1, *([1] * len(window.size)))
            entry = coordinate - shift
            valid = valid & (entry >= 0) & (entry < self.size[axis])
            relative = relative * self.size[axis] + entry.clamp(0, self.size[axis] - 1)
        m, d = series.shape[:2]
        b, c = source.shape[1:3]
        flat = series.expand(m, d, b, c, *self.size).flatten(4)
        index = relative.flatten(3).unsqueeze(0).expand(m, d, b, c, -1)
        picked = flat.gather(-1, index).reshape(m, d, b, c, *window.size)
        return picked * valid, window

    def _pooled_window(self, stride: tuple[int, ...]) -> Window:
        """The windows after a block pooling: a block is touched if any of its entries is."""
        step = torch.tensor(stride, device=self.offsets.device)
        offsets = torch.div(self.offsets, step, rounding_mode="floor")
        size = tuple(-(-(w + s - 1) // s) for w, s in zip(self.size, stride, strict=True))
        full = tuple(f // s for f, s in zip(self.full, stride, strict=True))
        return Window(offsets, size, full)


def block_mean(values: Tensor, block: tuple[int, ...]) -> Tensor:
    """Mean over disjoint ``block``-sized blocks of the trailing axes (a partial last block is
    dropped, as pooling's floor mode does).

    A sum of strided views: faster on CPU than ``avg_pool`` on the many small maps of a series.
    """
    first = values.dim() - len(block)
    sizes = [values.shape[first + axis] // step for axis, step in enumerate(block)]
    views = []
    for phase in itertools.product(*(range(step) for step in block)):
        index = [slice(None)] * first + [
            slice(p, p + step * size, step)
            for p, step, size in zip(phase, block, sizes, strict=True)
        ]
        views.append(values[tuple(index)])
    if len(views) == 1:
        return views[0] * 1.0
    # The first sum allocates the result: one pass fewer than copying the first view.
    total = views[0] + views[1]
    for view in views[2:]:
        total.add_(view)
    return total.mul_(1.0 / math.prod(block))
