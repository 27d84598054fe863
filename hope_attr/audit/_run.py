"""``attribute_dataset``: a Captum attribution over a whole data set, written shard by shard.

The run is cut into batches of consecutive indices (batch ``k`` holds the examples
``k * batch_size ..``). The engines differ only in where a batch is computed: ``"local"`` loops in
this process, ``"ray"`` hands the batches to a pool of Ray actors (:mod:`._ray`). Both call
:func:`~._batch.attribute_batch`, and this process alone writes the shards and the manifest, with
the store's lock held (:mod:`._lock`), so the folder has a single writer whichever engine runs
and however many runs are started on it.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor

from hope_attr.audit._batch import BatchError, Plan, attribute_batch, read_item
from hope_attr.audit._fingerprint import settings_of
from hope_attr.audit._lock import StoreLock
from hope_attr.audit._manifest import write_manifest, write_shard
from hope_attr.audit._prepare import open_store
from hope_attr.audit._ray import run_on_ray
from hope_attr.audit._store import AttributionStore

_ENGINES = ("local", "ray")
# Arguments attribute_dataset sets itself, or whose result it could not store as one map.
_RESERVED = ("inputs", "target", "baselines", "return_convergence_delta", "return_orders")


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
    key: str | None = None,
    label_key: str | None = None,
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
            an input tensor ``x``, a 1-tuple ``(x,)`` (``TensorDataset(images)``), a pair
            ``(x, integer label)``, or a dict (see ``key``); all inputs have one shape.
        out: the store's folder: a new or empty folder, or a store written before (created if
            missing). A folder holding other files is refused, so that no file of yours is ever
            overwritten or deleted.
        target: ``"predicted"`` (each example's arg-max class), ``"label"`` (the data set's
            label), a class index, or None for models with one output.
        baselines: passed to ``attribute`` as ``baselines=`` (a number, or a tensor shaped like
            one input or like a batch of one); None passes none, which methods without
            baselines (``Saliency``, ``InputXGradient``) need.
        batch_size: examples per ``attribute`` call and per shard.
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data actors, each holding one copy
            of ``attribution``; needs ``pip install 'hope_attr[audit]'``). Both give the same
            maps for the same batches.
        resume: continue the run stored in ``out`` if it has the same identity (method and its
            options, model, data set, settings): finished shards are checked against their
            checksums and kept, missing or damaged ones computed. False deletes the store's own
            files (those its manifest lists, nothing else) and starts over.
        key: for data sets whose items are dicts: the key of the input tensor.
        label_key: for dict items: the key of the integer label (needed by ``target="label"``).
        num_workers: Ray actors (default: one per CPU, or per GPU when ``worker_resources``
            asks for GPUs). Only ``engine="ray"``.
        worker_resources: Ray resources per actor, e.g. ``{"num_gpus": 1}`` (default
            ``{"num_cpus": 1}``). A worker given a GPU moves its copy of the model there.
        show_progress: a progress bar over the batches.
        **attribute_kwargs: passed on to ``attribute`` (e.g. ``directions_per_chunk``,
            ``n_steps``); tensors among them are recorded by their hash.

    Returns:
        The :class:`~hope_attr.audit.AttributionStore` of ``out``.

    Raises:
        TypeError: the data set is not map-style, its items are not in a supported form, or
            ``attribution`` is not a Captum ``Attribution``.
        ValueError: ``out`` holds another run (the message lists what differs), the model's
            outputs are not reproducible, or an argument is invalid.
        FileExistsError: ``out`` holds files but is not an audit store.
        hope_attr.audit.StoreError: ``out``'s manifest is damaged or not a hope_attr manifest.
        hope_attr.audit.StoreLockedError: another run is writing ``out``; the message names it.
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
        attribution,
        dataset,
        target,
        baselines,
        batch_size,
        engine,
        num_workers,
        (key, label_key),
        attribute_kwargs,
    )
    root = Path(out)
    settings = settings_of(attribution, dataset, plan)
    root.mkdir(parents=True, exist_ok=True)
    with StoreLock(root):
        manifest = open_store(root, settings, plan, resume)
        ray_options = (num_workers, worker_resources)
        _run(attribution, dataset, plan, root, manifest, engine, ray_options, show_progress)
    return AttributionStore(root)


def _run(
    attribution: Attribution,
    dataset: Any,
    plan: Plan,
    root: Path,
    manifest: dict[str, Any],
    engine: str,
    ray_options: tuple[int | None, dict[str, float] | None],
    show_progress: bool,
) -> None:
    """Compute the batches the manifest does not list, writing each one as it is done."""
    done = {int(batch) for batch in manifest["shards"]}
    pending = [batch for batch in range(plan.num_batches) if batch not in done]

    def save(batch: int, arrays: dict[str, np.ndarray]) -> None:
        start, stop = plan.bounds(batch)
        entry = write_shard(root, batch, manifest["run_id"], arrays)
        manifest["shards"][str(batch)] = {**entry, "start": start, "stop": stop}
        write_manifest(root, manifest)  # the shard counts once the manifest lists it

    bar = _progress(show_progress, plan.num_batches, len(done), attribution)
    try:
        if engine == "local":
            for batch in pending:
                save(batch, attribute_batch(attribution, dataset, plan, batch))
                bar.update(1)
        else:
            run_on_ray(attribution, dataset, plan, pending, save, bar.update, *ray_options)
    except BatchError as error:
        # Re-raised from here so that the message says what was kept, whichever engine failed.
        raise RuntimeError(
            f"{error} The {len(manifest['shards'])} batches written before it stay readable "
            f"(hope_attr.audit.AttributionStore({str(root)!r})); fix the cause and call "
            "attribute_dataset again with the same arguments to resume."
        ) from error.__cause__
    finally:
        bar.close()


def _validate(
    attribution: Any,
    dataset: Any,
    target: Any,
    baselines: Any,
    batch_size: Any,
    engine: Any,
    num_workers: Any,
    keys: tuple[Any, Any],
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
    key, label_key = keys
    if label_key is not None and key is None:
        raise ValueError("label_key reads dict items: pass key= (the input's key) too")
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
    read_item(dataset, 0, key, label_key)  # an unsupported item fails here, before any write
    return Plan(len(dataset), batch_size, target, baselines, dict(attribute_kwargs), key, label_key)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


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
