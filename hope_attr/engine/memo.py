"""Values that depend on the expansion point only, computed once and shared by every chunk.

An expansion pushes its directions through the model chunk by chunk, and each chunk runs the whole
forward again: every rule recomputes its layer's primal, and the Taylor tables at it, although
they are the same for all chunks (resnet18 at 224 px with 40 chunks: about 15 % of the time).
Rules compute such values with :func:`cached`. While a :class:`PrimalMemo` is active on the thread
(:class:`~hope_attr.engine.expansion.Expansion` sets one when it runs several chunks), the first
chunk records them and the later ones read them back; anywhere else :func:`cached` just calls.

A call is keyed by the function and its arguments, a tensor by what identifies its values: its
storage, offset, shape, strides, dtype, device and version counter. So a view made afresh in every
chunk (a flatten) still finds the values below it, an in-place change of an argument misses, and
since the memo holds its key tensors, their storage cannot be handed to another tensor while it
lives. A stored result that was changed in place is not served. Only the first chunk stores, and
only up to a byte budget: the memo never holds more than one pass's primals.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hope_attr.engine import scope as _scope


class _Unkeyable(Exception):
    """An argument the memo cannot identify by value (a lambda, a module...): just call."""


class PrimalMemo:
    """Results of :func:`cached` calls, recorded by one pass and served to the later ones.

    Args:
        budget_bytes: stop storing once the stored tensors take this much memory.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.recording = True
        self.stored_bytes = 0
        self.hits = 0
        self.misses = 0
        # key -> (result, the tensors of the key, kept alive, and the result's versions)
        self._values: dict[tuple, tuple[Any, list[Tensor], tuple[int, ...]]] = {}

    def call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        held: list[Tensor] = []
        try:
            key = (fn, _key(args, held), _key(tuple(sorted(kwargs.items())), held))
        except _Unkeyable:
            return fn(*args, **kwargs)
        entry = self._values.get(key)
        if entry is not None and _versions(entry[0]) == entry[2]:
            self.hits += 1
            return entry[0]
        self.misses += 1
        result = fn(*args, **kwargs)
        if self.recording and entry is None:
            size = _bytes(result)
            if self.stored_bytes + size <= self.budget_bytes:
                self.stored_bytes += size
                self._values[key] = (result, held, _versions(result))
        return result


def cached(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, from the memo the current call activated where it holds the
    result (:mod:`hope_attr.engine.scope`).

    ``fn`` must be a pure function of its arguments (same values in, same values out), stable in
    identity (a module-level function, not a lambda made per call), and the caller must not
    change its result in place.
    """
    memo = _scope.current().memo
    if memo is None:
        return fn(*args, **kwargs)
    return memo.call(fn, args, kwargs)


def _key(value: Any, held: list[Tensor]) -> Any:
    if isinstance(value, Tensor):
        if value.layout != torch.strided or value.is_nested:
            raise _Unkeyable
        try:
            version = value._version  # inference tensors have none
            pointer = value.untyped_storage().data_ptr()
        except RuntimeError as error:
            raise _Unkeyable from error
        held.append(value)
        return (Tensor, pointer, value.storage_offset(), tuple(value.shape), value.stride(),
                value.dtype, value.device, version)  # fmt: skip
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_key(v, held) for v in value))
    if isinstance(value, float):
        # -0.0 == 0.0 and they hash alike, but functions may tell them apart.
        return (float, value, math.copysign(1.0, value))
    if value is None or isinstance(value, (bool, int, str, torch.dtype, torch.device)):
        return (type(value), value)
    raise _Unkeyable


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _versions(value: Any) -> tuple[int, ...]:
    return tuple(t._version for t in _tensors(value))


def _bytes(value: Any) -> int:
    return sum(t.untyped_storage().nbytes() for t in _tensors(value))
