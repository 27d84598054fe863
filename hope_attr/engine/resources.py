"""The one resource policy: how much memory a call may use, and which speed paths it may take.

Every budget and switch the engine consults lives in :class:`Resources`, a frozen value. A call
reads the policy of its thread once, when its :class:`~hope_attr.engine.expansion.Expansion` is
built; :func:`resources` changes it for the calls made inside a ``with`` block, in that thread
only (the default policy is shared by all threads and never changes). Nothing here touches
process state: torch's thread count, environment variables and files are the user's.

What each speed path is, and what it costs when it is off:

* ``primal_memo`` (:mod:`hope_attr.engine.memo`): the primal values and Taylor tables that every
  chunk of directions recomputes, kept from the first chunk. Off: each chunk recomputes them.
* ``workspace`` (:mod:`hope_attr.engine.workspace`): the largest buffers of one chunk, reused by
  the next chunk of the same shape, so that the allocator does not fault in fresh pages. Off:
  fresh buffers per chunk.
* ``windows`` (:mod:`hope_attr.engine.windows`): one-feature directions stored as receptive-field
  windows through the first convolution, activation and pooling. Off: dense series.
* ``native_kernel`` (:mod:`hope_attr.engine.native`): the compiled recurrence for tanh, sigmoid
  and exp series, where it was built at install time. Off: the same recurrence as torch
  operations. ``HOPE_ATTR_NATIVE=0`` in the environment makes off the default.
* ``reverse_mode`` (:mod:`hope_attr.engine.reverse`): one backward pass per output instead of
  jets, for locally affine models or order 1, when it is cheaper. Off: always jets.

Every path gives the same numbers up to rounding; the tests run each both ways.

Example:
    >>> import torch, hope_attr
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).double().eval()
    >>> x = torch.rand(1, 3, dtype=torch.float64)
    >>> with hope_attr.resources(directions_per_chunk=1, native_kernel=False):
    ...     slow = hope_attr.unmixed_derivatives(model, x, order=3)
    >>> torch.allclose(slow, hope_attr.unmixed_derivatives(model, x, order=3))
    True
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["Resources", "current", "resources"]

_MiB = 2**20


def _native_default() -> bool:
    return os.environ.get("HOPE_ATTR_NATIVE", "1") != "0"


@dataclass(frozen=True)
class Resources:
    """Budgets (bytes) and switches for the calls of one thread; see the module docstring.

    The byte budgets are for a CPU; on a GPU the series, memo and graph budgets become
    ``gpu_share_of_free_memory`` of the device's free memory when that is larger (every chunk
    costs hundreds of kernel launches there, so fewer, larger chunks win).
    """

    # Chunks of directions. The series of one activation may take ``series_budget_bytes`` (with
    # the ~4 temporaries of a nonlinearity); on a CPU a chunk is capped at
    # ``cpu_cache_budget_bytes`` of series, but never below ``min_cache_chunk`` directions,
    # where the per-chunk overhead (dispatch, the primal's tables) would dominate. Measured with
    # benchmarks/default_env.py's CNN (batch 16, 2 threads), ms per call at order 10 all classes
    # / order 4 one class for chunks of a fixed size: 8: 666 / 353, 16: 600 / 243, 32: - / 204,
    # 64: - / 208; the 64 MiB bound alone: 690 / 225; capped at 32 MiB: 586-604 / 210-225.
    series_budget_bytes: int = 64 * _MiB
    cpu_cache_budget_bytes: int = 32 * _MiB
    min_cache_chunk: int = 16
    # A fixed number of directions per chunk instead of the budgets above (None: the budgets).
    directions_per_chunk: int | None = None
    # Reverse mode keeps the forward's values for its backward passes: the batch runs in slices
    # whose values take at most this much (resnet18 at 224 px: 31 MiB per image).
    graph_budget_bytes: int = 512 * _MiB
    # The primal values shared by the chunks (resnet18, one 224 px image: 42 MiB).
    memo_budget_bytes: int = 256 * _MiB
    # The buffers the chunks of one CPU call reuse: the largest series' few kept copies.
    workspace_budget_bytes: int = 128 * _MiB
    gpu_share_of_free_memory: float = 0.25
    # mixed_derivatives / expand: the largest result and the most multiply-adds accepted
    # (refused up front, with the size and the fix), the points per block of the jets route and
    # the series bytes per chunk of its directions, and the points per block of the MLP route.
    max_mixed_result_bytes: int = 2 * 2**30
    max_mixed_work: int = 10**11
    mixed_block_bytes: int = 4 * _MiB
    mixed_chunk_bytes: int = 16 * _MiB
    mlp_block_bytes: int = 8 * _MiB
    # The speed paths (module docstring).
    primal_memo: bool = True
    workspace: bool = True
    windows: bool = True
    native_kernel: bool = field(default_factory=_native_default)
    reverse_mode: bool = True

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "directions_per_chunk" and value is None:
                continue
            if item.type in ("int", "int | None") and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"Resources.{item.name} must be a positive int, got {value!r}")
            if item.type == "bool" and not isinstance(value, bool):
                raise TypeError(f"Resources.{item.name} must be True or False, got {value!r}")
        if not 0.0 < self.gpu_share_of_free_memory <= 1.0:
            raise ValueError(
                "Resources.gpu_share_of_free_memory must be in (0, 1], got "
                f"{self.gpu_share_of_free_memory!r}"
            )

    def series_budget(self, device: torch.device) -> int:
        """Bytes the series of one activation may take on ``device``."""
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return max(self.series_budget_bytes, int(free * self.gpu_share_of_free_memory))
        return self.series_budget_bytes

    def graph_budget(self, device: torch.device) -> int:
        """Bytes the values autograd keeps for one reverse-mode slice of the batch may take."""
        return self.series_budget(device) if device.type == "cuda" else self.graph_budget_bytes

    def memo_budget(self, device: torch.device) -> int:
        """Bytes the primal memo may keep (a larger batch keeps the first layers' only)."""
        return self.series_budget(device) if device.type == "cuda" else self.memo_budget_bytes


_DEFAULT = Resources()
_local = threading.local()


def current() -> Resources:
    """The policy in force for calls made now in this thread."""
    return getattr(_local, "resources", _DEFAULT)


@contextmanager
def resources(**changes: object) -> Iterator[Resources]:
    """Use a changed resource policy for the calls made inside the block, in this thread only.

    Args:
        **changes: fields of :class:`Resources` and their new values; the others keep the
            policy in force (so blocks nest).

    Yields:
        The policy in force inside the block.

    Raises:
        TypeError: a name that is not a field of :class:`Resources`.
        ValueError: a value out of range.

    Example:
        >>> import hope_attr
        >>> with hope_attr.resources(series_budget_bytes=2**20) as policy:
        ...     policy.series_budget_bytes
        1048576
    """
    names = {item.name for item in dataclasses.fields(Resources)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(
            f"unknown resource setting(s) {unknown}; the settings are the fields of "
            f"hope_attr.Resources: {sorted(names)}"
        )
    previous = current()
    policy = dataclasses.replace(previous, **changes)
    _local.resources = policy
    try:
        yield policy
    finally:
        _local.resources = previous
