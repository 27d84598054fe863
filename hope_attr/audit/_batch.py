"""One batch of an audit: reading its examples and attributing them.

Both engines call :func:`attribute_batch` (the local one in this process, the Ray one in its
actors), so they give the same maps for the same batches. It lives apart from
:mod:`._run` and :mod:`._ray` so that neither of those imports the other's module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor

from hope_attr.audit._manifest import MISSING


@dataclass(frozen=True)
class Plan:
    """What every batch needs to know, shipped to Ray workers as is."""

    num_examples: int
    batch_size: int
    target: Any  # "predicted", "label", an int or None
    baselines: Any  # None (not passed), a number or a tensor
    attribute_kwargs: dict[str, Any]
    key: str | None = None  # the input's key in dict items
    label_key: str | None = None  # the label's key in dict items

    def bounds(self, batch: int) -> tuple[int, int]:
        start = batch * self.batch_size
        return start, min(start + self.batch_size, self.num_examples)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)


class BatchError(RuntimeError):
    """A batch whose attribution raised; the message names the batch and its examples."""


def attribute_batch(
    attribution: Attribution, dataset: Any, plan: Plan, batch: int
) -> dict[str, np.ndarray]:
    """The arrays of one shard: indices, maps, labels, predictions, targets.

    Raises:
        TypeError: an item of the batch is not in a supported form (see :func:`read_item`).
        BatchError: the model or the attribution raised.
    """
    start, stop = plan.bounds(batch)
    items = [read_item(dataset, index, plan.key, plan.label_key) for index in range(start, stop)]
    inputs, labels = zip(*items, strict=True)
    try:
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) > 1:
            raise ValueError(f"the inputs of one batch have different shapes {sorted(shapes)}")
        device = device_of(attribution)
        x = torch.stack(inputs).to(device)
        with torch.no_grad():
            output = attribution.forward_func(x)
        predictions = (
            output.argmax(1).cpu()
            if isinstance(output, Tensor) and output.dim() == 2
            else torch.full((len(inputs),), MISSING)
        )
        targets = _targets(plan.target, predictions, labels, start)
        kwargs = dict(plan.attribute_kwargs)
        if plan.baselines is not None:
            baselines = plan.baselines
            if isinstance(baselines, Tensor):
                baselines = baselines.to(device)
            kwargs["baselines"] = baselines
        maps = attribution.attribute(
            x, target=None if targets is None else targets.tolist(), **kwargs
        )
        if not isinstance(maps, Tensor) or maps.shape != x.shape:
            raise TypeError(
                f"attribute returned {type(maps).__name__} "
                f"{tuple(maps.shape) if isinstance(maps, Tensor) else ''} instead of maps shaped "
                f"like the inputs {tuple(x.shape)}"
            )
    except Exception as error:
        raise BatchError(
            f"attribute_dataset: batch {batch} (examples {start} to {stop - 1}) failed: "
            f"{type(error).__name__}: {error}."
        ) from error
    return {
        "indices": np.arange(start, stop, dtype=np.int64),
        "maps": maps.detach().cpu().numpy(),
        "labels": np.array([MISSING if y is None else y for y in labels], dtype=np.int64),
        "predictions": predictions.numpy().astype(np.int64),
        "targets": (
            np.full(len(inputs), MISSING, np.int64) if targets is None else targets.numpy()
        ),
    }


_FORMS = (
    "attribute_dataset takes items that are an input tensor x, a 1-tuple (x,) (e.g. "
    "TensorDataset(images)), a pair (x, integer label), or a dict read with key= (and "
    "label_key= for its label)"
)


def read_item(
    dataset: Any, index: int, key: str | None = None, label_key: str | None = None
) -> tuple[Tensor, int | None]:
    """``(input, label or None)`` of ``dataset[index]``.

    Raises:
        TypeError: the item is not ``x``, ``(x,)``, ``(x, label)`` or a dict with ``key``.
    """
    item = dataset[index]
    if key is not None:
        return _read_mapping(item, index, key, label_key)
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) in (1, 2) and isinstance(item[0], Tensor):
        if len(item) == 1:
            return item[0], None
        label = _label(item[1])
        if label is not None:
            return item[0], label
    if isinstance(item, Mapping):
        keys = ", ".join(repr(k) for k in list(item)[:8])
        raise TypeError(
            f"dataset[{index}] is a {type(item).__name__} with keys {keys}: pass key= (the "
            "input's key, e.g. key='image') and, for target='label', label_key="
        )
    described = (
        f"a {type(item).__name__} of {len(item)}: " + ", ".join(_describe(part) for part in item)
        if isinstance(item, (tuple, list))
        else _describe(item)
    )
    raise TypeError(
        f"dataset[{index}] is {described}; {_FORMS}. Wrap the data set to yield those (e.g. "
        "convert images with torchvision.transforms.ToTensor(); one tensor per example, "
        "multi-input models are not supported)."
    )


def _read_mapping(
    item: Any, index: int, key: str, label_key: str | None
) -> tuple[Tensor, int | None]:
    if not isinstance(item, Mapping):
        raise TypeError(f"dataset[{index}] is {_describe(item)}, but key={key!r} reads dicts")
    for name in (key, label_key):
        if name is not None and name not in item:
            keys = ", ".join(repr(k) for k in list(item)[:8])
            raise TypeError(f"dataset[{index}] has no key {name!r} (its keys: {keys})")
    if not isinstance(item[key], Tensor):
        raise TypeError(f"dataset[{index}][{key!r}] is {_describe(item[key])}, not a tensor")
    if label_key is None:
        return item[key], None
    label = _label(item[label_key])
    if label is None:
        raise TypeError(
            f"dataset[{index}][{label_key!r}] is {_describe(item[label_key])}, not an integer label"
        )
    return item[key], label


def _label(value: Any) -> int | None:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        if value.dtype != torch.bool:
            return int(value.item())
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return None


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor {tuple(value.shape)} {value.dtype}"
    return type(value).__name__


def _targets(
    target: Any, predictions: Tensor, labels: tuple[int | None, ...], start: int
) -> Tensor | None:
    if target is None:
        return None
    if target == "predicted":
        if (predictions == MISSING).any():
            raise ValueError("target='predicted' needs a model output shaped (batch, classes)")
        return predictions
    if target == "label":
        missing = [start + i for i, label in enumerate(labels) if label is None]
        if missing:
            raise ValueError(f"target='label' but example {missing[0]} has no label")
        return torch.tensor(labels, dtype=torch.int64)
    return torch.full((len(labels),), int(target), dtype=torch.int64)


def module_of(forward_func: Any) -> torch.nn.Module | None:
    """The module behind a forward function: itself, or the owner of a bound method."""
    if isinstance(forward_func, torch.nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def device_of(attribution: Attribution) -> torch.device:
    module = module_of(attribution.forward_func)
    if module is not None:
        for parameter in module.parameters():
            return parameter.device
    return torch.device("cpu")
