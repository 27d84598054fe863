"""Receptive-field windows (hope_attr/engine/windows.py) against the nested-jvp oracle.

The windowed path must give exactly what the dense rules give, at the map's edges (padding,
windows hanging over the border, partial pooling blocks) and across chunks of directions.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hope_attr
from hope_attr.engine import windows as _windows
from tests.oracle import relative_error, unmixed_reference

ORDER = 5
TOLERANCE = 1e-9

STEMS: dict[str, tuple[nn.Module, tuple[int, ...]]] = {
    "conv-tanh-pool-conv-tanh-pool": (
        nn.Sequential(
            nn.Conv2d(1, 4, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 3, 3),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(12, 3),
        ),
        (2, 1, 16, 16),
    ),  # fmt: skip
    "padding, 2 channels, pool 3 with a partial block": (
        nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.Sigmoid(),
            nn.AvgPool2d(3),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(100, 2),
        ),
        (2, 2, 16, 16),
    ),  # fmt: skip
    "rectangular kernel, ReLU slope, anisotropic pool": (
        nn.Sequential(
            nn.Conv2d(1, 3, (3, 5), padding=(2, 1)),
            nn.ReLU(),
            nn.AvgPool2d((2, 3)),
            nn.Softplus(),
            nn.Flatten(),
            nn.Linear(3 * 7 * 3, 2),
        ),
        (1, 1, 12, 13),
    ),  # fmt: skip
    "Conv1d-GELU-AvgPool1d": (
        nn.Sequential(
            nn.Conv1d(2, 3, 4),
            nn.GELU(),
            nn.AvgPool1d(2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(24, 2),
        ),
        (2, 2, 20),
    ),  # fmt: skip
    "Conv3d-tanh-AvgPool3d": (
        nn.Sequential(
            nn.Conv3d(1, 2, 3), nn.Tanh(), nn.AvgPool3d(2), nn.Flatten(), nn.Linear(54, 2)
        ),
        (1, 1, 8, 8, 8),
    ),
    "ReLU and max pooling (the tutorial's LRP variant)": (
        nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Tanh(),
            nn.Conv2d(3, 2, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(12, 2),
        ),
        (2, 1, 15, 16),
    ),  # fmt: skip
    "MaxPool1d with a partial block, returning indices": (
        lambda x: nn.functional.softplus(_MAX_POOL_WITH_INDICES(torch.tanh(_CONV1D(x)))[0]).sum(2),
        (2, 2, 17),
    ),
    "functional pooling and a residual on the window": (
        lambda x: torch.nn.functional.avg_pool2d(torch.tanh(_CONV(x)) + _CONV(x), 2).sum((2, 3)),
        (2, 1, 12, 12),
    ),
    "a second convolution on the windows (they stay windowed)": (
        nn.Sequential(
            nn.Conv2d(1, 2, 3),
            nn.Tanh(),
            nn.Conv2d(2, 3, 3, padding=1),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(3 * 9 * 9, 2),
        ),
        (2, 1, 20, 20),
    ),  # fmt: skip
    "a grouped, padded second convolution whose windows cover the map (scattered)": (
        nn.Sequential(
            nn.Conv2d(2, 4, 3),
            nn.Sigmoid(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 4, (3, 5), padding=(2, 1), groups=2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(4 * 6 * 2, 2),
        ),
        (2, 2, 11, 11),
    ),  # fmt: skip
    "Conv1d on Conv1d windows": (
        nn.Sequential(
            nn.Conv1d(2, 3, 4),
            nn.GELU(),
            nn.Conv1d(3, 2, 3),
            nn.Tanh(),
            nn.AvgPool1d(2),
            nn.Flatten(),
            nn.Linear(2 * 13, 2),
        ),
        (2, 2, 32),
    ),  # fmt: skip
}
_CONV = nn.Conv2d(1, 2, 3).double()
_CONV1D = nn.Conv1d(2, 3, 4).double()
_MAX_POOL_WITH_INDICES = nn.MaxPool1d(3, return_indices=True)


@pytest.fixture
def window_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts how often windows are pooled and scattered, to prove the windowed path ran."""
    calls = {"average_pool": 0, "max_pool": 0, "scatter": 0}
    for name in calls:
        original = getattr(_windows.Window, name)

        def spy(self, *args, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(_windows.Window, name, spy)
    return calls


@pytest.mark.parametrize("name", list(STEMS))
def test_windowed_stem_matches_nested_jvp(name: str, window_calls: dict[str, int]) -> None:
    torch.manual_seed(0)
    model, shape = STEMS[name]
    if isinstance(model, nn.Module):
        model = model.double().eval()
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # 37 directions per chunk: chunks start mid-row and mid-channel.
    actual = hope_attr.unmixed_derivatives(model, x, ORDER, directions_per_chunk=37)
    expected = unmixed_reference(model, x, ORDER)
    assert relative_error(actual, expected) <= TOLERANCE
    assert window_calls["scatter"] > 0
    if "residual" not in name:
        assert window_calls["average_pool"] + window_calls["max_pool"] > 0


@pytest.mark.parametrize(
    "name", [name for name in STEMS if "second convolution" in name or "on Conv1d" in name]
)
def test_second_convolution_runs_on_the_windows(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The convolution of windowed series must take the windowed path (else the stems above
    would test the dense path twice)."""
    from hope_attr.rules import linear as _rules_linear

    calls = []
    original = _rules_linear._conv_window
    monkeypatch.setattr(
        _rules_linear, "_conv_window", lambda *args: calls.append(1) or original(*args)
    )
    model, shape = STEMS[name]
    hope_attr.unmixed_derivatives(model.double().eval(), torch.randn(shape, dtype=torch.float64), 2)
    assert calls


@pytest.mark.parametrize("as_matrix", [False, True])
@pytest.mark.parametrize(
    "name", [name for name in STEMS if "second convolution" in name or "on Conv1d" in name]
)
def test_both_ways_to_convolve_windows_match_nested_jvp(
    name: str, as_matrix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window's convolution as a matrix product or as a padded convolution: both exact."""
    from hope_attr.rules import linear as _rules_linear

    chosen = []
    monkeypatch.setattr(
        _rules_linear, "_window_matrix_pays", lambda *args: chosen.append(1) or as_matrix
    )
    model, shape = STEMS[name]
    model = model.double().eval()
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    actual = hope_attr.unmixed_derivatives(model, x, 3, directions_per_chunk=37)
    assert chosen
    assert relative_error(actual, unmixed_reference(model, x, 3)) <= TOLERANCE


@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (nn.Conv2d(4, 6, (3, 5), groups=2), (2, 3)),
        (nn.Conv1d(3, 2, 4), (3,)),
        (nn.Conv3d(2, 2, 3), (2, 2, 1)),
    ],
)
def test_window_matrix_is_the_full_correlation(conv: nn.Module, size: tuple[int, ...]) -> None:
    from hope_attr.rules import linear as _rules_linear

    weight = conv.weight.detach().double()
    windows = torch.randn(5, weight.shape[1] * conv.groups, *size, dtype=torch.float64)
    matrix = _rules_linear._window_matrix(weight, size, conv.groups)
    padding = tuple(k - 1 for k in weight.shape[2:])
    function = (F.conv1d, F.conv2d, F.conv3d)[len(size) - 1]
    expected = function(windows, weight, None, 1, padding, 1, conv.groups)
    assert torch.allclose(windows.reshape(5, -1) @ matrix, expected.reshape(5, -1), atol=1e-12)


def test_window_is_skipped_when_it_covers_most_of_the_map(window_calls: dict[str, int]) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten()).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    actual = hope_attr.unmixed_derivatives(model, x, 3)
    assert relative_error(actual, unmixed_reference(model, x, 3)) <= TOLERANCE
    assert window_calls["scatter"] == 0


@pytest.mark.parametrize("by_slices", [False, True])
def test_gather_and_scatter_agree_with_dense_indexing(
    by_slices: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both ways to scatter: advanced indexing, and one slice copy per direction (large windows).
    monkeypatch.setattr(_windows, "_SLICE_COPY_ENTRIES", 0 if by_slices else 10**12)
    offsets = torch.tensor([[-1, 2], [3, -2], [0, 0], [5, 1], [-2, -3]])
    window = _windows.Window(offsets, (2, 3), (4, 5))
    values = torch.arange(2 * 4 * 5, dtype=torch.float64).reshape(1, 2, 4, 5)
    gathered = window.gather(values)
    series = torch.randn(2, 5, 1, 2, 2, 3, dtype=torch.float64)
    dense = window.scatter(series)
    for d, (row, col) in enumerate(offsets.tolist()):
        for i in range(2):
            for j in range(3):
                r, c = row + i, col + j
                if 0 <= r < 4 and 0 <= c < 5:
                    assert torch.equal(gathered[d, 0, :, i, j], values[0, :, r, c])
                    assert torch.equal(dense[:, d, 0, :, r, c], series[:, d, 0, :, i, j])
                else:
                    assert torch.all(gathered[d, 0, :, i, j] == 0)
        # Every dense entry not covered by the window is zero.
        covered = torch.zeros(4, 5, dtype=torch.bool)
        covered[max(row, 0) : row + 2, max(col, 0) : col + 3] = True
        assert torch.all(dense[:, d, :, :, ~covered] == 0)


@pytest.mark.parametrize(
    ("stride", "size", "full"),
    [
        ((2, 2), (5, 4), (13, 17)),
        ((3, 3), (5, 4), (13, 17)),
        ((3, 2), (5, 4), (13, 17)),
        ((4, 1), (5, 4), (13, 17)),
        ((2,), (5,), (11,)),
        ((2, 3, 2), (3, 4, 2), (7, 9, 6)),
        ((2, 2), (7, 7), (8, 8)),  # the pooled window covers the map: a dense result
        ((2, 2), (7, 6), (9, 8)),  # ... past a partial last block
    ],
)
@pytest.mark.parametrize("batch", [2, 1])
def test_average_pool_of_windows_equals_pooling_the_dense_maps(
    stride: tuple[int, ...], size: tuple[int, ...], full: tuple[int, ...], batch: int
) -> None:
    """Every direction takes the block means of its own shift (offset mod stride); pooled
    entries past the map's last full block stay zero (the invariant)."""
    torch.manual_seed(0)
    starts = [torch.randint(-s + 1, f, (12,)) for s, f in zip(size, full, strict=True)]
    offsets = torch.stack(starts, 1)
    window = _windows.Window(offsets, size, full)
    _, inside = window.layout()
    series = torch.randn(3, 12, batch, 2, *size, dtype=torch.float64)
    series = series * inside.reshape(1, 12, 1, 1, *size)  # the invariant: zero outside the map
    pooled, pooled_window = window.average_pool(series, stride)
    expected = _windows.block_mean(window.scatter(series), stride)
    dense_pooled = tuple(f // s for f, s in zip(full, stride, strict=True))
    pooled_size = tuple(-(-(w + s - 1) // s) for w, s in zip(size, stride, strict=True))
    if math.prod(pooled_size) >= math.prod(dense_pooled):  # as large as the map: dense
        assert pooled_window is None
        torch.testing.assert_close(pooled, expected, rtol=1e-14, atol=1e-15)
        assert pooled.shape == (3, 12, batch, 2, *dense_pooled)
        return
    torch.testing.assert_close(pooled_window.scatter(pooled), expected, rtol=1e-14, atol=1e-15)
    _, pooled_inside = pooled_window.layout()
    outside = ~pooled_inside.reshape(1, 12, 1, 1, *pooled_window.size)
    assert torch.all(pooled.masked_select(outside) == 0)
    assert pooled.shape == (3, 12, batch, 2, *pooled_window.size)


def test_gather_serves_a_whole_table_at_once() -> None:
    """Leading axes (a Taylor table's entries) gather like separate calls, by dense indexing."""
    offsets = torch.tensor([[-1, 2], [3, -2], [0, 0]])
    window = _windows.Window(offsets, (2, 3), (4, 5))
    table = torch.randn(4, 2, 3, 4, 5, dtype=torch.float64)  # (entries, B, C, *full)
    gathered = window.gather(table)
    assert gathered.shape == (4, 3, 2, 3, 2, 3)
    for entry in range(4):
        assert torch.equal(gathered[entry], window.gather(table[entry]))
    for d, (row, col) in enumerate(offsets.tolist()):
        for i in range(2):
            for j in range(3):
                r, c = row + i, col + j
                inside = 0 <= r < 4 and 0 <= c < 5
                expected = table[..., r, c] if inside else torch.zeros(4, 2, 3).double()
                assert torch.equal(gathered[:, d, :, :, i, j], expected)


def test_default_chunks_are_sized_from_the_measured_series(policy, chunk_sizes) -> None:
    """With windows, the primal's shape overstates a direction's series: the first chunk is
    sized by that bound, measures the series and sizes the other chunks by what it saw."""
    from hope_attr.engine import expansion as _derivatives

    model, shape = STEMS["conv-tanh-pool-conv-tanh-pool"]
    model = model.double().eval()
    x = torch.rand(*shape, dtype=torch.float64)
    # The largest activation, the first conv's output, has 4 * 12 * 12 entries per example.
    bound = ORDER * 4 * 12 * 12 * shape[0] * 8 * _derivatives._TEMPORARY_COPIES
    policy(series_budget_bytes=20 * bound)
    sizes = chunk_sizes
    actual = hope_attr.unmixed_derivatives(model, x, ORDER)
    assert sizes[0] == 20 and len(sizes) >= 2 and sizes[1] > 20, sizes
    assert sum(sizes) == 256
    one_by_one = hope_attr.unmixed_derivatives(model, x, ORDER, directions_per_chunk=1)
    assert relative_error(actual, one_by_one) <= 1e-13
    assert relative_error(actual, unmixed_reference(model, x, ORDER)) <= TOLERANCE


def test_cpu_chunks_are_capped_for_the_caches_but_not_below_the_minimum(
    policy, chunk_sizes
) -> None:
    """On a CPU the chunk is capped by the cache budget, never below the minimum chunk: with a
    budget no direction fits, every chunk holds exactly the minimum (the last one the rest)."""

    model, shape = STEMS["conv-tanh-pool-conv-tanh-pool"]
    model = model.double().eval()
    x = torch.rand(*shape, dtype=torch.float64)
    policy(cpu_cache_budget_bytes=1, min_cache_chunk=24)
    sizes = chunk_sizes
    actual = hope_attr.unmixed_derivatives(model, x, ORDER)
    assert sizes == [24] * (256 // 24) + [256 % 24], sizes
    one_by_one = hope_attr.unmixed_derivatives(model, x, ORDER, directions_per_chunk=1)
    assert relative_error(actual, one_by_one) <= 1e-13
