"""Opening a store's folder for a run: create, resume (checked) or start over.

Called with the store's lock held. The rules that keep a user's files safe:

* a folder without a manifest is used only if it is empty (or holds nothing but what a run that
  died before its first manifest left: the lock, a temporary manifest, an empty ``shards/``);
* ``resume=False`` deletes only the store's own files: the shards its manifest lists whose
  checksum still matches, the shards and temporary files named with its run id; anything else
  (the user's notes, a file the user put in ``shards/``, a listed shard the user replaced) stays;
* resuming checks the settings (the run's identity) and every listed shard: a missing, damaged or
  replaced shard is dropped from the manifest and recomputed.
"""

from __future__ import annotations

import contextlib
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hope_attr.audit._batch import Plan
from hope_attr.audit._fingerprint import differences
from hope_attr.audit._manifest import (
    FORMAT,
    LOCK,
    SHARDS,
    StoreError,
    load_shard,
    new_run_id,
    read_manifest,
    sha256,
    shard_name,
    temporary_run,
    write_manifest,
)


def open_store(root: Path, settings: dict[str, Any], plan: Plan, resume: bool) -> dict[str, Any]:
    """The manifest this run continues: a new one, or the folder's own after its checks.

    Raises:
        FileExistsError: the folder holds files but no manifest (it is not a store).
        StoreError: the folder's manifest is damaged or foreign.
        ValueError: resuming a store that holds another run (the message lists what differs).
    """
    manifest = read_manifest(root)
    if manifest is None:
        _refuse_foreign(root)
        for path in root.iterdir():  # what a run that died before its first manifest left
            if temporary_run(path.name) is not None:
                path.unlink()
        return _create(root, settings, plan)
    if not resume:
        _delete_store_files(root, manifest)
        return _create(root, settings, plan)  # replaces the old manifest in one rename
    found = differences(manifest["settings"], settings)
    if found:
        raise ValueError(
            f"{root} holds a run with other settings ({'; '.join(found)}). Use another out "
            "folder, or resume=False to delete that run's files and start over."
        )
    _remove_temporaries(root, manifest["run_id"])
    _drop_damaged_shards(root, manifest)
    return manifest


def _refuse_foreign(root: Path) -> None:
    foreign = sorted(
        path.name
        for path in root.iterdir()
        if not (
            path.name == LOCK
            or temporary_run(path.name) is not None
            or (path.name == SHARDS and path.is_dir() and not any(path.iterdir()))
        )
    )
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise FileExistsError(
            f"{root} is not empty ({shown}) and holds no audit manifest, so it is not an audit "
            "store. attribute_dataset writes only into a new or empty folder or into its own "
            "store, so that it never overwrites or deletes your files: choose a new or empty out "
            "folder."
        )


def _delete_store_files(root: Path, manifest: dict[str, Any]) -> None:
    run_id = manifest["run_id"]
    kept = []
    for entry in manifest["shards"].values():
        path = root / entry["file"]
        if not path.exists():
            continue
        if sha256(path.read_bytes()) == entry["sha256"]:
            path.unlink()
        else:
            kept.append(entry["file"])
    shards = root / SHARDS
    listed = {entry["file"] for entry in manifest["shards"].values()}
    for path in shards.iterdir() if shards.is_dir() else ():
        name = f"{SHARDS}/{path.name}"
        # Unlisted files with the run's own names: shards of a killed run written before the
        # manifest listed them, and temporary files.
        own = name not in listed and _is_own_shard(name, run_id)
        if own or temporary_run(path.name) == run_id:
            path.unlink()
    _remove_temporaries(root, run_id)
    if kept:
        warnings.warn(
            f"resume=False left {len(kept)} files of the old store in {root} ({', '.join(kept)}): "
            "they changed since the store wrote them, so they may be yours. Delete them if not.",
            RuntimeWarning,
            stacklevel=4,
        )


def _is_own_shard(name: str, run_id: str) -> bool:
    """Whether ``name`` (``shards/...``) is a shard name of the store with ``run_id``."""
    stem = name.removeprefix(f"{SHARDS}/").partition("-")[0]
    return stem.isdigit() and name == shard_name(int(stem), run_id)


def _remove_temporaries(root: Path, run_id: str) -> None:
    """Temporary files of this store left by a killed run (named with its run id)."""
    for folder in (root, root / SHARDS):
        for path in folder.iterdir() if folder.is_dir() else ():
            if temporary_run(path.name) == run_id:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _drop_damaged_shards(root: Path, manifest: dict[str, Any]) -> None:
    problems = []
    for batch in sorted(manifest["shards"], key=int):
        try:
            load_shard(root, manifest, int(batch))
        except StoreError as error:
            problems.append(str(error).split(". ")[0])
            del manifest["shards"][batch]
    if problems:
        write_manifest(root, manifest)  # before recomputing: the bad shards no longer count
        warnings.warn(
            f"recomputing {len(problems)} shards of {root}: " + "; ".join(problems),
            RuntimeWarning,
            stacklevel=4,
        )


def _create(root: Path, settings: dict[str, Any], plan: Plan) -> dict[str, Any]:
    manifest = {
        "format": FORMAT,
        "run_id": new_run_id(),
        "settings": settings,
        "versions": _versions(),
        "num_examples": plan.num_examples,
        "batch_size": plan.batch_size,
        "map_shape": settings["input_shape"],
        "map_dtype": settings["map_dtype"],
        "shards": {},
    }
    write_manifest(root, manifest)
    (root / SHARDS).mkdir(exist_ok=True)
    return manifest


def _versions() -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    for package in ("captum", "hope_attr"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:  # a source tree that was never installed
            versions[package] = "unknown"
    return versions
