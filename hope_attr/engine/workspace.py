"""Large buffers reused by the chunks of one expansion, so the C allocator keeps its pages.

An expansion runs the model once per chunk of directions, and every chunk allocates the same large
series again: a tanh's coefficients and its slope series, a window scatter's dense map (16 MiB
each on the MNIST CNN at order 10, 25 directions, batch 16). With glibc's default settings such
blocks come either from ``mmap`` or from the top of the heap, and both go back to the kernel on
``free`` (unmapped, or trimmed once the free top passes a threshold), so the next chunk faults
every page in again: 0.25-0.45 million page faults per call on that CNN, half its time, in a
pattern that depends on what the process allocated before. Environment variables
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``) fix it process-wide, which a library may not
impose; keeping the buffers alive across the chunks fixes it for our allocations only.

While a :class:`Workspace` is active on the thread (:class:`~hope_attr.engine.expansion.Expansion`
sets one on a CPU for the chunks whose shapes repeat), :func:`empty` hands out a kept buffer of the
requested shape that nothing else uses any more, or allocates one and keeps it. Anywhere else,
and on other devices (CUDA's caching allocator already reuses memory), it just allocates.

"Nothing else uses it" is read from the storage's reference count: the workspace hands out a
*view* of its buffer, so every live tensor that shares the memory (the view, views of it, a
memo entry holding it) counts, and a buffer is reused only when the workspace's own reference
is the last. The count is a private PyTorch function; without it nothing is reused.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hope_attr.engine import scope as _scope

__all__ = ["Workspace", "empty", "zeros"]

# Smaller blocks stay on glibc's reused heap anyway (its mmap threshold starts at 128 KiB and
# rises with the blocks freed); keeping them would only cost the scan.
_MIN_BYTES = 2**20
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


class Workspace:
    """Buffers kept for the chunks of one call.

    Args:
        budget_bytes: keep no more than this much memory; larger requests just allocate.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.kept_bytes = 0
        self.reused = 0
        self._buffers: dict[tuple, list[Tensor]] = {}

    def empty(self, like: Tensor, shape: tuple[int, ...]) -> Tensor:
        """An uninitialized tensor of ``shape`` with ``like``'s dtype and device."""
        key = (tuple(shape), like.dtype, like.device)
        kept = self._buffers.setdefault(key, [])
        for buffer in kept:
            if _only_reference(buffer):
                self.reused += 1
                return buffer.view(buffer.shape)
        buffer = like.new_empty(shape)
        size = buffer.numel() * buffer.element_size()
        if size < _MIN_BYTES or self.kept_bytes + size > self.budget_bytes:
            return buffer
        self.kept_bytes += size
        kept.append(buffer)
        return buffer.view(buffer.shape)


def _only_reference(buffer: Tensor) -> bool:
    # The buffer's own reference and the temporary storage object made to ask: 2.
    storage = buffer.untyped_storage()
    return _storage_use_count(storage._cdata) == 2


def empty(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``like.new_empty(shape)``, from the workspace the current call activated, if any
    (:mod:`hope_attr.engine.scope`).

    The caller must write every entry before reading it, and must not keep the result beyond the
    call in any way other than holding it (or views of it): the workspace sees those.
    """
    workspace = _scope.current().workspace
    if workspace is None or like.device.type != "cpu" or _storage_use_count is None:
        return like.new_empty(shape)
    return workspace.empty(like, shape)


def zeros(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``like.new_zeros(shape)``, from the workspace the current call activated, if any."""
    return empty(like, shape).zero_()
