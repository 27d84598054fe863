"""hope_attr.audit with the local engine: maps, the store, resuming, bad input, SpRAy.

References: the closed form of InputXGradient on a linear model, Captum's FeatureAblation (which
an order-12 expansion of a small float64 tanh MLP matches), an uninterrupted run for resumed
ones, and a dense eigensolver on an independently built graph for SpRAy's spectrum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation, InputXGradient, Saliency
from torch import nn

import hope_attr
from hope_attr.audit import AttributionStore, attribute_dataset, spray

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double().eval()


def data(count: int = 22, seed: int = 1) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(count, 5, generator=generator, dtype=torch.float64) * 0.5
    return torch.utils.data.TensorDataset(
        inputs, torch.randint(0, 3, (count,), generator=generator)
    )


class Flaky(nn.Module):
    """The MLP, failing on any batch that holds an input whose first feature is 99."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.armed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed and (x[:, 0] == 99).any():
            raise ValueError("sensor fault")
        return self.inner(x)


def test_input_x_gradient_of_a_linear_model_is_its_closed_form(tmp_path: Path) -> None:
    model = nn.Linear(5, 3).double().eval()
    dataset = data()
    store = attribute_dataset(
        InputXGradient(model),
        dataset,
        out=tmp_path,
        baselines=None,
        batch_size=4,
        show_progress=False,
    )
    inputs, labels = dataset.tensors
    predicted = (inputs @ model.weight.T + model.bias).argmax(1)
    expected = inputs * model.weight.detach()[predicted]
    assert store.complete and len(store) == len(dataset)
    np.testing.assert_allclose(store.numpy(), expected.numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(store.numpy("indices"), np.arange(len(dataset)))
    np.testing.assert_array_equal(store.numpy("labels"), labels.numpy())
    np.testing.assert_array_equal(store.numpy("predictions"), predicted.numpy())
    np.testing.assert_array_equal(store.numpy("targets"), predicted.numpy())


@pytest.mark.parametrize("target", ["predicted", "label", 2])
def test_hope_maps_match_feature_ablation_for_each_target_rule(tmp_path: Path, target) -> None:
    model, dataset = mlp(), data()
    store = attribute_dataset(
        hope_attr.HOPEAttribution(model, order=12),
        dataset,
        out=tmp_path,
        target=target,
        baselines=0.0,
        batch_size=5,
        show_progress=False,
    )
    inputs, labels = dataset.tensors
    chosen = {"predicted": model(inputs).argmax(1), "label": labels}.get(target)
    chosen = torch.full_like(labels, target) if chosen is None else chosen
    reference = FeatureAblation(model).attribute(inputs, baselines=0.0, target=chosen.tolist())
    np.testing.assert_allclose(store.numpy(), reference.detach().numpy(), atol=1e-9)
    np.testing.assert_array_equal(store.numpy("targets"), chosen.numpy())


def test_store_reads_by_index_iterates_in_order_and_gives_torch_views(tmp_path: Path) -> None:
    dataset = data(count=9)
    attribute_dataset(
        InputXGradient(mlp()),
        dataset,
        out=tmp_path,
        baselines=None,
        batch_size=4,
        show_progress=False,
    )
    store = AttributionStore(tmp_path)  # reopened from the folder alone
    maps = store.numpy()
    assert [example.index for example in store] == list(range(9))
    example = store[6]
    np.testing.assert_array_equal(example.map, maps[6])
    assert example.label == int(dataset.tensors[1][6]) and 6 in store and 9 not in store
    assert torch.equal(store.torch(), torch.from_numpy(maps))
    assert store.versions["torch"] == torch.__version__
    assert store.settings["batch_size"] == 4 and "InputXGradient" in store.settings["method"]
    with pytest.raises(IndexError, match="has 9 examples"):
        store[9]
    with pytest.raises(TypeError, match="data set index"):
        store["6"]
    with pytest.raises(FileNotFoundError, match="no manifest"):
        AttributionStore(tmp_path / "shards")


def test_a_failing_batch_is_named_what_was_written_stays_readable_and_a_rerun_resumes(
    tmp_path: Path,
) -> None:
    dataset = data()
    inputs = dataset.tensors[0].clone()
    inputs[10, 0] = 99.0  # example 10 is in batch 2 (examples 8 to 11)
    dataset = torch.utils.data.TensorDataset(inputs, dataset.tensors[1])
    flaky = Flaky(mlp())
    method = InputXGradient(flaky)
    options = dict(out=tmp_path / "run", baselines=None, batch_size=4, show_progress=False)
    with pytest.raises(
        RuntimeError,
        match=r"batch 2 \(examples 8 to 11\) failed: ValueError: "
        r"sensor fault.*2 batches written before it stay readable",
    ):
        attribute_dataset(method, dataset, **options)
    partial = AttributionStore(tmp_path / "run")
    assert not partial.complete and partial.indices.tolist() == list(range(8))
    with pytest.raises(IndexError, match="resume"):
        partial[8]

    flaky.armed = False  # the cause fixed; the parameters (the run's settings) are unchanged
    store = attribute_dataset(method, dataset, **options)
    reference = attribute_dataset(method, dataset, **{**options, "out": tmp_path / "ref"})
    assert store.complete
    np.testing.assert_array_equal(store.numpy("indices"), np.arange(len(dataset)))
    np.testing.assert_array_equal(store.numpy(), reference.numpy())
    assert len(list((tmp_path / "run" / "shards").glob("*.npz"))) == 6  # ceil(22 / 4)


class Counting(torch.utils.data.Dataset):
    """A data set that records which examples were read."""

    def __init__(self, inner: torch.utils.data.Dataset) -> None:
        self.inner, self.read = inner, []

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        self.read.append(index)
        return self.inner[index]


_KILLED_RUN = """
import sys, time, torch
from torch import nn
import hope_attr
from hope_attr.audit import attribute_dataset

class Slow(torch.utils.data.Dataset):
    def __init__(self, inner): self.inner = inner
    def __len__(self): return len(self.inner)
    def __getitem__(self, i):
        time.sleep(0.05)  # ~0.2 s per batch of 4: the parent kills the run mid-way
        return self.inner[i]

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double().eval()
generator = torch.Generator().manual_seed(1)
inputs = torch.rand(40, 5, generator=generator, dtype=torch.float64) * 0.5
labels = torch.randint(0, 3, (40,), generator=generator)
attribute_dataset(hope_attr.HOPEAttribution(model, order=3),
                  Slow(torch.utils.data.TensorDataset(inputs, labels)),
                  out=sys.argv[1], batch_size=4, show_progress=False)
"""


def test_a_killed_run_resumes_without_losing_or_duplicating_an_example(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_KILLED_RUN))
    out = tmp_path / "store"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(script), str(out)], env=environment)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # kill once at least two batches are listed
            manifest = out / "manifest.json"
            if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
                break
            assert process.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed = AttributionStore(out)
    done = set(killed.indices.tolist())
    assert 8 <= len(done) < 40 and not killed.complete

    dataset = Counting(data(count=40))  # the same examples and model as the script's
    method = hope_attr.HOPEAttribution(mlp(), order=3)
    store = attribute_dataset(method, dataset, out=out, batch_size=4, show_progress=False)
    # Stored batches are not recomputed (examples 0, 20 and 39 are read once more: the data set's
    # fingerprint).
    assert not (set(dataset.read) - {0, 20, 39}) & done
    reference = attribute_dataset(
        method, data(count=40), out=tmp_path / "ref", batch_size=4, show_progress=False
    )
    np.testing.assert_array_equal(store.numpy("indices"), np.arange(40))
    np.testing.assert_array_equal(store.numpy(), reference.numpy())


def test_a_folder_holding_another_runs_settings_is_refused(tmp_path: Path) -> None:
    dataset = data()
    options = dict(out=tmp_path, batch_size=4, show_progress=False)
    attribute_dataset(hope_attr.HOPEAttribution(mlp(), order=3), dataset, **options)
    with pytest.raises(
        ValueError,
        match=r"other settings \(method_options: .*'order': 3.*"
        r"'order': 2.*Use another out folder, or resume=False",
    ):
        attribute_dataset(hope_attr.HOPEAttribution(mlp(), order=2), dataset, **options)
    with pytest.raises(ValueError, match="model parameters and buffers: stored"):
        attribute_dataset(hope_attr.HOPEAttribution(mlp(seed=5), order=3), dataset, **options)
    with pytest.raises(ValueError, match="target: stored 'predicted', now 'label'"):
        attribute_dataset(
            hope_attr.HOPEAttribution(mlp(), order=3), dataset, target="label", **options
        )
    (tmp_path / "notes.txt").write_text("the user's")
    store = attribute_dataset(
        hope_attr.HOPEAttribution(mlp(), order=2), dataset, resume=False, **options
    )
    assert store.settings["method_options"]["order"] == 2 and store.complete
    assert (tmp_path / "notes.txt").exists()  # resume=False deletes only the run's own files


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ((torch.zeros(5), "cat"), r"dataset\[0\] is a tuple of 2: tensor \(5,\) .*, str"),
        ((torch.zeros(5), torch.tensor(0.5)), r"tensor \(\) torch.float32"),
        ((torch.zeros(5), 1, 2), r"a tuple of 3: tensor \(5,\) torch.float32, int, int"),
        ([1.0, 2.0], r"a list of 2: float, float"),
        (("text",), r"a tuple of 1: str"),
    ],
)
def test_unsupported_items_are_refused_before_anything_is_written(
    tmp_path: Path, item, message
) -> None:
    with pytest.raises(
        TypeError,
        match=message + r"; attribute_dataset takes items that are an input tensor x, a 1-tuple "
        r"\(x,\) \(e.g. TensorDataset\(images\)\), a pair \(x, integer label\), or a dict",
    ):
        attribute_dataset(InputXGradient(mlp()), [item] * 3, out=tmp_path, baselines=None)
    assert not any(tmp_path.iterdir())  # nothing written, not even a lock


def test_bad_arguments_are_refused_with_the_fix(tmp_path: Path) -> None:
    dataset, model = data(), mlp()
    hope = hope_attr.HOPEAttribution(model)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(5)

    cases = [
        (lambda: attribute_dataset(hope, Stream(), out=tmp_path), TypeError, "map-style"),
        (lambda: attribute_dataset(model, dataset, out=tmp_path), TypeError, "Captum Attribution"),
        (
            lambda: attribute_dataset(Saliency(model), dataset, out=tmp_path),
            ValueError,
            "takes no baselines: pass baselines=None",
        ),
        (
            lambda: attribute_dataset(hope, dataset, out=tmp_path, return_orders=True),
            ValueError,
            "cannot store",
        ),
        (
            lambda: attribute_dataset(hope, dataset, out=tmp_path, target="max"),
            ValueError,
            "'predicted', 'label'",
        ),
        (
            lambda: attribute_dataset(hope, dataset, out=tmp_path, engine="spark"),
            ValueError,
            "engine must be",
        ),
        (
            lambda: attribute_dataset(hope, dataset, out=tmp_path, num_workers=2),
            ValueError,
            "for engine='ray'",
        ),
        (
            lambda: attribute_dataset(hope, dataset, out=tmp_path, batch_size=0),
            ValueError,
            "batch_size",
        ),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_the_model_is_left_unchanged(tmp_path: Path) -> None:
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attribute_dataset(
        hope_attr.HOPEAttribution(model, order=3), data(), out=tmp_path, show_progress=False
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def planted_maps(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """90 noisy 12x12 maps in three groups of 50, 25 and 15 with a hot spot each."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(90, 1, 12, 12))
    groups = np.repeat([0, 1, 2], [50, 25, 15])
    spots = [(slice(0, 4), slice(0, 4)), (slice(8, 12), slice(8, 12)), (slice(0, 4), slice(8, 12))]
    for group, (rows, cols) in enumerate(spots):
        maps[groups == group, 0, rows, cols] += 4.0
    order = rng.permutation(90)
    return maps[order], groups[order]


def test_spray_finds_planted_groups_and_their_number_by_the_eigengap() -> None:
    maps, groups = planted_maps()
    result = spray(maps, random_state=0)
    assert result.n_clusters == 3
    # Clusters are numbered by decreasing size, as the groups are.
    np.testing.assert_array_equal(result.clusters, groups)
    assert result.embedding.shape == (90, 2) and result.features.shape == (90, 3, 3)
    np.testing.assert_array_equal(np.sort(result.members(2)), np.flatnonzero(groups == 2))
    assert result.cluster_means().shape == (3, 3, 3)
    two = spray(maps, n_clusters=2, embed=False)
    assert two.n_clusters == 2 and two.embedding is None


def test_spray_spectrum_matches_a_dense_eigensolver_on_an_independently_built_graph() -> None:
    maps, _ = planted_maps(seed=1)
    result = spray(maps, downsize=3, n_neighbors=6, max_clusters=5, embed=False)
    features = maps.sum(1).reshape(90, 4, 3, 4, 3).mean((2, 4)).reshape(90, -1)
    features /= np.abs(features).max(1, keepdims=True)
    distances = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argsort(distances, 1)[:, :6]
    adjacency = np.zeros((90, 90))
    adjacency[np.repeat(np.arange(90), 6), nearest.reshape(-1)] = 1.0
    adjacency = np.maximum(adjacency, adjacency.T)
    scale = 1 / np.sqrt(adjacency.sum(1))
    laplacian = np.eye(90) - scale[:, None] * adjacency * scale[None]
    expected = np.linalg.eigvalsh(laplacian)[:6]
    np.testing.assert_allclose(result.eigenvalues, expected, atol=1e-8)


def test_spray_reads_a_store_by_data_set_index_and_plots(tmp_path: Path) -> None:
    maps, groups = planted_maps()
    inputs = torch.from_numpy(maps)
    store = attribute_dataset(  # the gradient of a sum is 1: InputXGradient's map is the input
        InputXGradient(lambda x: x.flatten(1).sum(1)),
        inputs,
        out=tmp_path,
        baselines=None,
        target=None,
        batch_size=32,
        show_progress=False,
    )
    np.testing.assert_array_equal(store.numpy(), maps)
    chosen = np.flatnonzero(groups != 1)
    result = spray(store, indices=chosen, random_state=0)
    np.testing.assert_array_equal(result.indices, chosen)
    assert result.n_clusters == 2 and set(result.members(1)) == set(np.flatnonzero(groups == 2))
    import matplotlib

    matplotlib.use("Agg")
    figure = result.plot()
    assert len(figure.axes) == 3
    with pytest.raises(ValueError, match="not in the store"):
        spray(store, indices=[0, 1000])
    with pytest.raises(ValueError, match="needs more than n_neighbors"):
        spray(maps[:8])
    with pytest.raises(TypeError, match="AttributionStore or an array"):
        spray([1, 2, 3])


@pytest.mark.slow
def test_the_throughput_benchmark_runs_its_quick_budget(tmp_path: Path) -> None:
    from benchmarks import audit as benchmark

    assert (
        benchmark.main(["--quick", "--engines", "local", "--markdown", str(tmp_path / "a.md")]) == 0
    )
    text = (tmp_path / "a.md").read_text()
    assert "| MLP 784-64-10 | 60 | local |" in text and "| CNN 8-16-64 | 20 | local |" in text


def test_an_attribution_object_used_in_between_still_resumes_its_run(tmp_path: Path) -> None:
    # HOPEAttribution keeps results of its last call (higher_orders_vanish): they are state, not
    # settings, and must not make a resumed run look like another run (the audit notebook did).
    model, dataset = mlp(), data()
    method = hope_attr.HOPEAttribution(model, order=3)
    options = dict(out=tmp_path, batch_size=5, show_progress=False)
    first = attribute_dataset(method, dataset, **options)
    method.attribute(dataset.tensors[0][:2], target=0)
    again = attribute_dataset(method, dataset, **options)
    np.testing.assert_array_equal(again.numpy(), first.numpy())
