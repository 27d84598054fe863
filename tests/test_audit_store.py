"""hope_attr.audit's store under hostile conditions: what it must never do to data.

Each test is one scenario of issue 30 played for real: files of the user's in the store's folder,
two writers on one folder, a model swapped for one with the same weights, another data set of the
same length, a shard copied over another, damaged and missing shards, damaged or foreign
manifests, leftovers of killed runs, and the user's umask. The reference is always the store of
an uninterrupted run in a fresh folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient
from torch import nn

from hope_attr.audit import AttributionStore, StoreError, StoreLockedError, attribute_dataset

ROOT = Path(__file__).resolve().parents[1]
LOCK = ".hope_attr_audit.lock"
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]


def mlp(activation: type[nn.Module] = nn.Tanh, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), activation(), nn.Linear(7, 3)).double().eval()


def data(count: int = 22, seed: int = 1) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(count, 5, generator=generator, dtype=torch.float64) * 0.5
    labels = torch.randint(0, 3, (count,), generator=generator)
    return torch.utils.data.TensorDataset(inputs, labels)


def run(out: Path, model: nn.Module | None = None, dataset=None, **options) -> AttributionStore:
    method = options.pop("method", None) or InputXGradient(model if model is not None else mlp())
    return attribute_dataset(
        method,
        data() if dataset is None else dataset,
        out=out,
        baselines=None,
        batch_size=4,
        show_progress=False,
        **options,
    )


def shard(out: Path, batch: int) -> Path:
    manifest = json.loads((out / "manifest.json").read_text())
    return out / manifest["shards"][str(batch)]["file"]


def test_resume_false_deletes_only_the_stores_own_files(tmp_path: Path) -> None:
    out = tmp_path / "store"
    old = run(out, mlp(seed=3))
    old_files = {shard(out, batch) for batch in range(6)}
    (out / "notes.txt").write_text("the user's notes")
    (out / "shards" / "mine.txt").write_text("the user's")
    (out / "shards" / "00000.npz").write_bytes(b"the user's own archive")
    # A shard of the old run written just before a kill, not yet listed: the store's own.
    unlisted = out / "shards" / f"00009-{old.manifest['run_id']}.npz"
    unlisted.write_bytes(shard(out, 0).read_bytes())
    # A listed shard the user replaced with a file of theirs: no longer what the store wrote.
    replaced = shard(out, 5)
    replaced.write_bytes(b"the user's replacement")

    with pytest.warns(RuntimeWarning, match=r"left 1 files of the old store .*00005-.*\.npz"):
        store = run(out, mlp(), resume=False)
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert (out / "shards" / "mine.txt").read_text() == "the user's"
    assert (out / "shards" / "00000.npz").read_bytes() == b"the user's own archive"
    assert replaced.read_bytes() == b"the user's replacement"
    assert not unlisted.exists() and not any(path.exists() for path in old_files - {replaced})
    np.testing.assert_array_equal(store.numpy(), run(tmp_path / "ref").numpy())
    assert store.complete and store.manifest["run_id"] != old.manifest["run_id"]


@pytest.mark.parametrize("resume", [True, False])
def test_a_non_empty_folder_that_is_not_a_store_is_refused(tmp_path: Path, resume: bool) -> None:
    (tmp_path / "thesis.tex").write_text("the user's")
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00000.npz").write_bytes(b"the user's")
    with pytest.raises(
        FileExistsError,
        match=r"is not empty \(shards, thesis.tex\) and holds no audit manifest, so it is not an "
        r"audit store\..*choose a new or empty out folder",
    ):
        run(tmp_path, resume=resume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "thesis.tex"]  # no lock left
    assert (tmp_path / "shards" / "00000.npz").read_bytes() == b"the user's"


_WRITER = """
import sys, time, torch
from torch import nn
from captum.attr import InputXGradient
from hope_attr.audit import attribute_dataset

class Slow(torch.utils.data.Dataset):
    def __init__(self, inner): self.inner = inner
    def __len__(self): return len(self.inner)
    def __getitem__(self, i):
        time.sleep(0.05 if i > 4 else 0)  # the first batch quickly, then slowly
        return self.inner[i]

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double().eval()
generator = torch.Generator().manual_seed(1)
inputs = torch.rand(40, 5, generator=generator, dtype=torch.float64) * 0.5
labels = torch.randint(0, 3, (40,), generator=generator)
attribute_dataset(InputXGradient(model), Slow(torch.utils.data.TensorDataset(inputs, labels)),
                  out=sys.argv[1], baselines=None, batch_size=4, show_progress=False)
"""


def test_a_second_writer_is_refused_while_the_first_runs_and_takes_over_once_it_died(
    tmp_path: Path,
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(_WRITER))
    out = tmp_path / "store"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, str(script), str(out)], env=environment)
    try:
        deadline = time.monotonic() + 120
        while (
            not (out / "manifest.json").exists()
            or not json.loads((out / "manifest.json").read_text())["shards"]
        ):
            assert writer.poll() is None and time.monotonic() < deadline, "the writer stopped"
            time.sleep(0.02)
        second = mlp(nn.Sigmoid, seed=7)
        with pytest.raises(
            StoreLockedError,
            match=rf"is being written by another run \(pid {writer.pid} on host "
            rf"'{socket.gethostname()}', since .*\): two writers would mix their maps in one "
            r"store\. Use another out folder, or wait for that run to finish",
        ):
            run(out, second, data(40), resume=False)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert (out / LOCK).exists()  # a killed run cannot remove its lock
    with pytest.warns(
        RuntimeWarning, match=rf"was left by a run that is no longer running \(pid {writer.pid} "
    ):
        store = run(out, second, data(40), resume=False)
    reference = run(tmp_path / "ref", second, data(40))
    assert store.complete and store.settings["model"] == reference.settings["model"]
    np.testing.assert_array_equal(store.numpy(), reference.numpy())
    assert not (out / LOCK).exists()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path: Path) -> None:
    run(tmp_path)
    owner = {"pid": 1, "host": "elsewhere.example", "started": 0.0}
    (tmp_path / LOCK).write_text(json.dumps(owner))
    with pytest.raises(
        StoreLockedError,
        match=r"another run \(pid 1 on host 'elsewhere.example', since .*\).*If no audit runs as "
        r"that process any more, delete the lock file .*\.hope_attr_audit\.lock and run again",
    ):
        run(tmp_path)
    assert json.loads((tmp_path / LOCK).read_text()) == owner


def test_a_model_with_the_same_weights_and_another_activation_is_another_model(
    tmp_path: Path,
) -> None:
    run(tmp_path, mlp(nn.Tanh))
    before = shard(tmp_path, 0).read_bytes()
    swapped = mlp(nn.Sigmoid)
    swapped.load_state_dict(mlp(nn.Tanh).state_dict())
    with pytest.raises(
        ValueError,
        match=r"holds a run with other settings \(model module tree: stored '\w+', now '\w+' "
        r"\('Sequential\(Linear, Tanh, Linear\)' -> 'Sequential\(Linear, Sigmoid, Linear\)'\); "
        r"model outputs on the probe inputs: they differ beyond rounding",
    ):
        run(tmp_path, swapped)
    assert shard(tmp_path, 0).read_bytes() == before


def test_two_lambdas_are_told_apart_by_their_outputs(tmp_path: Path) -> None:
    def method(function):
        return InputXGradient(function)

    run(tmp_path, method=method(lambda x: (x * 2.0).sum(1)), target=None)
    with pytest.raises(
        ValueError,
        match=r"other settings \(model outputs on the probe inputs: they differ beyond rounding "
        r"\(another function, or another model with the same weights\)\)",
    ):
        run(tmp_path, method=method(lambda x: (x**2).sum(1)), target=None)
    # Another function object that computes the same: the same model, so the run resumes.
    store = run(tmp_path, method=method(lambda x: (x * 2.0).sum(1)), target=None)
    assert store.complete


def test_another_data_set_of_the_same_length_is_refused(tmp_path: Path) -> None:
    run(tmp_path)
    inputs, labels = data().tensors
    changed = inputs.clone()
    changed[11, 2] += 1e-9  # the middle item, one value, in the last bits
    for other in (data(seed=2), torch.utils.data.TensorDataset(changed, labels)):
        with pytest.raises(
            ValueError,
            match=r"other settings \(dataset: stored 22 examples with items hash \w+, now 22 "
            r"examples with items hash \w+ \(another data set, or its items changed\)\)",
        ):
            run(tmp_path, dataset=other)

    class Wrapped(torch.utils.data.Dataset):  # the same items through another class: accepted
        def __len__(self) -> int:
            return 22

        def __getitem__(self, index: int):
            return data()[index]

    assert run(tmp_path, dataset=Wrapped()).complete


def test_a_data_set_with_random_transforms_is_refused_with_the_fix(tmp_path: Path) -> None:
    class Augmented(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int):
            return torch.rand(5, dtype=torch.float64)

    with pytest.raises(ValueError, match=r"gave a different input when read again.*evaluation"):
        run(tmp_path, dataset=Augmented())
    assert not any(tmp_path.iterdir())


def test_a_shard_copied_over_another_is_caught_on_read_and_recomputed_on_resume(
    tmp_path: Path,
) -> None:
    reference = run(tmp_path / "ref")
    out = tmp_path / "store"
    run(out)
    shutil.copyfile(shard(out, 1), shard(out, 2))  # cp shards/00001-*.npz shards/00002-*.npz
    store = AttributionStore(out)
    np.testing.assert_array_equal(store[4].map, reference[4].map)
    with pytest.raises(
        StoreError,
        match=r"shard .*/shards/00002-\w+\.npz \(batch 2, examples 8 to 11\) is damaged or was "
        r"replaced: its SHA-256 differs from the one recorded when it was written\. Call "
        r"hope_attr.audit.attribute_dataset again with the same arguments",
    ):
        store[8]
    with pytest.raises(StoreError, match=r"00002-\w+\.npz \(batch 2, examples 8 to 11\)"):
        store.numpy()
    with pytest.warns(RuntimeWarning, match=r"recomputing 1 shards of .*00002-\w+\.npz"):
        resumed = run(out)
    np.testing.assert_array_equal(resumed.numpy(), reference.numpy())
    np.testing.assert_array_equal(resumed[8].map, reference[8].map)


def test_damaged_and_missing_shards_are_named_on_read_and_recomputed_on_resume(
    tmp_path: Path,
) -> None:
    reference = run(tmp_path / "ref")
    out = tmp_path / "store"
    run(out)
    damaged, missing = shard(out, 3), shard(out, 5)
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    missing.unlink()
    store = AttributionStore(out)
    with pytest.raises(StoreError, match=rf"shard {damaged} \(batch 3, .*\) is damaged"):
        store[13]
    with pytest.raises(
        StoreError,
        match=rf"shard {missing} \(batch 5, examples 20 to 21\) is missing\. Call "
        r"hope_attr.audit.attribute_dataset again",
    ):
        store[21]
    problems = store.verify()  # reading every shard finds both, naming their files
    assert len(problems) == 2 and str(damaged) in problems[0] and str(missing) in problems[1]
    with pytest.warns(RuntimeWarning, match=r"recomputing 2 shards") as caught:
        resumed = run(out)
    assert "is missing" in str(caught[0].message) and "is damaged" in str(caught[0].message)
    assert resumed.complete
    np.testing.assert_array_equal(resumed.numpy(), reference.numpy())


def _edit(manifest: dict, change: str) -> str | None:
    """Apply one hostile edit; returns replacement text for the whole file, or None."""
    entry = manifest["shards"]["0"]
    if change == "batch_size 0":
        manifest["batch_size"] = 0
    elif change == "stop 10**11":
        entry["stop"] = 10**11
    elif change == "absolute file":
        entry["file"] = "/etc/passwd"
    elif change == "parent file":
        entry["file"] = "../elsewhere/00000.npz"
    elif change == "format 1":
        manifest["format"] = "hope_attr.audit/1"
    elif change == "a list":
        return json.dumps([manifest])
    elif change == "not JSON":
        return "my own notes, not JSON"
    return None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "truncated",
            r" cannot be read as JSON \(.*\)\. If this folder is an audit store, its manifest was "
            r"damaged .*copy the folder again.*If manifest.json is your own file, choose another "
            r"out folder",
        ),
        ("not JSON", r" cannot be read as JSON .*choose another out folder"),
        (
            "a list",
            r" is not a hope_attr audit manifest \(it holds a JSON list without a 'format' "
            r"field\).*Choose another out folder",
        ),
        (
            "batch_size 0",
            r" is damaged or was edited: batch_size must be an integer >= 1, found 0\. hope_attr "
            r"writes consistent manifests only; restore the folder from a copy, or run the audit "
            r"again into another out folder",
        ),
        (
            "stop 10**11",
            r" is damaged or was edited: shard entry '0': batch 0 holds examples 0 to 3, the "
            r"entry says start=0, stop=100000000000\. .*restore the folder from a copy",
        ),
        (
            "absolute file",
            r" is damaged or was edited: shard entry '0': its file must be "
            r"'shards/00000-\w+\.npz', found '/etc/passwd'",
        ),
        (
            "parent file",
            r" is damaged or was edited: shard entry '0': its file must be "
            r"'shards/00000-\w+\.npz', found '\.\./elsewhere/00000\.npz'",
        ),
        (
            "format 1",
            r" has format 'hope_attr.audit/1', this hope_attr reads 'hope_attr.audit/2' \(format "
            r"1 stores carry no shard checksums.*\): run the audit again into a new out folder",
        ),
    ],
)
def test_damaged_or_foreign_manifests_are_named_with_the_fix(
    tmp_path: Path, change: str, message: str
) -> None:
    run(tmp_path)
    path = tmp_path / "manifest.json"
    text = path.read_text()
    manifest = json.loads(text)
    replacement = text[: len(text) // 2] if change == "truncated" else _edit(manifest, change)
    path.write_text(replacement if replacement is not None else json.dumps(manifest))
    before = sorted(tmp_path.rglob("*"))
    for attempt in (lambda: AttributionStore(tmp_path), lambda: run(tmp_path)):
        with pytest.raises(StoreError, match="^" + re.escape(str(path)) + message):
            attempt()
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing deleted


def test_a_shard_of_another_map_shape_is_named_not_a_numpy_error(tmp_path: Path) -> None:
    run(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["map_shape"] = [6]  # as if the manifest and its checksums had been rewritten
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        StoreError,
        match=r"shard .*00000-\w+\.npz \(batch 0, examples 0 to 3\) holds maps \(4, 5\) float64, "
        r"the manifest says \(4, 6\) float64\. Call hope_attr.audit.attribute_dataset again",
    ):
        AttributionStore(tmp_path).numpy()


def test_leftover_temporary_files_are_cleaned_on_resume_and_the_users_kept(tmp_path: Path) -> None:
    store = run(tmp_path)
    run_id = store.manifest["run_id"]
    ours = [
        tmp_path / f".manifest.json.{run_id}-0123abcd.tmp",
        tmp_path / "shards" / f".00002-{run_id}.npz.{run_id}-89abcdef.tmp",
    ]
    theirs = [tmp_path / ".notes.tmp", tmp_path / "shards" / ".manifest.json.ffffffff-00000000.tmp"]
    for path in ours + theirs:
        path.write_bytes(b"half written")
    assert run(tmp_path).complete
    assert not any(path.exists() for path in ours) and all(path.exists() for path in theirs)


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_files_are_created_with_the_users_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        run(tmp_path / "store")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for path in [tmp_path / "store" / "manifest.json", *(tmp_path / "store" / "shards").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
