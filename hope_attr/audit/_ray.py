"""``engine="ray"``: the batches of an audit computed by a pool of Ray Data actors.

The Ray dataset holds batch numbers, not examples: each actor receives one copy of the
attribution (model included) and of the data set when it starts, and reads the examples of the
batches it is handed itself, with the same :func:`~hope_attr.audit._batch.attribute_batch` the
local engine calls, so both engines give the same maps for the same batches. The actors return
one row per example; this process groups them by batch and writes the shards (one writer).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
from captum.attr import Attribution

from hope_attr.audit._batch import BatchError, Plan, attribute_batch

_BATCH_ERROR = re.compile(r"attribute_dataset: batch \d+ \(examples .*?failed: .*", re.DOTALL)


class _Worker:
    """One Ray actor: the attribution is unpickled (the model loaded) once, when it starts."""

    def __init__(self, attribution: Attribution, dataset: Any, plan: Plan, gpu: bool) -> None:
        if gpu:
            import torch

            # This worker's own unpickled copy: the user's model is not touched.
            module = attribution.forward_func
            if isinstance(module, torch.nn.Module):
                module.to("cuda")
        self.attribution, self.dataset, self.plan = attribution, dataset, plan

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards = [
            attribute_batch(self.attribution, self.dataset, self.plan, int(batch))
            for batch in rows["batch"]
        ]
        result = {key: np.concatenate([s[key] for s in shards]) for key in shards[0]}
        result["batch"] = np.concatenate(
            [
                np.full(len(s["indices"]), int(b), np.int64)
                for s, b in zip(shards, rows["batch"], strict=True)
            ]
        )
        return result


def run_on_ray(
    attribution: Attribution,
    dataset: Any,
    plan: Plan,
    pending: list[int],
    save: Callable[[int, dict[str, np.ndarray]], None],
    advance: Callable[[int], Any],
    num_workers: int | None,
    worker_resources: dict[str, float] | None,
) -> None:
    """Compute the ``pending`` batches on Ray and ``save`` each one as soon as it is whole."""
    if not pending:
        return
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ImportError(
            "engine='ray' needs Ray Data: pip install 'hope_attr[audit]' (or 'ray[data]'); "
            "engine='local' needs nothing more"
        ) from error
    if not ray.is_initialized():
        # A local instance with every CPU; call ray.init yourself to join a cluster or limit it.
        ray.init(include_dashboard=False)
    resources = dict(worker_resources or {"num_cpus": 1})
    unknown = set(resources) - {"num_cpus", "num_gpus", "memory"}
    if unknown:
        raise ValueError(f"worker_resources takes num_cpus, num_gpus and memory, got {unknown}")
    gpu = resources.get("num_gpus", 0) > 0
    if num_workers is None:
        available = ray.cluster_resources()
        kind, per_worker = (
            ("GPU", resources["num_gpus"]) if gpu else ("CPU", resources.get("num_cpus", 1))
        )
        num_workers = max(1, int(available.get(kind, 1) // max(per_worker, 1e-9)))
    num_workers = min(num_workers, len(pending))

    # from_items: the batch numbers live in this process, so no read task competes with the
    # actors for CPUs (with a read task, a pool as large as the cluster waited forever).
    # One block per batch: a block is one actor task, whose output reaches this process (and
    # is written) when the task ends. With Ray's default blocking, one task ran many batches:
    # auditing 5000 digits with 1 worker wrote its first shard after 36 of 43 s, so a run killed
    # before then would have kept nothing.
    rows = ray.data.from_items(
        [{"batch": batch} for batch in pending], override_num_blocks=len(pending)
    )
    results = rows.map_batches(
        _Worker,
        fn_constructor_kwargs={
            "attribution": attribution,
            "dataset": dataset,
            "plan": plan,
            "gpu": gpu,
        },
        batch_size=1,
        concurrency=num_workers,
        batch_format="numpy",
        **resources,
    )
    buffers: dict[int, list[dict[str, np.ndarray]]] = {}
    try:
        for block in results.iter_batches(batch_size=None, batch_format="numpy"):
            for batch in np.unique(block["batch"]):
                rows_of_batch = block["batch"] == batch
                part = {key: block[key][rows_of_batch] for key in block if key != "batch"}
                buffers.setdefault(int(batch), []).append(part)
                start, stop = plan.bounds(int(batch))
                if sum(len(p["indices"]) for p in buffers[int(batch)]) == stop - start:
                    parts = buffers.pop(int(batch))
                    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
                    order = np.argsort(merged["indices"], kind="stable")
                    save(int(batch), {key: value[order] for key, value in merged.items()})
                    advance(1)
    except Exception as error:
        # Ray wraps the worker's exception; keep the line that names the batch.
        found = _BATCH_ERROR.search(str(error))
        if found is None:
            raise
        raise BatchError(found.group(0).splitlines()[0]) from error
