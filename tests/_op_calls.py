"""Calls of torch operations for the rule property test (tests/test_rule_properties.py).

:func:`find_call` finds, for a torch function or tensor method and an input shape, arguments it
accepts: a call of one of the generic signatures below on plain float64 tensors that runs and
returns a finite floating-point result (trying three input domains: any sign, (0.2, 0.8) for
logarithms and inverse sines, (1.2, 2) for ``acosh``). Operations whose arguments no generic
signature can make (weights, indices, equations) have a builder in :data:`SPECIAL`.

Nothing here uses hope_attr: these are the calls the property test then makes on jets.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DTYPE = torch.float64


@dataclass
class Call:
    """``target(*args, **kwargs)``; every floating tensor among ``args`` (also inside lists) may
    be a jet, the first always is. ``query``: the result holds no floating tensor (a shape, an
    index, a truth value), which a jet must reproduce exactly."""

    args: tuple
    kwargs: dict
    query: bool = False


def _domains(shape: tuple[int, ...], generator: torch.Generator) -> Iterator[Tensor]:
    yield torch.randn(shape, dtype=DTYPE, generator=generator)
    yield 0.2 + 0.6 * torch.rand(shape, dtype=DTYPE, generator=generator)
    yield 1.2 + 0.8 * torch.rand(shape, dtype=DTYPE, generator=generator)


def _like(x: Tensor, generator: torch.Generator) -> Tensor:
    return 0.2 + 0.6 * torch.rand(x.shape, dtype=DTYPE, generator=generator)


def _signatures(x: Tensor, generator: torch.Generator) -> Iterator[tuple[tuple, dict]]:
    """Generic argument lists: the tensor alone, with a second or third tensor, a scalar, a
    dimension, a shape or a permutation."""
    y, z = _like(x, generator), _like(x, generator)
    last = x.dim() - 1 if x.dim() else 0
    yield (x,), {}
    yield (x, y), {}
    yield (x, 0.5), {}
    yield (x, 2), {}
    yield (x, last), {}
    yield (x, y, z), {}
    yield (x, y, 0.3), {}
    yield (x, last, True), {}
    yield (x, 2, last), {}
    yield (x, 0, last), {}
    yield (x, last, 0, 1), {}
    yield (x, tuple(x.shape)), {}
    yield (x, tuple(reversed(range(x.dim())))), {}
    yield (x, DTYPE), {}
    yield (x, y.mT if x.dim() >= 2 else y), {}
    yield ([x, y],), {}
    yield ([x, y], last), {}
    yield (x,), {"dim": last}


def _finite_floating(value: object) -> bool:
    """Whether ``value`` holds at least one floating tensor, and only finite ones."""
    leaves = list(flatten(value))
    floats = [v for v in leaves if isinstance(v, Tensor) and _inexact(v)]
    return bool(floats) and all(bool(torch.isfinite(v).all()) for v in floats)


def _inexact(value: Tensor) -> bool:
    return value.is_floating_point() or value.is_complex()


def flatten(value: object) -> Iterator[object]:
    """The leaves of nested tuples, lists and named tuples."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from flatten(item)
    else:
        yield value


def _runs(target: Callable[..., object], args: tuple, kwargs: dict, query: bool) -> bool:
    """Whether the call works on copies of its tensors (in-place ops must not change ours),
    deterministically (a random op gives two different results)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = target(*_copies(args), **kwargs)
            second = target(*_copies(args), **kwargs)
    except Exception:  # noqa: BLE001 - a signature the op does not take
        return False
    if query:
        leaves = list(flatten(first))
        return not any(isinstance(v, Tensor) and _inexact(v) for v in leaves)
    if not _finite_floating(first):
        return False
    pairs = zip(flatten(first), flatten(second), strict=False)
    return all(
        not isinstance(a, Tensor) or (a.shape == b.shape and torch.equal(a, b)) for a, b in pairs
    )


def _copies(value: object) -> object:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copies(v) for v in value)
    return value


def find_call(target: Callable[..., object], shape: tuple[int, ...], seed: int) -> Call | None:
    """A call of ``target`` with an input of ``shape`` that runs, or ``None``: one with a
    finite floating-point result if there is one, else one that answers a query."""
    special = _special(target)
    for query in (False, True):
        generator = torch.Generator().manual_seed(seed)
        for x in _domains(shape, generator):
            try:
                candidates = list([special(x, generator)] if special else _signatures(x, generator))
            except Exception:  # noqa: BLE001, S112 - a builder that needs another shape
                continue
            for args, kwargs in candidates:
                if _runs(target, args, kwargs, query):
                    return Call(args, kwargs, query)
    return None


def _special(target: object) -> Builder | None:
    """The builder of ``target``, or of its namesake function for a tensor method."""
    if target in SPECIAL:
        return SPECIAL[target]
    name = getattr(target, "__name__", "").rstrip("_")
    for candidate in (name, name.removesuffix("_copy")):  # x.add_ as torch.add, view_copy as view
        for home in (torch, F, torch.Tensor):
            namesake = getattr(home, candidate, None)
            if namesake is not None and namesake in SPECIAL:
                return SPECIAL[namesake]
    return None


# --------------------------------------------------------------------------- special arguments
def _weight(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=DTYPE, generator=torch.Generator().manual_seed(1))


def _image(x: Tensor, *shape: int) -> Tensor:
    """``x``'s entries, repeated to fill ``shape`` (default an image 1 x 2 x 3 x 3)."""
    shape = shape or (1, 2, 3, 3)
    flat = x.reshape(-1)
    size = math.prod(shape)
    return flat.repeat(math.ceil(size / max(flat.numel(), 1)))[:size].reshape(shape)


def _signal(x: Tensor) -> Tensor:
    return _image(x, 1, 2, 5)


def _volume(x: Tensor) -> Tensor:
    return _image(x, 1, 2, 3, 3, 3)


Builder = Callable[[Tensor, torch.Generator], tuple[tuple, dict]]
SPECIAL: dict[object, Builder] = {
    F.linear: lambda x, g: ((x, _weight(3, x.shape[-1] if x.dim() else 1)), {}),
    F.conv1d: lambda x, g: ((_signal(x), _weight(2, 2, 2)), {"padding": 1}),
    F.conv3d: lambda x, g: ((_volume(x), _weight(2, 2, 2, 2, 2)), {}),
    F.conv_transpose1d: lambda x, g: ((_signal(x), _weight(2, 3, 2)), {"stride": 2}),
    F.conv_transpose3d: lambda x, g: ((_volume(x), _weight(2, 1, 2, 2, 2)), {}),
    F.avg_pool1d: lambda x, g: ((_signal(x), 2), {}),
    F.avg_pool2d: lambda x, g: ((_image(x), 2), {"stride": 1}),
    F.avg_pool3d: lambda x, g: ((_volume(x), 2), {}),
    F.adaptive_avg_pool1d: lambda x, g: ((_signal(x), 2), {}),
    F.adaptive_avg_pool2d: lambda x, g: ((_image(x), 2), {}),
    F.adaptive_avg_pool3d: lambda x, g: ((_volume(x), 2), {}),
    F.max_pool1d: lambda x, g: ((_signal(x), 2), {}),
    F.max_pool2d: lambda x, g: ((_image(x), 2), {"stride": 1}),
    F.max_pool3d: lambda x, g: ((_volume(x), 2), {}),
    F.max_pool1d_with_indices: lambda x, g: ((_signal(x), 2), {}),
    F.max_pool2d_with_indices: lambda x, g: ((_image(x), 2), {}),
    F.max_pool3d_with_indices: lambda x, g: ((_volume(x), 2), {}),
    F.adaptive_max_pool1d: lambda x, g: ((_signal(x), 2), {}),
    F.adaptive_max_pool2d: lambda x, g: ((_image(x), 2), {}),
    F.adaptive_max_pool3d: lambda x, g: ((_volume(x), 2), {}),
    F.adaptive_max_pool1d_with_indices: lambda x, g: ((_signal(x), 2), {}),
    F.adaptive_max_pool2d_with_indices: lambda x, g: ((_image(x), 2), {}),
    F.adaptive_max_pool3d_with_indices: lambda x, g: ((_volume(x), 2), {}),
    F.dropout: lambda x, g: ((x,), {"training": False}),
    F.dropout1d: lambda x, g: ((_signal(x),), {"training": False}),
    F.dropout2d: lambda x, g: ((_image(x),), {"training": False}),
    F.dropout3d: lambda x, g: ((_volume(x),), {"training": False}),
    F.alpha_dropout: lambda x, g: ((x,), {"training": False}),
    F.feature_alpha_dropout: lambda x, g: ((_image(x),), {"training": False}),
    torch.Tensor.new_empty: lambda x, g: ((x, (2, 3)), {}),
    F.upsample: lambda x, g: ((_image(x),), {"scale_factor": 2, "mode": "nearest"}),
    torch.bmm: lambda x, g: ((_image(x)[0], _image(x)[0].mT.cos()), {}),
    torch.instance_norm: lambda x, g: (
        (_image(x), None, None, None, None, True, 0.1, 1e-5, False),
        {},
    ),
    torch.unflatten: lambda x, g: ((_image(x, 2, 6), 1, (2, 3)), {}),
    torch.Tensor.unfold: lambda x, g: ((_image(x, 2, 5), 1, 2, 1), {}),
    torch.unfold_copy: lambda x, g: ((_image(x, 2, 5), 1, 2, 1), {}),
    torch.dsplit: lambda x, g: ((_image(x, 2, 2, 4), 2), {}),
    torch.split_with_sizes: lambda x, g: ((_image(x, 2, 5), [2, 3], 1), {}),
    torch.Tensor.new_full: lambda x, g: ((x, (2, 3), 0.5), {}),
    torch.bucketize: lambda x, g: ((x, torch.tensor([0.0, 0.5], dtype=DTYPE)), {}),
    torch.searchsorted: lambda x, g: ((torch.tensor([0.0, 0.5], dtype=DTYPE), x), {}),
    torch.Tensor.item: lambda x, g: ((x.reshape(-1)[:1],), {}),
    torch.Tensor.__float__: lambda x, g: ((x.reshape(-1)[:1],), {}),
    torch.Tensor.__int__: lambda x, g: ((x.reshape(-1)[:1] + 3,), {}),
    torch.Tensor.__bool__: lambda x, g: ((x.reshape(-1)[:1],), {}),
    getattr: lambda x, g: ((_image(x, 2, 3), "mT"), {}),
    torch.imag: lambda x, g: ((torch.complex(x, _like(x, g)),), {}),
    torch.real: lambda x, g: ((torch.complex(x, _like(x, g)),), {}),
    F.conv2d: lambda x, g: ((_image(x), _weight(3, 2, 2, 2), _weight(3)), {"stride": 1}),
    F.conv_transpose2d: lambda x, g: ((_image(x), _weight(2, 3, 2, 2)), {"stride": 2}),
    F.embedding: lambda x, g: ((torch.tensor([[0, 2]]), x.reshape(-1, 1)), {}),
    F.batch_norm: lambda x, g: (
        (_image(x), _weight(2), _weight(2).abs() + 0.5, _weight(2), _weight(2)),
        {"training": False},
    ),
    F.layer_norm: lambda x, g: ((_image(x), (3, 3), _weight(3, 3), _weight(3, 3)), {}),
    F.group_norm: lambda x, g: ((_image(x), 2, _weight(2), _weight(2)), {}),
    F.instance_norm: lambda x, g: ((_image(x),), {}),
    F.rms_norm: lambda x, g: ((_image(x), (3,), _weight(3)), {}),
    F.pad: lambda x, g: ((_image(x), (1, 2, 0, 1)), {"mode": "reflect"}),
    F.interpolate: lambda x, g: ((_image(x),), {"scale_factor": 2, "mode": "bilinear"}),
    F.grid_sample: lambda x, g: (
        (_image(x), 0.8 * torch.rand(1, 2, 2, 2, dtype=DTYPE, generator=g) - 0.4),
        {"align_corners": False},
    ),
    F.affine_grid: lambda x, g: ((_weight(1, 2, 3), [1, 2, 3, 3]), {"align_corners": False}),
    F.scaled_dot_product_attention: lambda x, g: (
        (_image(x)[0], _image(x)[0] * 0.5, _image(x)[0].cos()),
        {},
    ),
    F.unfold: lambda x, g: ((_image(x), 2), {}),
    F.fold: lambda x, g: ((_weight(1, 8, 4), (3, 3), 2), {}),
    F.pixel_shuffle: lambda x, g: ((_image(x).reshape(1, 2, 3, 3).repeat(1, 2, 1, 1), 2), {}),
    F.pixel_unshuffle: lambda x, g: ((_image(x)[:, :, :2, :2], 2), {}),
    torch.einsum: lambda x, g: (("...i,...i->...", x, _like(x, g)), {}),
    torch.where: lambda x, g: ((x > 0.5, x, _like(x, g)), {}),
    torch.masked_fill: lambda x, g: ((x, x > 0.5, 0.25), {}),
    torch.gather: lambda x, g: ((x, -1, torch.zeros_like(x, dtype=torch.long)), {}),
    torch.take_along_dim: lambda x, g: ((x, torch.zeros_like(x, dtype=torch.long), -1), {}),
    torch.index_select: lambda x, g: ((x, -1, torch.tensor([0, 0])), {}),
    torch.index_fill: lambda x, g: ((x, -1, torch.tensor([0]), 0.3), {}),
    torch.index_copy: lambda x, g: ((x, 0, torch.tensor([0]), _like(x[:1], g)), {}),
    torch.index_add: lambda x, g: ((x, 0, torch.tensor([0]), _like(x[:1], g)), {}),
    torch.index_put: lambda x, g: ((x, (torch.tensor([0]),), _like(x[0], g)), {}),
    torch.scatter: lambda x, g: ((x, -1, torch.zeros_like(x, dtype=torch.long), _like(x, g)), {}),
    torch.scatter_add: lambda x, g: (
        (x, -1, torch.zeros_like(x, dtype=torch.long), _like(x, g)),
        {},
    ),
    torch.scatter_reduce: lambda x, g: (
        (x, -1, torch.zeros_like(x, dtype=torch.long), _like(x, g), "mean"),
        {},
    ),
    torch.masked_scatter: lambda x, g: ((x, x > 0.5, _like(x, g)), {}),
    torch.select_scatter: lambda x, g: ((x, _like(x[0], g), 0, 0), {}),
    torch.slice_scatter: lambda x, g: ((x, _like(x[:1], g)), {"dim": 0, "end": 1}),
    torch.diagonal_scatter: lambda x, g: ((x, _like(torch.diagonal(x), g)), {}),
    torch.lstm_cell: lambda x, g: (
        (x.reshape(1, -1), (_weight(1, 2), _weight(1, 2)), _weight(8, x.numel()), _weight(8, 2)),
        {},
    ),
    torch.gru_cell: lambda x, g: (
        (x.reshape(1, -1), _weight(1, 2), _weight(6, x.numel()), _weight(6, 2)),
        {},
    ),
    torch.rnn_tanh_cell: lambda x, g: (
        (x.reshape(1, -1), _weight(1, 2), _weight(2, x.numel()), _weight(2, 2)),
        {},
    ),
    torch.rnn_relu_cell: lambda x, g: (
        (x.reshape(1, -1), _weight(1, 2), _weight(2, x.numel()), _weight(2, 2)),
        {},
    ),
    torch.cdist: lambda x, g: ((x.reshape(1, -1, 1), _like(x, g).reshape(1, -1, 1)), {}),
    torch.view_as_complex: lambda x, g: ((x.reshape(-1).repeat(2).reshape(-1, 2),), {}),
    torch.view_as_real: lambda x, g: ((torch.complex(x, _like(x, g)),), {}),
    torch.complex: lambda x, g: ((x, _like(x, g)), {}),
    torch.polar: lambda x, g: ((x.abs() + 0.1, _like(x, g)), {}),
    operator.getitem: lambda x, g: ((x, (Ellipsis, slice(None, None, 2))), {}),
    torch.nan_to_num: lambda x, g: ((x,), {"nan": 0.5}),
    torch.repeat_interleave: lambda x, g: ((x, 2), {}),
    torch.diff: lambda x, g: ((x,), {"prepend": _like(x.narrow(-1, 0, 1), g)}),
    torch.kthvalue: lambda x, g: ((x, 1), {}),
    F.prelu: lambda x, g: ((_image(x), torch.tensor([0.25, 0.5], dtype=DTYPE)), {}),
    F.glu: lambda x, g: ((x.reshape(-1).repeat(2),), {}),
}
