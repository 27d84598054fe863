"""``to_virelay``: a store and its SpRAy analyses as a ViRelAy project.

ViRelAy (Fraunhofer HHI, the viewer of CoRelAy's SpRAy pipelines) reads a project YAML file that
names a label map (JSON) and three kinds of HDF5 files, as its database specification and its
reader (``virelay.model``, version 0.6) lay them out:

* ``input.h5``: ``data`` (samples x channels x height x width, float32) and ``label`` (samples),
  row ``i`` being the data set's example ``i`` (gray images as 3 equal channels: the viewer
  encodes images with Pillow, which takes 3 or 4 channels, not 1);
* ``attribution.h5``: ``index`` (the data set indices of the stored examples), ``attribution``
  (their maps), ``label`` and ``prediction`` (samples x classes);
* ``analysis.h5``: one group per category (a class, or ``all``) holding ``index`` (data set
  indices), ``embedding/spectral`` (with the eigenvalues as an attribute), ``embedding/tsne`` and
  ``cluster/spray-NN`` (the SpRAy clusters, NN of them).

Every file is written under a temporary name and renamed; the folder must be new, empty, or an
earlier export (recognised by the marker file this module writes first).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hope_attr.audit._batch import read_item
from hope_attr.audit._fingerprint import dataset_fingerprint
from hope_attr.audit._manifest import MISSING, atomic_write, temporary_path
from hope_attr.audit._spray import SprayResult
from hope_attr.audit._spray import spray as run_spray
from hope_attr.audit._store import AttributionStore

PROJECT = "project.yaml"
_FILES = ("label-map.json", "input.h5", "attribution.h5", "analysis.h5", PROJECT)
_MARKER = ".hope_attr_virelay.json"
_CHUNK = 256  # examples per write of input.h5: bounded memory for any data set size


def to_virelay(
    store: AttributionStore | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dataset: Any,
    label_names: Sequence[str] | None = None,
    spray: SprayResult | Mapping[int | str, SprayResult] | None = None,
) -> Path:
    """Write a ViRelAy project of a store's maps, its SpRAy analyses and the input images.

    Args:
        store: an :class:`~hope_attr.audit.AttributionStore` (or its folder) of image maps,
            ``(C, H, W)`` or ``(H, W)``: ViRelAy shows images only.
        out_dir: the project's folder (created if missing): new, empty, or an earlier export.
        dataset: the data set the store was computed on (checked against the store's record of
            it); its inputs are the images ViRelAy shows. ViRelAy guesses their pixel range
            among [0, 1], [-1, 1] and [0, 255].
        label_names: the classes' names in class order; default ``"class 0"``, ``"class 1"``...
        spray: what the analysis holds: a :class:`~hope_attr.audit.SprayResult` of
            ``spray(store, ...)`` (category ``all``), or a mapping from a class index (or any
            category name) to one, e.g. one SpRAy per predicted class, as CoRelAy does. None
            runs ``spray(store)`` on every stored map. Results need their embeddings (the
            default ``embed=True``).

    Returns:
        The project file's path: ``virelay <path>`` serves it, ``virelay.model.Project(path)``
        opens it.

    Raises:
        ImportError: h5py is missing.
        ValueError: the maps are no images, ``dataset`` is not the store's data set, a SpRAy
            result holds examples the store does not, or ``label_names`` is too short.
        FileExistsError: ``out_dir`` holds other files.
    """
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            "to_virelay writes HDF5 files with h5py: pip install 'hope_attr[virelay]' (h5py "
            "and the ViRelAy viewer)"
        ) from error
    store = store if isinstance(store, AttributionStore) else AttributionStore(store)
    shape = _image_shape(store)
    _check_dataset(store, dataset)
    analyses = _analyses(store, spray)
    names = _label_names(store, label_names)
    root = _prepare_folder(Path(out_dir), store)
    run_id = store.manifest["run_id"]
    label_map = [{"index": i, "word_net_id": f"{i:08d}", "name": n} for i, n in enumerate(names)]
    atomic_write(root / "label-map.json", json.dumps(label_map, indent=1).encode(), run_id)
    unlabeled = len(names) - 1  # the last entry when some examples have no label
    with _replaced(root / "input.h5", run_id) as path, h5py.File(path, "w") as file:
        _write_inputs(file, store, dataset, shape, unlabeled)
    with _replaced(root / "attribution.h5", run_id) as path, h5py.File(path, "w") as file:
        _write_attributions(file, store, shape, len(names), unlabeled)
    with _replaced(root / "analysis.h5", run_id) as path, h5py.File(path, "w") as file:
        _write_analyses(file, analyses)
    atomic_write(root / PROJECT, _project_yaml(store, shape).encode(), run_id)
    return root / PROJECT


def _image_shape(store: AttributionStore) -> tuple[int, int, int]:
    shape = tuple(store.manifest["map_shape"])
    shape = (1, *shape) if len(shape) == 2 else shape
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return shape
    raise ValueError(
        f"the store at {store.path} holds maps of shape {tuple(store.manifest['map_shape'])}; "
        "ViRelAy shows images only: maps shaped (channels, height, width) with 1, 3 or 4 "
        "channels, or (height, width)"
    )


def _check_dataset(store: AttributionStore, dataset: Any) -> None:
    items = store.settings["items"]
    now = dataset_fingerprint(dataset, items["key"], items["label_key"])
    stored = store.settings["dataset"]
    if now != stored:
        raise ValueError(
            f"dataset is not the data set the store at {store.path} was computed on (stored: "
            f"{stored['length']} examples, items hash {stored['sha256']}; given: {now['length']} "
            f"examples, items hash {now['sha256']}): pass the audited data set, so that the "
            "viewer shows each map beside its own input"
        )


def _analyses(store: AttributionStore, spray: Any) -> dict[str, SprayResult]:
    if spray is None:
        spray = run_spray(store)
    results = {"all": spray} if isinstance(spray, SprayResult) else dict(spray)
    if not results or not all(isinstance(r, SprayResult) for r in results.values()):
        raise TypeError("spray must be a SprayResult, a non-empty mapping to them, or None")
    named = {}
    for category, result in results.items():
        name = f"{category:08d}" if isinstance(category, (int, np.integer)) else str(category)
        unknown = np.setdiff1d(result.indices, store.indices)
        if unknown.size:
            raise ValueError(
                f"the SpRAy result for {category!r} analysed examples {unknown[:5].tolist()} that "
                f"the store at {store.path} does not hold: pass results of spray(store, ...)"
            )
        if result.spectral is None and result.embedding is None:
            raise ValueError(
                f"the SpRAy result for {category!r} has no embedding for the viewer to plot: "
                "run spray with embed=True (the default)"
            )
        named[name] = result
    return named


def _label_names(store: AttributionStore, label_names: Sequence[str] | None) -> list[str]:
    classes = [store.numpy(field) for field in ("labels", "predictions", "targets")]
    count = max([int(c.max()) + 1 for c in classes if c.size] + [1])
    if label_names is None:
        names = [f"class {i}" for i in range(count)]
    else:
        names = [str(name) for name in label_names]
        if len(names) < count:
            raise ValueError(
                f"label_names has {len(names)} names, but the store holds class {count - 1}: "
                "name every class, in class order"
            )
    if (classes[0] == MISSING).any():
        names.append("(no label)")  # ViRelAy needs a label for every example
    return names


def _prepare_folder(root: Path, store: AttributionStore) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    present = {path.name for path in root.iterdir()}
    if present and (_MARKER not in present or present - {*_FILES, _MARKER}):
        raise FileExistsError(
            f"{root} holds files that are not an earlier to_virelay export "
            f"({', '.join(sorted(present - {*_FILES, _MARKER})[:5]) or 'no marker file'}): "
            "choose a new or empty folder, so that none of your files is overwritten"
        )
    marker = {"store": str(store.path.resolve()), "files": list(_FILES)}
    atomic_write(root / _MARKER, json.dumps(marker).encode(), store.manifest["run_id"])
    return root


@contextlib.contextmanager
def _replaced(path: Path, run_id: str) -> Iterator[Path]:
    """A temporary path to write, renamed onto ``path`` when the block ends without error."""
    temporary = temporary_path(path, run_id)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def _write_inputs(
    file: Any, store: AttributionStore, dataset: Any, shape: tuple, unlabeled: int
) -> None:
    items = store.settings["items"]
    count = len(dataset)
    # ViRelAy hands images to Pillow, which encodes 3 or 4 channels but not 1: a gray image is
    # shown as 3 equal channels (the attribution file keeps the maps as they are).
    shown = (3, *shape[1:]) if shape[0] == 1 else shape
    data = file.create_dataset("data", (count, *shown), dtype="float32", chunks=True)
    labels = np.empty(count, np.uint32)
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        chunk = np.empty((stop - start, *shape), np.float32)
        for row, index in enumerate(range(start, stop)):
            x, label = read_item(dataset, index, items["key"], items["label_key"])
            chunk[row] = x.detach().cpu().reshape(shape).float().numpy()
            labels[index] = unlabeled if label is None else label
        data[start:stop] = np.broadcast_to(chunk, (stop - start, *shown))
    file.create_dataset("label", data=labels)


def _write_attributions(
    file: Any, store: AttributionStore, shape: tuple, num_classes: int, unlabeled: int
) -> None:
    count = len(store)
    dtype = np.dtype(store.manifest["map_dtype"])  # the store's own values, bit for bit
    file.create_dataset("index", data=store.indices.astype(np.uint32))
    maps = file.create_dataset("attribution", (count, *shape), dtype=dtype, chunks=True)
    labels = np.empty(count, np.uint32)
    predictions = np.zeros((count, num_classes), np.float32)
    row = 0
    for arrays in store._batches():
        size = len(arrays["indices"])
        maps[row : row + size] = arrays["maps"].reshape(size, *shape)
        known = arrays["labels"] != MISSING
        labels[row : row + size] = np.where(known, arrays["labels"], unlabeled)
        # The store keeps each prediction's arg-max class, not the logits: one-hot.
        predicted = arrays["predictions"]
        hit = np.flatnonzero(predicted != MISSING)
        predictions[row + hit, predicted[hit]] = 1.0
        row += size
    file.create_dataset("label", data=labels)
    file.create_dataset("prediction", data=predictions)


def _write_analyses(file: Any, analyses: dict[str, SprayResult]) -> None:
    for category, result in analyses.items():
        group = file.create_group(category)
        group.create_dataset("index", data=np.asarray(result.indices, dtype=np.uint32))
        embeddings = group.create_group("embedding")
        if result.spectral is not None:
            spectral = embeddings.create_dataset("spectral", data=result.spectral.astype("f4"))
            spectral.attrs["eigenvalue"] = result.eigenvalues.astype(np.float32)
        if result.embedding is not None:
            tsne = embeddings.create_dataset("tsne", data=result.embedding.astype(np.float32))
            tsne.attrs["embedding"] = "spectral"
            tsne.attrs["index"] = np.array([0, 1])
        name = f"spray-{result.n_clusters:02d}"
        clusters = group.create_group("cluster").create_dataset(
            name, data=np.asarray(result.clusters, dtype=np.uint32)
        )
        clusters.attrs["embedding"] = "spectral"
        clusters.attrs["k"] = result.n_clusters


def _project_yaml(store: AttributionStore, shape: tuple[int, int, int]) -> str:
    settings = store.settings
    method = settings["method"].rsplit(".", 1)[-1]
    options = ", ".join(f"{k}={v}" for k, v in settings["method_options"].items())
    model = settings["model"].get("module_types") or settings["model"]["callable"]
    strategy = {"predicted": "predicted_label", "label": "true_label"}.get(
        settings["target"], f"class {settings['target']}"
    )
    quoted = json.dumps  # a JSON string is a YAML double-quoted scalar
    examples = f"{store.manifest['num_examples']} examples"
    return "\n".join(
        [
            "project:",
            f"  name: {quoted(f'{method} audit: {store.path.name}')}",
            f"  model: {quoted(model)}",
            "  label_map: label-map.json",
            "  dataset:",
            f"    name: {quoted(examples)}",
            "    type: hdf5",
            "    path: input.h5",
            f"    input_width: {shape[2]}",
            f"    input_height: {shape[1]}",
            "    up_sampling_method: none",
            "    down_sampling_method: none",
            "  attributions:",
            f"    attribution_method: {quoted(f'{method}({options})')}",
            f"    attribution_strategy: {quoted(strategy)}",
            "    sources:",
            "    - attribution.h5",
            "  analyses:",
            "  - analysis_method: SpRAy",
            "    sources:",
            "    - analysis.h5",
            "",
        ]
    )
