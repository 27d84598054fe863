"""The on-disk layout of an audit, and :class:`AttributionStore`, which reads it.

A store is a folder::

    out/manifest.json      settings, versions, and the shards that are complete
    out/shards/00000.npz   batch 0: indices, maps, labels, predictions, targets
    out/shards/00001.npz   ...

Batch ``k`` always holds the examples ``k * batch_size`` up to ``(k + 1) * batch_size - 1``, so a
shard is named by its batch and a rerun can only overwrite it, never duplicate it. A shard counts
as written once the manifest lists it: the shard file is written first and the manifest after it,
each to a temporary file that is then renamed, so a run killed at any moment leaves a manifest
that lists only complete shards (a shard file it does not list is recomputed on resume).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "hope_attr.audit/1"
MANIFEST = "manifest.json"
SHARDS = "shards"
FIELDS = ("indices", "maps", "labels", "predictions", "targets")
MISSING = -1  # labels, predictions or targets that the run did not have


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


def shard_name(batch: int) -> str:
    return f"{SHARDS}/{batch:05d}.npz"


def atomic_write(path: Path, write: Any) -> None:
    """``write(handle)`` into a temporary file beside ``path``, then rename it onto ``path``.

    A rename within one folder is atomic: readers (and a resumed run) see the old file or the new
    one, never half of one.
    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_shard(root: Path, batch: int, arrays: dict[str, np.ndarray]) -> str:
    name = shard_name(batch)
    atomic_write(root / name, lambda stream: np.savez(stream, **arrays))
    return name


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write(root / MANIFEST, lambda stream: stream.write(text))


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a hope_attr audit manifest (format {manifest.get('format')!r}, "
            f"expected {FORMAT!r}): choose another out folder"
        )
    return manifest


class AttributionStore:
    """The maps of an audit, read from its folder and indexed by the examples' data set indices.

    A store written by an interrupted run holds the batches finished before the interruption:
    ``complete`` is False, and only the stored indices can be read. Shards are loaded when first
    needed; the whole-store arrays (``numpy``, ``torch``) concatenate them in index order.

    Args:
        path: the folder given to :func:`hope_attr.audit.attribute_dataset` as ``out``.

    Raises:
        FileNotFoundError: the folder holds no manifest.

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
            entry = self.manifest["shards"][str(batch)]
            with np.load(self.path / entry["file"]) as data:
                self._loaded[batch] = {field: data[field] for field in FIELDS}
        return self._loaded[batch]
