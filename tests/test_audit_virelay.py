"""hope_attr.audit.to_virelay: the exported project opens in ViRelAy and shows the store.

ViRelAy itself is the reference: ``virelay.model.Project`` opens the project, its attribution
for example ``i`` must equal ``store[i]`` bit for bit, its analyses must hold the SpRAy results
(clusters, indices, eigenvalues), and its server must answer every request its web page makes.
Skipped without ViRelAy (``pip install 'hope_attr[virelay]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient
from torch import nn

from hope_attr.audit import attribute_dataset, spray, to_virelay

virelay_model = pytest.importorskip("virelay.model")
pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]


def planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """90 noisy 1x12x12 images in three groups with a bright corner each; labels = group % 2."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.5, size=(90, 1, 12, 12))
    groups = np.repeat([0, 1, 2], [50, 25, 15])
    spots = [(slice(0, 4), slice(0, 4)), (slice(8, 12), slice(8, 12)), (slice(0, 4), slice(8, 12))]
    for group, (rows, cols) in enumerate(spots):
        images[groups == group, 0, rows, cols] += 0.5
    return torch.from_numpy(images), torch.from_numpy(groups % 2)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory):
    images, labels = planted()
    dataset = torch.utils.data.TensorDataset(images, labels)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 2)).double().eval()
    out = tmp_path_factory.mktemp("audit") / "store"
    store = attribute_dataset(
        InputXGradient(model), dataset, out=out, baselines=None, batch_size=32, show_progress=False
    )
    predicted = store.numpy("predictions")
    per_class = {c: spray(store, indices=np.flatnonzero(predicted == c)) for c in (0, 1)}
    return store, dataset, per_class


def test_virelay_opens_the_project_and_shows_the_stores_maps_and_spray(
    audited, tmp_path: Path
) -> None:
    store, dataset, per_class = audited
    names = ["even", "odd"]
    path = to_virelay(
        store, tmp_path / "project", dataset=dataset, label_names=names, spray=per_class
    )
    project = virelay_model.Project(str(path))
    try:
        for index in store.indices:
            attribution = project.get_attribution(int(index))
            # ViRelAy moves the channel axis last when it reads a map.
            np.testing.assert_array_equal(attribution.data, np.moveaxis(store[index].map, 0, -1))
            assert attribution.data.dtype == store[index].map.dtype
            assert [label.index for label in attribution.labels] == [store[index].label]
            assert int(np.argmax(attribution.prediction)) == store[index].prediction
            sample = project.get_sample(int(index))
            assert sample.labels[0].name == ["even", "odd"][store[index].label]
            expected = (dataset.tensors[0][index, 0].numpy() * 255).astype(np.uint8)
            np.testing.assert_array_equal(sample.data[..., 0], expected)
        assert project.get_analysis_methods() == ["SpRAy"]
        categories = project.get_analysis_categories("SpRAy")
        assert [(c.name, c.human_readable_name) for c in categories] == [
            ("00000000", "even"),
            ("00000001", "odd"),
        ]
        for category, result in zip(("00000000", "00000001"), per_class.values(), strict=True):
            clustering = f"spray-{result.n_clusters:02d}"
            for embedding in ("spectral", "tsne"):
                analysis = project.get_analysis("SpRAy", category, clustering, embedding)
                np.testing.assert_array_equal(analysis.clustering, result.clusters)
                np.testing.assert_array_equal(analysis.attribution_indices, result.indices)
            spectral = project.get_analysis("SpRAy", category, clustering, "spectral")
            np.testing.assert_array_equal(spectral.embedding, result.spectral.astype(np.float32))
            np.testing.assert_array_equal(spectral.eigenvalues, result.eigenvalues.astype("f4"))
    finally:
        project.close()


def test_the_virelay_server_answers_what_its_page_asks(audited, tmp_path: Path) -> None:
    pytest.importorskip("flask")
    from virelay.server import Server

    store, dataset, _ = audited
    result = spray(store, random_state=0)
    path = to_virelay(store, tmp_path, dataset=dataset, spray=result)
    workspace = virelay_model.Workspace()
    workspace.add_project(str(path))
    try:
        client = Server(workspace).app.test_client()
        clustering = f"spray-{result.n_clusters:02d}"
        for url in [
            "/api/projects",
            "/api/projects/0",
            "/api/projects/0/dataset/5",
            "/api/projects/0/dataset/5/image",
            "/api/projects/0/attributions?indices=1,2,3&imageMode=overlay",
            "/api/projects/0/attributions/5",
            "/api/projects/0/attributions/5/heatmap?colorMap=black-fire-red&superimpose=false",
            "/api/projects/0/attributions/5/heatmap?colorMap=blue-white-red&superimpose=true",
            f"/api/projects/0/analyses/SpRAy?category=all&clustering={clustering}&embedding=tsne",
        ]:
            response = client.get(url)
            assert response.status_code == 200, (url, response.data[:300])
        analysis = client.get(
            f"/api/projects/0/analyses/SpRAy?category=all&clustering={clustering}"
            "&embedding=spectral"
        ).get_json()
        clusters = [point["cluster"] for point in analysis["embedding"]]
        assert clusters == result.clusters.tolist()
    finally:
        workspace.close()


def test_unlabeled_data_and_the_default_spray_export(tmp_path: Path) -> None:
    images, _ = planted(seed=1)
    dataset = torch.utils.data.TensorDataset(images)  # 1-tuples: no labels
    store = attribute_dataset(
        InputXGradient(lambda x: x.flatten(1).sum(1)),
        dataset,
        out=tmp_path / "store",
        baselines=None,
        target=None,
        batch_size=45,
        show_progress=False,
    )
    path = to_virelay(store, tmp_path / "project", dataset=dataset)  # spray(store) inside
    project = virelay_model.Project(str(path))
    try:
        assert [label.name for label in project.get_attribution(3).labels] == ["(no label)"]
        analysis = project.get_analysis("SpRAy", "all", "spray-03", "tsne")
        reference = spray(store)
        np.testing.assert_array_equal(analysis.clustering, reference.clusters)
    finally:
        project.close()
    # Exporting again into the same folder replaces the earlier export.
    assert to_virelay(store, tmp_path / "project", dataset=dataset, spray=reference) == path


def test_what_virelay_cannot_show_or_would_show_wrongly_is_refused(audited, tmp_path: Path) -> None:
    store, dataset, per_class = audited
    other = torch.utils.data.TensorDataset(*planted(seed=5))
    with pytest.raises(
        ValueError,
        match=r"dataset is not the data set the store at .* was computed on \(stored: 90 "
        r"examples, items hash \w+; given: 90 examples, items hash \w+\): pass the audited",
    ):
        to_virelay(store, tmp_path / "a", dataset=other, spray=per_class)
    with pytest.raises(ValueError, match=r"label_names has 1 names, but the store holds class 1"):
        to_virelay(store, tmp_path / "b", dataset=dataset, label_names=["even"], spray=per_class)
    positions = spray(store.numpy()[:40], embed=False)
    with pytest.raises(ValueError, match=r"has no embedding for the viewer to plot: run spray"):
        to_virelay(store, tmp_path / "c", dataset=dataset, spray=positions)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.csv").write_text("the user's")
    with pytest.raises(
        FileExistsError,
        match=r"holds files that are not an earlier to_virelay export \(results.csv\): choose a "
        r"new or empty folder",
    ):
        to_virelay(store, tmp_path / "d", dataset=dataset, spray=per_class)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["results.csv"]


def test_maps_that_are_not_images_are_refused(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    dataset = torch.utils.data.TensorDataset(torch.rand(30, 5, generator=generator))
    store = attribute_dataset(
        InputXGradient(lambda x: x.sum(1)),
        dataset,
        out=tmp_path / "store",
        baselines=None,
        target=None,
        show_progress=False,
    )
    with pytest.raises(
        ValueError, match=r"holds maps of shape \(5,\); ViRelAy shows images only: maps shaped"
    ):
        to_virelay(store, tmp_path / "project", dataset=dataset)
