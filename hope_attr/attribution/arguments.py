"""Captum's shared arguments: inputs, baselines, feature masks, targets, additional arguments.

Every front end of hope_attr (:class:`~hope_attr.HOPEAttribution`,
:func:`hope_attr.interactions`) takes these arguments in Captum's forms and formats them here.
Where Captum 0.9 has a helper that does the job (``captum._utils.common``: ``_format_baseline``,
``_format_feature_mask``, ``_format_additional_forward_args``, ``_format_tensor_into_tuples``,
``_format_output``), it is called; what it leaves unchecked is checked here first, with a
``TypeError``/``ValueError`` that says what to pass instead of Captum's ``AssertionError``.

Targets are selected by :func:`select_target`, not by Captum's ``_select_targets``: the values
selected here carry a leading axis (orders, coalitions) and trailing ones (features, groups),
which Captum's helper does not allow for per-example targets, and it rejects negative indices
there (``torch.gather``); Captum's ``_validate_target`` only asserts the length.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from captum._utils.common import (
    _format_additional_forward_args,
    _format_baseline,
    _format_feature_mask,
    _format_output,
    _format_tensor_into_tuples,
)
from captum._utils.typing import BaselineType, TargetType
from torch import Tensor

# Captum's feature_mask forms (captum._utils.typing names the other arguments' forms).
FeatureMaskType = Tensor | tuple[Tensor, ...] | None

__all__ = [
    "FeatureMaskType",
    "as_input_form",
    "check_inputs",
    "format_additional_args",
    "format_baselines",
    "format_feature_mask",
    "format_inputs",
    "select_outputs",
    "select_target",
    "select_value",
]


def format_inputs(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The inputs as a tuple of tensors detached from the caller's graph.

    Attributions are values, not part of the caller's graph: without the detach, an input with
    ``requires_grad`` would hand back a result holding a ``grad_fn``.

    Example:
        >>> import torch
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> [t.requires_grad for t in format_inputs(x)]
        [False]
    """
    if not isinstance(inputs, (Tensor, tuple)):
        raise TypeError(
            f"inputs must be a tensor (B, *I) or a tuple of them, got {type(inputs).__name__}"
        )
    formatted = _format_tensor_into_tuples(inputs)
    for position, x in enumerate(formatted):
        if not isinstance(x, Tensor):
            name = "inputs" if len(formatted) == 1 else f"inputs[{position}]"
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return tuple(x.detach() for x in formatted)


def check_inputs(inputs: tuple[Tensor, ...]) -> None:
    """Formatted inputs (:func:`format_inputs`): floating point, finite, one batch axis in common.

    (:class:`~hope_attr.engine.expansion.Expansion` checks its own inputs; this serves front ends
    that may run plain forward passes only.)

    Example:
        >>> import torch
        >>> check_inputs((torch.zeros(2, 3), torch.zeros(2)))
        >>> check_inputs((torch.zeros(2, 3, dtype=torch.long),))
        Traceback (most recent call last):
        ...
        TypeError: inputs has dtype torch.int64: convert with .float() or .double()
    """
    if not inputs:
        raise ValueError("inputs is an empty tuple; pass a tensor or a tuple of tensors")
    for position, x in enumerate(inputs):
        name = "inputs" if len(inputs) == 1 else f"inputs[{position}]"
        if not x.is_floating_point():
            raise TypeError(f"{name} has dtype {x.dtype}: convert with .float() or .double()")
        if x.dim() < 1 or x.shape[0] == 0 or x.shape[0] != inputs[0].shape[0]:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}: every input needs the same non-empty "
                "batch axis first"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf: attributions there are undefined")


def as_input_form(is_tuple: bool, values: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    """Captum's contract: a tensor back for a tensor in, a tuple for a tuple.

    Example:
        >>> import torch
        >>> as_input_form(False, (torch.zeros(1),)).shape
        torch.Size([1])
    """
    return _format_output(is_tuple, values)


def format_baselines(baselines: BaselineType, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """One finite tensor shaped like each input, from any of Captum's baseline forms.

    Args:
        baselines: ``None`` (zero), a number, a tensor shaped like the input or with batch 1,
            or a tuple of those, one per input.
        inputs: the formatted inputs.

    Returns:
        Per input, the baseline expanded to the input's shape and dtype.

    Raises:
        TypeError: a baseline that is neither a number nor a tensor.
        ValueError: a count or shape that does not fit the inputs, NaN or Inf.

    Example:
        >>> import torch
        >>> format_baselines(0.5, (torch.zeros(2, 3),))[0].shape
        torch.Size([2, 3])
    """
    listed = (
        () if baselines is None else baselines if isinstance(baselines, tuple) else (baselines,)
    )
    for index, baseline in enumerate(listed):
        # Captum asserts this (an AssertionError, skipped under python -O): a TypeError instead.
        if not isinstance(baseline, (int, float, Tensor)):
            raise TypeError(
                f"baselines[{index}] must be a number or a tensor, got {type(baseline).__name__}"
            )
    formatted = _format_baseline(baselines, inputs)  # None -> zeros, one value -> a tuple
    if len(formatted) != len(inputs):
        raise ValueError(
            f"got {len(formatted)} baselines for {len(inputs)} inputs; pass one per input"
        )
    return tuple(
        _expanded_baseline(index, b, x)
        for index, (b, x) in enumerate(zip(formatted, inputs, strict=True))
    )


def _expanded_baseline(index: int, baseline: Tensor | float, x: Tensor) -> Tensor:
    if not isinstance(baseline, Tensor):
        expanded = torch.full_like(x, float(baseline))
    else:
        try:
            expanded = baseline.to(x.dtype).expand_as(x)
        except RuntimeError as error:
            raise ValueError(
                f"baselines[{index}] has shape {tuple(baseline.shape)}, which does not broadcast "
                f"to the input's {tuple(x.shape)}: use the input's shape, batch size 1, or a "
                "number"
            ) from error
    if not torch.isfinite(expanded).all():
        raise ValueError(
            f"baselines[{index}] contains NaN or Inf; the attribution of a move to it is "
            "undefined: use finite baselines"
        )
    return expanded


def format_feature_mask(
    feature_mask: FeatureMaskType, inputs: tuple[Tensor, ...]
) -> tuple[Tensor, ...] | None:
    """Per input, the mask's group ids expanded to the input's shape (``None`` stays ``None``).

    Args:
        feature_mask: integer group ids ``0..G-1`` broadcastable to each input, or a tuple of
            them for tuple inputs; ids shared across inputs form one group.
        inputs: the formatted inputs.

    Raises:
        TypeError: a mask that is not an integer tensor.
        ValueError: a count or shape that does not fit the inputs, ids that are not ``0..G-1``.

    Example:
        >>> import torch
        >>> format_feature_mask(torch.tensor([[0, 0, 1]]), (torch.zeros(2, 3),))[0].shape
        torch.Size([2, 3])
    """
    if feature_mask is None:
        return None
    if not isinstance(feature_mask, (Tensor, tuple)):  # Captum asserts (skipped under -O)
        raise TypeError(
            "feature_mask must be an integer tensor of group ids (a tuple of them for tuple "
            f"inputs), got {type(feature_mask).__name__}"
        )
    masks = _format_feature_mask(feature_mask, inputs)  # a tensor -> a one-tuple
    if len(masks) != len(inputs):
        raise ValueError(f"got {len(masks)} feature masks for {len(inputs)} inputs")
    formatted = []
    for index, (mask, x) in enumerate(zip(masks, inputs, strict=True)):
        # Captum takes floating-point ids too; here ids index the groups.
        if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"feature_mask[{index}] must be an integer tensor of group ids")
        try:
            formatted.append(mask.to(torch.long).expand_as(x))
        except RuntimeError as error:
            raise ValueError(
                f"feature_mask[{index}] has shape {tuple(mask.shape)}, which does not broadcast "
                f"to the input's {tuple(x.shape)}"
            ) from error
    _check_group_ids(formatted)
    return tuple(formatted)


def _check_group_ids(masks: list[Tensor]) -> None:
    # Groups index tensors of G entries: an unused id would be a group without features.
    ids = torch.unique(torch.cat([m.reshape(-1) for m in masks]))
    if ids.min() < 0:
        raise ValueError(
            f"feature_mask holds the negative id {int(ids.min())} (negative id "
            f"{int(ids.min())}): group ids must be 0..G-1. Renumber the groups, e.g. with "
            "torch.unique(mask, return_inverse=True)."
        )
    if not torch.equal(ids, torch.arange(len(ids), device=ids.device)):
        missing = sorted(set(range(int(ids.max()) + 1)) - set(ids.tolist()))[:5]
        raise ValueError(
            "feature_mask ids must be exactly 0..G-1 with every id used "
            f"(found {len(ids)} ids up to {int(ids.max())}; missing e.g. {missing}). "
            "Renumber the groups, e.g. with torch.unique(mask, return_inverse=True)."
        )


def format_additional_args(additional_forward_args: Any) -> tuple[Any, ...]:
    """The additional forward arguments as a tuple (``()`` for ``None``).

    Example:
        >>> format_additional_args(0.5), format_additional_args(None)
        ((0.5,), ())
    """
    return _format_additional_forward_args(additional_forward_args) or ()


def select_target(values: Tensor, target: TargetType, output_shape: torch.Size) -> Tensor:
    """``(L, B, *O, *rest) -> (L, B, *rest)``: each example's target output.

    Args:
        values: any leading axis ``L``, then the batch, the outputs ``O`` and trailing axes.
        target: as in Captum: ``None`` (one output per example), an int, a tuple for outputs
            with several axes, a list or 1-d tensor with one of those per example.
        output_shape: ``O``.

    Raises:
        ValueError: ``None`` for several outputs, an index out of range, a count that does not
            fit the batch or the output axes.
        TypeError: a target of another type or a floating-point tensor.

    Example:
        >>> import torch
        >>> values = torch.arange(12.0).reshape(1, 2, 3, 2)  # L=1, B=2, O=(3,), rest=(2,)
        >>> select_target(values, [2, 0], torch.Size([3])).tolist()
        [[[4.0, 5.0], [6.0, 7.0]]]
    """
    batch = values.shape[1]
    rest = values.shape[2 + len(output_shape) :]
    if target is None:
        if math.prod(output_shape) != 1:
            raise ValueError(
                f"forward_func returns {tuple(output_shape)} outputs per example: pass target= "
                "(an index, or one per example), or use attribute_all_targets"
            )
        return values.reshape(values.shape[0], batch, *rest)
    per_example = _targets_per_example(target, batch, len(output_shape))
    for entry in per_example:
        for axis, (index, size) in enumerate(zip(entry, output_shape, strict=True)):
            if not -size <= index < size:
                raise ValueError(
                    f"target {target!r} is out of range: output axis {axis + 1} has {size} entries"
                )
    index = torch.tensor(per_example, device=values.device)  # (B, len(O))
    batch_index = torch.arange(batch, device=values.device)
    return values[(slice(None), batch_index, *index.unbind(1))]


def _targets_per_example(target: TargetType, batch: int, output_dims: int) -> list[tuple]:
    if isinstance(target, Tensor):
        if target.dim() > 1 and target.numel() > 1:
            raise ValueError(
                f"a target tensor must be a number or 1-d (one index per example), got shape "
                f"{tuple(target.shape)}; flatten it with target.reshape(-1), or pass a list of "
                "tuples for outputs with more than 2 axes"
            )
        if target.is_floating_point() or target.is_complex():
            raise TypeError(f"a target tensor must hold integers, got dtype {target.dtype}")
        target = target.item() if target.numel() == 1 else target.tolist()
    if isinstance(target, int):
        entries = [(target,)] * batch
    elif isinstance(target, tuple):
        entries = [target] * batch
    elif isinstance(target, list):
        if len(target) != batch:
            raise ValueError(f"target has {len(target)} entries for a batch of {batch}")
        entries = [t if isinstance(t, tuple) else (t,) for t in target]
    else:
        raise TypeError(f"target must be an int, tuple, list or tensor, got {type(target)}")
    for entry in entries:
        if len(entry) != output_dims:
            raise ValueError(
                f"target {entry} indexes {len(entry)} output axes, but the output has "
                f"{output_dims} besides the batch axis"
            )
    return [tuple(int(i) for i in entry) for entry in entries]


def select_outputs(target: TargetType, values: Tensor) -> Tensor:
    """``(L, B, *O) -> (L, B)``: each example's target output (an expansion's ``select``).

    Example:
        >>> import torch
        >>> select_outputs(1, torch.arange(6.0).reshape(1, 2, 3)).tolist()
        [[1.0, 4.0]]
    """
    return select_target(values, target, values.shape[2:])


def select_value(output: Tensor, target: TargetType) -> Tensor:
    """``(B, *O) -> (B,)``: a model output's target value per example.

    Example:
        >>> import torch
        >>> select_value(torch.arange(6.0).reshape(2, 3), (2,)).tolist()
        [2.0, 5.0]
    """
    return select_target(output.unsqueeze(0), target, output.shape[1:])[0].reshape(-1)
