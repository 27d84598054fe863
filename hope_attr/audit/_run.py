"""``attribute_dataset``: a Captum attribution over a whole data set, written shard by shard.

The run is cut into batches of consecutive indices (batch ``k`` holds the examples
``k * batch_size ..``). The engines differ only in where a batch is computed: ``"local"`` loops in
this process, ``"ray"`` hands the batches to a pool of Ray actors (:mod:`._ray`). Both call
:func:`attribute_batch`, and this process alone writes the shards and the manifest, so the folder
has a single writer whichever engine runs.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor

from hope_attr.audit._store import (
    FORMAT,
    MANIFEST,
    MISSING,
    SHARDS,
    AttributionStore,
    read_manifest,
    write_manifest,
    write_shard,
)

_ENGINES = ("local", "ray")
# Arguments attribute_dataset sets itself, or whose result it could not store as one map.
_RESERVED = ("inputs", "target", "baselines", "return_convergence_delta", "return_orders")


@dataclass(frozen=True)
class Plan:
    """What every batch needs to know, shipped to Ray workers as is."""

    num_examples: int
    batch_size: int
    target: Any  # "predicted", "label", an int or None
    baselines: Any  # None (not passed), a number or a tensor
    attribute_kwargs: dict[str, Any]

    def bounds(self, batch: int) -> tuple[int, int]:
        start = batch * self.batch_size
        return start, min(start + self.batch_size, self.num_examples)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)


class BatchError(RuntimeError):
    """A batch whose attribution raised; the message names the batch and its examples."""


def attribute_dataset(
    attribution: Attribution,
    dataset: torch.utils.data.Dataset,
    *,
    out: str | os.PathLike[str],
    target: str | int | None = "predicted",
    baselines: float | Tensor | None = 0.0,
    batch_size: int = 64,
    engine: str = "local",
    resume: bool = True,
    num_workers: int | None = None,
    worker_resources: dict[str, float] | None = None,
    show_progress: bool = True,
    **attribute_kwargs: Any,
) -> AttributionStore:
    """Attribute every example of a data set and write the maps to ``out``, resumably.

    Args:
        attribution: any Captum ``Attribution`` whose ``attribute(inputs, target=..., ...)``
            returns maps shaped like its inputs, e.g. :class:`hope_attr.HOPEAttribution`.
        dataset: a map-style ``torch.utils.data.Dataset`` (``len`` and ``[i]``) whose items are
            an input tensor or an ``(input, label)`` pair with an integer label; all inputs have
            one shape.
        out: the store's folder (created if missing). It holds the run's settings: resuming with
            other settings is refused.
        target: ``"predicted"`` (each example's arg-max class), ``"label"`` (the data set's
            label), a class index, or None for models with one output.
        baselines: passed to ``attribute`` as ``baselines=`` (a number, or a tensor shaped like
            one input or like a batch of one); None passes none, which methods without
            baselines (``Saliency``, ``InputXGradient``) need.
        batch_size: examples per ``attribute`` call and per shard.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data actors, each holding one copy
            of ``attribution``; needs ``pip install 'hope_attr[audit]'``). Both give the same
            maps for the same batches.
        resume: continue a run found in ``out`` with the same settings (finished batches are
            kept, the others computed); False deletes the manifest and shards found in ``out``
            and starts over.
        num_workers: Ray actors (default: one per CPU, or per GPU when ``worker_resources``
            asks for GPUs). Only ``engine="ray"``.
        worker_resources: Ray resources per actor, e.g. ``{"num_gpus": 1}`` (default
            ``{"num_cpus": 1}``). A worker given a GPU moves its copy of the model there.
        show_progress: a progress bar over the batches.
        **attribute_kwargs: passed on to ``attribute`` (e.g. ``internal_batch_size``,
            ``n_steps``); tensors among them are recorded by their hash.

    Returns:
        The :class:`~hope_attr.audit.AttributionStore` of ``out``.

    Raises:
        TypeError: the data set is not map-style, its items are not a tensor or an
            ``(input, label)`` pair, or ``attribution`` is not a Captum ``Attribution``.
        ValueError: ``out`` holds another run's settings (the message lists them), or an
            argument is invalid.
        RuntimeError: the attribution failed on a batch; the message names it. The batches
            written before stay readable, and a rerun resumes after them.
        ImportError: ``engine="ray"`` without Ray installed.

    Example:
        >>> import tempfile, torch, hope_attr
        >>> from hope_attr.audit import attribute_dataset
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh()).eval()
        >>> data = torch.utils.data.TensorDataset(torch.rand(10, 3), torch.randint(0, 4, (10,)))
        >>> with tempfile.TemporaryDirectory() as out:
        ...     store = attribute_dataset(hope_attr.HOPEAttribution(model, order=3), data,
        ...                               out=out, batch_size=4, show_progress=False)
        ...     print(len(store), store.numpy().shape, store[7].target == store[7].prediction)
        10 (10, 3) True
    """
    plan = _validate(
        attribution, dataset, target, baselines, batch_size, engine, num_workers, attribute_kwargs
    )
    root = Path(out)
    settings = _settings(attribution, dataset, plan)
    manifest = _open_manifest(root, settings, plan, resume)
    done = {int(batch) for batch in manifest["shards"]}
    pending = [batch for batch in range(plan.num_batches) if batch not in done]

    def save(batch: int, arrays: dict[str, np.ndarray]) -> None:
        start, stop = plan.bounds(batch)
        name = write_shard(root, batch, arrays)
        manifest["shards"][str(batch)] = {"file": name, "start": start, "stop": stop}
        write_manifest(root, manifest)  # the shard counts once the manifest lists it

    bar = _progress(show_progress, plan.num_batches, len(done), attribution)
    try:
        if engine == "local":
            for batch in pending:
                save(batch, attribute_batch(attribution, dataset, plan, batch))
                bar.update(1)
        else:
            from hope_attr.audit._ray import run_on_ray

            run_on_ray(
                attribution, dataset, plan, pending, save, bar.update, num_workers, worker_resources
            )
    except BatchError as error:
        # Re-raised from here so that the message says what was kept, whichever engine failed.
        raise RuntimeError(
            f"{error} The {len(manifest['shards'])} batches written before it stay readable "
            f"(hope_attr.audit.AttributionStore({str(root)!r})); fix the cause and call "
            "attribute_dataset again with the same arguments to resume."
        ) from error.__cause__
    finally:
        bar.close()
    return AttributionStore(root)


def attribute_batch(
    attribution: Attribution, dataset: Any, plan: Plan, batch: int
) -> dict[str, np.ndarray]:
    """The arrays of one shard: indices, maps, labels, predictions, targets.

    Raises:
        TypeError: an item of the batch is not a tensor or an ``(input, label)`` pair.
        BatchError: the model or the attribution raised.
    """
    start, stop = plan.bounds(batch)
    inputs, labels = zip(*(read_item(dataset, index) for index in range(start, stop)), strict=True)
    try:
        shapes = {tuple(x.shape) for x in inputs}
        if len(shapes) > 1:
            raise ValueError(f"the inputs of one batch have different shapes {sorted(shapes)}")
        device = _device_of(attribution)
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


def read_item(dataset: Any, index: int) -> tuple[Tensor, int | None]:
    """``(input, label or None)`` of ``dataset[index]``.

    Raises:
        TypeError: the item is not a tensor or an ``(input tensor, integer label)`` pair.
    """
    item = dataset[index]
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Tensor):
        label = item[1]
        if isinstance(label, Tensor) and label.numel() == 1 and not label.is_floating_point():
            return item[0], int(label.item())
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            return item[0], int(label)
    described = (
        f"a {type(item).__name__} of {len(item)}: " + ", ".join(_describe(part) for part in item)
        if isinstance(item, (tuple, list))
        else _describe(item)
    )
    raise TypeError(
        f"dataset[{index}] is {described}; attribute_dataset takes items that are an input "
        "tensor or an (input tensor, integer label) pair. Wrap the data set to yield those "
        "(e.g. convert images with torchvision.transforms.ToTensor(); one tensor per example, "
        "multi-input models are not supported)."
    )


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


def _validate(
    attribution: Any,
    dataset: Any,
    target: Any,
    baselines: Any,
    batch_size: Any,
    engine: Any,
    num_workers: Any,
    attribute_kwargs: dict[str, Any],
) -> Plan:
    if not isinstance(attribution, Attribution):
        raise TypeError(
            f"attribution must be a Captum Attribution (e.g. hope_attr.HOPEAttribution(model)), "
            f"got {type(attribution).__name__}"
        )
    if isinstance(dataset, torch.utils.data.IterableDataset) or not (
        hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    ):
        raise TypeError(
            f"dataset must be a map-style data set (with len() and [index]), got "
            f"{type(dataset).__name__}; materialize an iterable one first, e.g. "
            "torch.utils.data.TensorDataset"
        )
    if len(dataset) == 0:
        raise ValueError("the data set is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {_ENGINES}, got {engine!r}")
    if num_workers is not None and engine == "local":
        raise ValueError("num_workers is for engine='ray'; the local engine runs in this process")
    if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
        raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if not (target in (None, "predicted", "label") or _is_int(target)):
        raise ValueError(
            f"target must be 'predicted', 'label', a class index or None, got {target!r}"
        )
    reserved = sorted(set(attribute_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(
            f"attribute_dataset sets or cannot store {reserved}: use its own target= and "
            "baselines= arguments, and leave out options that change what attribute returns"
        )
    parameters = inspect.signature(attribution.attribute).parameters
    if baselines is not None and "baselines" not in parameters:
        raise ValueError(
            f"{type(attribution).__name__}.attribute takes no baselines: pass baselines=None"
        )
    if not (baselines is None or _is_number(baselines) or isinstance(baselines, Tensor)):
        raise TypeError(f"baselines must be a number, a tensor or None, got {type(baselines)}")
    read_item(dataset, 0)  # an unsupported item fails here, before anything is written
    return Plan(len(dataset), batch_size, target, baselines, dict(attribute_kwargs))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _open_manifest(
    root: Path, settings: dict[str, Any], plan: Plan, resume: bool
) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(root)
    if manifest is not None and not resume:
        # Only what a run writes is removed: other files in the folder are the user's.
        (root / MANIFEST).unlink()
        shutil.rmtree(root / SHARDS, ignore_errors=True)
        manifest = None
    if manifest is not None:
        if manifest["settings"] != settings:
            changed = sorted(
                key
                for key in set(settings) | set(manifest["settings"])
                if settings.get(key) != manifest["settings"].get(key)
            )
            details = "; ".join(
                f"{key}: stored {manifest['settings'].get(key)!r}, now {settings.get(key)!r}"
                for key in changed
            )
            raise ValueError(
                f"{root} holds a run with other settings ({details}). Use another out folder, "
                "or resume=False to delete that run and start over."
            )
        return manifest
    (root / SHARDS).mkdir(exist_ok=True)
    manifest = {
        "format": FORMAT,
        "settings": settings,
        "versions": _versions(),
        "num_examples": plan.num_examples,
        "batch_size": plan.batch_size,
        "map_shape": settings["input_shape"],
        "map_dtype": settings["map_dtype"],
        "shards": {},
    }
    write_manifest(root, manifest)
    return manifest


def _settings(attribution: Attribution, dataset: Any, plan: Plan) -> dict[str, Any]:
    """What must match for a folder's shards to belong to this run (JSON-serializable)."""
    first, _ = read_item(dataset, 0)
    method = type(attribution)
    return {
        "method": f"{method.__module__}.{method.__qualname__}",
        # Plain attributes capture the method's configuration (HOPE's order and method,
        # IntegratedGradients' multiply_by_inputs...).
        "method_options": {
            key: value
            for key, value in sorted(vars(attribution).items())
            if not key.startswith("_")  # private state (results of earlier calls), not settings
            and (isinstance(value, (bool, int, float, str)) or value is None)
        },
        "model": _fingerprint_model(attribution.forward_func),
        "num_examples": plan.num_examples,
        "input_shape": list(first.shape),
        "map_dtype": str(first.dtype).replace("torch.", ""),
        "batch_size": plan.batch_size,
        "target": plan.target if not isinstance(plan.target, np.integer) else int(plan.target),
        "baselines": _fingerprint(plan.baselines),
        "attribute_kwargs": {k: _fingerprint(v) for k, v in sorted(plan.attribute_kwargs.items())},
    }


def _fingerprint_model(forward_func: Callable[..., Any]) -> str:
    """A hash of the parameters and buffers, or the function's name when it is no module."""
    module = forward_func if isinstance(forward_func, torch.nn.Module) else None
    if module is None and isinstance(getattr(forward_func, "__self__", None), torch.nn.Module):
        module = forward_func.__self__  # a bound method such as model.forward
    if module is None:
        return f"function {getattr(forward_func, '__qualname__', repr(forward_func))}"
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        digest.update(_tensor_digest(value).encode())
    return f"{type(module).__qualname__} sha256:{digest.hexdigest()[:16]}"


def _tensor_digest(value: Tensor) -> str:
    value = value.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{value.dtype}{tuple(value.shape)}".encode())
    digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:16]


def _fingerprint(value: Any) -> Any:
    if isinstance(value, Tensor):
        return f"tensor {tuple(value.shape)} sha256:{_tensor_digest(value)}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_fingerprint(v) for v in value]
    return repr(value)


def _versions() -> dict[str, str]:
    import captum

    import hope_attr

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "captum": captum.__version__,
        "numpy": np.__version__,
        "hope_attr": getattr(hope_attr, "__version__", "unknown"),
    }


def _device_of(attribution: Attribution) -> torch.device:
    forward_func = attribution.forward_func
    module = forward_func if isinstance(forward_func, torch.nn.Module) else None
    if module is None:
        module = getattr(forward_func, "__self__", None)
    if isinstance(module, torch.nn.Module):
        for parameter in module.parameters():
            return parameter.device
    return torch.device("cpu")


def _progress(show: bool, total: int, initial: int, attribution: Attribution) -> Any:
    if not show:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"{attribution.get_name()} audit", unit="batch")


class _NoProgress:
    def update(self, count: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
