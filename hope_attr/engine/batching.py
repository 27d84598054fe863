"""Additional forward arguments that belong to examples: they follow their examples.

A forward may take extra arguments beside the inputs (``forward(x, mask)``, Captum's
``additional_forward_args``). When a call evaluates the model on a selection of the batch (reverse
mode runs slices of it, continuation evaluates paths of chosen examples), every tensor among them
whose first axis has the batch's size is taken to be per example and is indexed alike; this holds
at any depth of tuples, lists and dicts (``forward(x, [bias, scale])``), as in Captum's own
expansion of top-level tensors. Everything else passes through unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["follow_examples"]


def follow_examples(value: Any, index: Any, batch: int) -> Any:
    """``value`` with every tensor whose first axis has size ``batch`` indexed by ``index``.

    Example:
        >>> import torch
        >>> extra = ([torch.arange(3), 0.5], {"w": torch.ones(2, 2)})
        >>> follow_examples(extra, torch.tensor([2, 2]), batch=3)
        ([tensor([2, 2]), 0.5], {'w': tensor([[1., 1.],
                [1., 1.]])})
    """
    if isinstance(value, Tensor):
        return value[index] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(follow_examples(v, index, batch) for v in value)
    if isinstance(value, list):
        return [follow_examples(v, index, batch) for v in value]
    if isinstance(value, dict):
        return {k: follow_examples(v, index, batch) for k, v in value.items()}
    return value
