"""Reading an audit store: :class:`AttributionStore` and :class:`Example`.

The layout and its checks are in :mod:`._manifest`. Every shard is checked when it is loaded (its
SHA-256 against the manifest's, then its examples and map shape), so a store never returns a map
that is not the one its run wrote: a missing, damaged or replaced shard raises a
:class:`~hope_attr.audit.StoreError` that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hope_attr.audit._manifest import FIELDS, MANIFEST, StoreError, load_shard, read_manifest


@dataclass(frozen=True)
class Example:
    """One stored example.

    Attributes:
        index: its index in the data set.
        map: its attribution map, shaped like the input.
        label: the data set's label, or -1 when the data set yields inputs alone.
        prediction: the model's arg-max class, or -1 when the output is not ``(B, classes)``.
        target: the class that was explained, or -1 for ``target=None``.
    """

    index: int
    map: np.ndarray
    label: int
    prediction: int
    target: int


class AttributionStore:
    """The maps of an audit, read from its folder and indexed by the examples' data set indices.

    A store written by an interrupted run holds the batches finished before the interruption:
    ``complete`` is False, and only the stored indices can be read. Shards are loaded when first
    needed; the whole-store arrays (``numpy``, ``torch``) concatenate them in index order.

    Args:
        path: the folder given to :func:`hope_attr.audit.attribute_dataset` as ``out``.

    Raises:
        FileNotFoundError: the folder holds no manifest.
        hope_attr.audit.StoreError: the manifest is damaged or not a hope_attr manifest (and,
            when a shard is read, the shard is missing or damaged).

    Example:
        >>> import tempfile, torch, hope_attr
        >>> from hope_attr.audit import attribute_dataset
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).eval()
        >>> data = torch.utils.data.TensorDataset(torch.rand(5, 3), torch.tensor([0, 1, 0, 1, 1]))
        >>> with tempfile.TemporaryDirectory() as out:
        ...     store = attribute_dataset(hope_attr.HOPEAttribution(model, order=2), data,
        ...                               out=out, batch_size=2, show_progress=False)
        ...     print(len(store), store[4].map.shape, store.numpy().shape, store.complete)
        5 (3,) (5, 3) True
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise FileNotFoundError(
                f"{self.path} holds no {MANIFEST}: it is not the out folder of an audit"
            )
        self.manifest = manifest
        shards = sorted(manifest["shards"].items(), key=lambda item: int(item[0]))
        self._shards = [(int(batch), entry) for batch, entry in shards]
        self._loaded: dict[int, dict[str, np.ndarray]] = {}
        self._indices = np.concatenate(
            [np.arange(e["start"], e["stop"]) for _, e in self._shards] or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        self._batch_size = int(manifest["batch_size"])

    @property
    def settings(self) -> dict[str, Any]:
        """What the run was asked to do (method, model fingerprint, target, baselines...)."""
        return self.manifest["settings"]

    @property
    def versions(self) -> dict[str, str]:
        """The versions of Python, torch, captum, numpy and hope_attr that wrote the store."""
        return self.manifest["versions"]

    @property
    def complete(self) -> bool:
        """Whether every example of the data set is stored."""
        return len(self._indices) == int(self.manifest["num_examples"])

    @property
    def indices(self) -> np.ndarray:
        """The stored examples' data set indices, ascending."""
        return self._indices.copy()

    def __len__(self) -> int:
        return len(self._indices)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, (int, np.integer)) and self._entry(int(index)) is not None

    def __getitem__(self, index: int) -> Example:
        """The example with data set index ``index``."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"a store is indexed by data set index (int), got {type(index)}")
        index = int(index)
        found = self._entry(index)
        if found is None:
            num = int(self.manifest["num_examples"])
            why = (
                f"the data set has {num} examples"
                if not 0 <= index < num
                else "the run stopped before it: call attribute_dataset again to resume"
            )
            raise IndexError(f"example {index} is not in the store at {self.path} ({why})")
        batch, entry = found
        arrays = self._load(batch)
        row = index - entry["start"]
        return Example(
            index=index,
            map=arrays["maps"][row],
            label=int(arrays["labels"][row]),
            prediction=int(arrays["predictions"][row]),
            target=int(arrays["targets"][row]),
        )

    def __iter__(self) -> Iterator[Example]:
        for index in self._indices:
            yield self[int(index)]

    def numpy(self, field: str = "maps") -> np.ndarray:
        """One field of every stored example, in index order.

        Args:
            field: ``"maps"`` (``(N, *input shape)``), ``"indices"``, ``"labels"``,
                ``"predictions"`` or ``"targets"`` (``(N,)``).
        """
        if field not in FIELDS:
            raise ValueError(f"field must be one of {FIELDS}, got {field!r}")
        parts = [self._load(batch)[field] for batch, _ in self._shards]
        if not parts:
            shape = tuple(self.manifest["map_shape"]) if field == "maps" else ()
            dtype = self.manifest["map_dtype"] if field == "maps" else np.int64
            return np.zeros((0, *shape), dtype=dtype)
        return np.concatenate(parts)

    def verify(self) -> list[str]:
        """Check every stored shard (checksum, examples, map shape) without keeping it loaded.

        Returns:
            One message per missing or damaged shard, naming its file; empty when all are
            sound. ``attribute_dataset`` with the run's arguments recomputes the ones named.
        """
        problems = []
        for batch, _ in self._shards:
            try:
                load_shard(self.path, self.manifest, batch)
            except StoreError as error:
                problems.append(str(error))
        return problems

    def torch(self, field: str = "maps") -> torch.Tensor:
        """:meth:`numpy` as a tensor (sharing its memory)."""
        return torch.from_numpy(self.numpy(field))

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"AttributionStore({str(self.path)!r}, {len(self)} of "
            f"{self.manifest['num_examples']} examples, {state})"
        )

    def _entry(self, index: int) -> tuple[int, dict[str, Any]] | None:
        if index < 0:
            return None
        batch = index // self._batch_size
        entry = self.manifest["shards"].get(str(batch))
        if entry is None or not entry["start"] <= index < entry["stop"]:
            return None
        return batch, entry

    def _load(self, batch: int) -> dict[str, np.ndarray]:
        if batch not in self._loaded:
            if len(self._loaded) >= 8:  # bound the memory of random access
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[batch] = load_shard(self.path, self.manifest, batch)
        return self._loaded[batch]

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        """The stored shards' arrays, in index order, one shard in memory at a time."""
        for batch, _ in self._shards:
            yield load_shard(self.path, self.manifest, batch)
