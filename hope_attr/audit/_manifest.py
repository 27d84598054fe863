"""The on-disk layout of an audit store: names, atomic writes, checksums and the manifest.

A store is a folder::

    out/manifest.json                  settings, versions, and the shards that are complete
    out/shards/00000-1a2b3c4d.npz      batch 0: indices, maps, labels, predictions, targets
    out/shards/00001-1a2b3c4d.npz      ...
    out/.hope_attr_audit.lock          only while a run writes (see :mod:`._lock`)

Batch ``k`` always holds the examples ``k * batch_size`` up to ``(k + 1) * batch_size - 1``. A
shard file is named by its batch and by the store's ``run_id`` (random, drawn when the store is
created), so a file the store did not write never has a store's name: the user's own
``shards/00000.npz`` is neither read, nor overwritten, nor deleted.

A shard counts as written once the manifest lists it with the SHA-256 of its bytes: the shard is
written first and the manifest after it, each to a temporary file that is then renamed. A run
killed at any moment leaves a manifest that lists only complete shards, and a shard changed or
damaged after it was written no longer matches its checksum.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "hope_attr.audit/2"
MANIFEST = "manifest.json"
SHARDS = "shards"
LOCK = ".hope_attr_audit.lock"
FIELDS = ("indices", "maps", "labels", "predictions", "targets")
MISSING = -1  # labels, predictions or targets that the run did not have

# ".<target name>.<run id>-<random>.tmp": the run id says which store left a temporary file.
_TEMPORARY = re.compile(r"^\..+\.(?P<run>[0-9a-f]{8})-[0-9a-f]{8}\.tmp$")
_RUN_ID = re.compile(r"^[0-9a-f]{8}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEYS = ("format", "run_id", "settings", "versions", "num_examples", "batch_size", "map_shape")


class StoreError(ValueError):
    """A store's files are not what its manifest says (damaged, edited, missing or foreign).

    The message names the file and says how to fix it.
    """


def new_run_id() -> str:
    return secrets.token_hex(4)


def shard_name(batch: int, run_id: str) -> str:
    """The path of batch ``batch``'s shard, relative to the store's folder."""
    return f"{SHARDS}/{batch:05d}-{run_id}.npz"


def temporary_path(path: Path, run_id: str) -> Path:
    return path.with_name(f".{path.name}.{run_id}-{secrets.token_hex(4)}.tmp")


def temporary_run(name: str) -> str | None:
    """The run id in a temporary file's name, or None when the name is not one of ours."""
    found = _TEMPORARY.match(name)
    return None if found is None else found["run"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes, run_id: str) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it onto ``path``.

    A rename within one folder is atomic: readers (and a resumed run) see the old file or the new
    one, never half of one. The file is created with mode 0o666, so the user's umask decides its
    permissions, as for any file the user's programs create.
    """
    temporary = temporary_path(path, run_id)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def encode_shard(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{field: arrays[field] for field in FIELDS})
    return buffer.getvalue()


def write_shard(
    root: Path, batch: int, run_id: str, arrays: dict[str, np.ndarray]
) -> dict[str, str]:
    """Write one shard; returns its manifest entry's ``file`` and ``sha256``."""
    data = encode_shard(arrays)
    name = shard_name(batch, run_id)
    atomic_write(root / name, data, run_id)
    return {"file": name, "sha256": sha256(data)}


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    atomic_write(root / MANIFEST, text, manifest["run_id"])


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The validated manifest of ``root``, or None when there is none.

    Raises:
        StoreError: the file is not JSON, not a hope_attr manifest, or its fields are
            inconsistent; the message names the file, the problem and the fix.
    """
    path = root / MANIFEST
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(
            f"{path} cannot be read as JSON ({error}). If this folder is an audit store, its "
            "manifest was damaged (a truncated copy, a full disk): without it the shards cannot "
            "be checked, so copy the folder again from its source, or delete the folder and run "
            "the audit again. If manifest.json is your own file, choose another out folder."
        ) from None
    if not isinstance(manifest, dict) or "format" not in manifest:
        kind = type(manifest).__name__
        raise StoreError(
            f"{path} is not a hope_attr audit manifest (it holds a JSON {kind} without a "
            "'format' field): the folder is not an audit store. Choose another out folder; "
            "hope_attr does not write into a folder that holds files of its own."
        )
    if manifest["format"] != FORMAT:
        raise StoreError(
            f"{path} has format {manifest['format']!r}, this hope_attr reads {FORMAT!r}"
            + (
                " (format 1 stores carry no shard checksums, so their shards cannot be "
                "verified): run the audit again into a new out folder, or delete this one"
                if manifest["format"] == "hope_attr.audit/1"
                else ": choose another out folder"
            )
        )
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Raise a :class:`StoreError` naming the first field of ``manifest`` that is inconsistent."""
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise StoreError(
            f"{path} is damaged or was edited: {problem}. hope_attr writes consistent manifests "
            "only; restore the folder from a copy, or run the audit again into another out "
            "folder (or delete this one)."
        )


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    missing = [key for key in (*_KEYS, "map_dtype", "shards") if key not in manifest]
    if missing:
        return f"it lacks the fields {missing}"
    if not isinstance(manifest["run_id"], str) or not _RUN_ID.match(manifest["run_id"]):
        return f"run_id must be 8 hexadecimal digits, found {manifest['run_id']!r}"
    for key in ("num_examples", "batch_size"):
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{key} must be an integer >= 1, found {value!r}"
    shape = manifest["map_shape"]
    if not isinstance(shape, list) or not all(_is_size(size) for size in shape):
        return f"map_shape must be a list of sizes, found {shape!r}"
    try:
        np.dtype(manifest["map_dtype"])
    except TypeError:
        return f"map_dtype {manifest['map_dtype']!r} is no numpy dtype"
    if not isinstance(manifest["settings"], dict) or not isinstance(manifest["versions"], dict):
        return "settings and versions must be JSON objects"
    shards = manifest["shards"]
    if not isinstance(shards, dict):
        return f"shards must be a JSON object, found a {type(shards).__name__}"
    for batch, entry in shards.items():
        problem = _shard_entry_problem(manifest, batch, entry)
        if problem is not None:
            return f"shard entry {batch!r}: {problem}"
    return None


def _shard_entry_problem(manifest: dict[str, Any], batch: str, entry: Any) -> str | None:
    num_examples, batch_size = manifest["num_examples"], manifest["batch_size"]
    num_batches = -(-num_examples // batch_size)
    if not (batch.isdigit() and int(batch) < num_batches):
        return f"batch numbers run from 0 to {num_batches - 1}"
    if not isinstance(entry, dict):
        return f"an entry is a JSON object, found a {type(entry).__name__}"
    start = int(batch) * batch_size
    stop = min(start + batch_size, num_examples)
    if entry.get("start") != start or entry.get("stop") != stop:
        return (
            f"batch {batch} holds examples {start} to {stop - 1}, the entry says "
            f"start={entry.get('start')!r}, stop={entry.get('stop')!r}"
        )
    expected = shard_name(int(batch), manifest["run_id"])
    if entry.get("file") != expected:
        # Also refuses absolute paths and "../": only the store's own names are read.
        return f"its file must be {expected!r}, found {entry.get('file')!r}"
    if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
        return f"sha256 must be 64 hexadecimal digits, found {entry.get('sha256')!r}"
    return None


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


RECOMPUTE = (
    "Call hope_attr.audit.attribute_dataset again with the same arguments: resuming checks every "
    "shard and recomputes the ones that are missing or damaged."
)


def load_shard(root: Path, manifest: dict[str, Any], batch: int) -> dict[str, np.ndarray]:
    """The arrays of one listed shard, checked against the manifest.

    Raises:
        StoreError: the file is missing, its checksum differs from the manifest's, or its
            contents do not match the examples and map shape the manifest lists; the message
            names the file and says how to recompute it.
    """
    entry = manifest["shards"][str(batch)]
    start, stop = entry["start"], entry["stop"]
    path = root / entry["file"]
    where = f"shard {path} (batch {batch}, examples {start} to {stop - 1})"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{where} is missing. {RECOMPUTE}") from None
    if sha256(data) != entry["sha256"]:
        raise StoreError(
            f"{where} is damaged or was replaced: its SHA-256 differs from the one recorded when "
            f"it was written. {RECOMPUTE}"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {field: archive[field] for field in FIELDS}
    except Exception as error:  # a corrupt archive raises zipfile, pickle or value errors
        raise StoreError(f"{where} cannot be read ({type(error).__name__}: {error}).") from None
    expected = (stop - start, *manifest["map_shape"])
    if not np.array_equal(arrays["indices"], np.arange(start, stop)):
        return _raise(f"{where} holds other examples than its batch's")
    if arrays["maps"].shape != expected or str(arrays["maps"].dtype) != manifest["map_dtype"]:
        return _raise(
            f"{where} holds maps {arrays['maps'].shape} {arrays['maps'].dtype}, the manifest "
            f"says {expected} {manifest['map_dtype']}"
        )
    return arrays


def _raise(message: str) -> Any:
    raise StoreError(f"{message}. {RECOMPUTE}")
