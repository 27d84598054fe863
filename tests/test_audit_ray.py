"""hope_attr.audit with engine="ray", on a local 2-CPU Ray instance (skipped without Ray).

One Ray instance and one Ray run (starting Ray and its actors takes most of the ~40 s): the run
resumes a store from which two batches were dropped, as an interrupted run leaves it, and must
give the local engine's maps bit for bit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.audit import AttributionStore, attribute_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        # Workers import hope_attr from this checkout, as the driver does.
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_resumes_an_interrupted_store_with_the_local_engines_maps(
    local_ray: None, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    generator = torch.Generator().manual_seed(1)
    dataset = torch.utils.data.TensorDataset(
        torch.rand(30, 6, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (30,), generator=generator),
    )
    method = hope_attr.HOPEAttribution(model, order=3)
    options = dict(batch_size=4, show_progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        local = attribute_dataset(method, dataset, out=tmp_path / "local", **options)
        attribute_dataset(method, dataset, out=tmp_path / "ray", **options)
    finally:
        torch.set_num_threads(threads)
    manifest_path = tmp_path / "ray" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # As if the run had stopped before writing batches 1 and 7 (the short last one).
    for batch in ("1", "7"):
        os.remove(tmp_path / "ray" / manifest["shards"].pop(batch)["file"])
    manifest_path.write_text(json.dumps(manifest))
    assert len(AttributionStore(tmp_path / "ray")) == 30 - 4 - 2

    store = attribute_dataset(
        method, dataset, out=tmp_path / "ray", engine="ray", num_workers=2, **options
    )
    assert store.complete
    for field in ("indices", "maps", "labels", "predictions", "targets"):
        np.testing.assert_array_equal(store.numpy(field), local.numpy(field))
