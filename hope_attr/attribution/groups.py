"""Feature groups: the arithmetic between per-feature layouts and per-group ones.

A *group* is what moves to its baseline as one direction: a ``feature_mask`` id, or a single
feature where there is no mask (:func:`feature_ids` numbers them across the inputs, as Captum's
default mask does). Values per group live in a last axis ``G``; :func:`spread` writes them back
onto every feature of their group, FeatureAblation's layout.
"""

from __future__ import annotations

import torch
from captum._utils.common import _format_feature_mask
from torch import Tensor

__all__ = [
    "count",
    "directions",
    "feature_ids",
    "moved",
    "path_moves",
    "spread",
    "sum_once_per_group",
]


def feature_ids(inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Every feature its own group: ids numbered across the inputs, ``(B, *I)`` each.

    Example:
        >>> import torch
        >>> [ids[0].tolist() for ids in feature_ids((torch.zeros(2, 2), torch.zeros(2, 1)))]
        [[0, 1], [2]]
    """
    # Captum's default mask (batch 1), expanded to the batch: a view, not a copy per example.
    default = _format_feature_mask(None, inputs)
    return tuple(ids.expand_as(x) for ids, x in zip(default, inputs, strict=True))


def count(groups: tuple[Tensor, ...]) -> int:
    """The number ``G`` of groups: ids run ``0..G-1`` (:func:`format_feature_mask` checks it).

    Example:
        >>> import torch
        >>> count((torch.tensor([[0, 2]]), torch.tensor([[1]])))
        3
    """
    return int(max(int(g.max()) for g in groups)) + 1


def moved(
    baselines: tuple[Tensor, ...], inputs: tuple[Tensor, ...], groups: tuple[Tensor, ...]
) -> Tensor:
    """``(B, G)``: whether the group's move to its baseline is not zero.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 2.0]])
        >>> moved((torch.tensor([[1.0, 0.0]]),), (x,), (torch.tensor([[0, 1]]),)).tolist()
        [[False, True]]
    """
    moves = torch.zeros(inputs[0].shape[0], count(groups), device=inputs[0].device)
    for x, b, g in zip(inputs, baselines, groups, strict=True):
        size = (b - x).abs().reshape(x.shape[0], -1).to(moves.dtype)
        moves.scatter_add_(1, g.reshape(x.shape[0], -1), size)
    return moves > 0


def directions(masks: tuple[Tensor, ...], steps: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Per input ``(G, B, *I)``: group ``g`` moves all its features to their baselines at once.

    Example:
        >>> import torch
        >>> mask, step = torch.tensor([[0, 0, 1]]), torch.tensor([[1.0, 2.0, 3.0]])
        >>> directions((mask,), (step,))[0][:, 0].tolist()
        [[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]
    """
    num_groups = count(masks)
    return tuple(
        (mask == _ids(num_groups, mask)).to(step.dtype) * step
        for mask, step in zip(masks, steps, strict=True)
    )


def _ids(num_groups: int, mask: Tensor) -> Tensor:
    """``(G, 1, ...)``: the ids, to compare with a mask ``(B, *I)`` (a boolean per group, where
    ``one_hot`` would make int64 ones eight times the size)."""
    ids = torch.arange(num_groups, device=mask.device)
    return ids.reshape(num_groups, *([1] * mask.dim()))


def path_moves(
    inputs: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    groups: tuple[Tensor, ...],
    example: Tensor,
    group: Tensor,
) -> tuple[Tensor, ...]:
    """Per input ``(P, *I)``: path ``p`` moves group ``group[p]`` of example ``example[p]``.

    Example:
        >>> import torch
        >>> x, b = torch.zeros(1, 2), torch.tensor([[1.0, 2.0]])
        >>> ids = (torch.tensor([[0, 1]]),)
        >>> path_moves((x,), (b,), ids, torch.tensor([0, 0]), torch.tensor([1, 0]))[0].tolist()
        [[0.0, 2.0], [1.0, 0.0]]
    """
    return tuple(
        (mask[example] == group.reshape(-1, *([1] * (mask.dim() - 1)))).to(x.dtype)
        * (b - x)[example]
        for x, b, mask in zip(inputs, baselines, groups, strict=True)
    )


def spread(per_group: Tensor, masks: tuple[Tensor, ...], batch_axis: int) -> tuple[Tensor, ...]:
    """``(*L, B, *X, G)`` values per group -> per input ``(*L, B, *X, *I)``, by each mask.

    Args:
        per_group: values with the batch at ``batch_axis`` and the groups last.
        masks: per input, the group id of every feature ``(B, *I)``.
        batch_axis: where the batch axis is (the axes ``L`` before it stay as they are).

    Example:
        >>> import torch
        >>> spread(torch.tensor([[10.0, 20.0]]), (torch.tensor([[1, 1, 0]]),), 0)[0].tolist()
        [[20.0, 20.0, 10.0]]
    """
    results = []
    for mask in masks:
        trailing = per_group.dim() - batch_axis - 2  # the axes X between batch and groups
        index = mask.reshape(mask.shape[0], *([1] * trailing), -1)
        index = index.expand(*per_group.shape[:-1], index.shape[-1])
        gathered = per_group.gather(-1, index)
        results.append(gathered.reshape(*per_group.shape[:-1], *mask.shape[1:]))
    return tuple(results)


def sum_once_per_group(attributions: tuple[Tensor, ...], masks: tuple[Tensor, ...]) -> Tensor:
    """``(B,)``: each group's attribution counted once, though it sits on each of its features.

    Example:
        >>> import torch
        >>> sum_once_per_group((torch.tensor([[2.0, 2.0, 5.0]]),), (torch.tensor([[0, 0, 1]]),))
        tensor([7.])
    """
    batch = attributions[0].shape[0]
    values = attributions[0].new_zeros(batch, count(masks))
    for attribution, mask in zip(attributions, masks, strict=True):
        # Every feature of a group holds the group's value: scatter (not add) it.
        values.scatter_(1, mask.reshape(batch, -1), attribution.reshape(batch, -1))
    return values.sum(1)
