"""Time one public call in two source trees, interleaved: a check of a single row of a benchmark.

:mod:`benchmarks.compare` runs whole benchmark scripts; when one row of such a comparison moves
(on a shared machine a single round can move a row by tens of percent), this script times just
that call, alternating the trees in fresh processes, and prints the medians of wall and process
CPU time per tree. Example, the restructuring of issue 32 (old tree at 2f7d12d)::

    python benchmarks/compare_calls.py --old /work/base --new . mixed_jets --threads 1

Each trial starts one process per tree (``PYTHONPATH`` = the tree, so its ``hope_attr`` is the one
imported; the child prints the file it imported), makes one warm-up call and ``--calls`` timed
ones. ``HOPE_ATTR_ADAPT_THREADS=0`` switches off the automatic thread lowering that trees before
issue 32 had (it reads the load average, so background processes would change their thread
count and not the new tree's); the thread count is set explicitly with ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_MLP = """
import torch
from torch import nn
import hope_attr
torch.manual_seed(0)
widths, layers = [5, 64, 64, 64], []
for a, b in zip(widths[:-1], widths[1:]):
    layers += [nn.Linear(a, b), nn.Tanh()]
model = nn.Sequential(*layers, nn.Linear(64, 1)).eval()
x = torch.randn(10000, 5, generator=torch.Generator().manual_seed(0))
"""

# Each case defines ``call``; the models are those of the benchmark rows they check.
CASES = {
    # benchmarks/mixed.py, practitioner's case, the univariate-jets route
    "mixed_jets": _MLP + 'call = lambda: hope_attr.mixed_derivatives(model, x, 3, route="jets")',
    # benchmarks/mixed.py, practitioner's case, the default route
    "mixed_default": _MLP + "call = lambda: hope_attr.mixed_derivatives(model, x, 3)",
    # benchmarks/default_env.py's MLP: order 10, all classes, one input
    "mlp_order10": """
import torch
from torch import nn
import hope_attr
torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(784, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 10)
).eval()
x = torch.rand(1, 784, generator=torch.Generator().manual_seed(0))
explainer = hope_attr.HOPEAttribution(model, order=10)
call = lambda: explainer.attribute_all_targets(x)
""",
    # benchmarks/large_images.py: resnet18, 224 px, 16 x 16 superpixels, order 4, all classes
    "resnet18_all_classes": """
import torch, torchvision
import hope_attr
torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None).eval()
x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
cells = torch.arange(224) // 16
mask = (cells[:, None] * 14 + cells[None, :]).expand(1, 3, 224, 224)
explainer = hope_attr.HOPEAttribution(model, order=4)
call = lambda: explainer.attribute_all_targets(x, feature_mask=mask, baselines=0.0)
""",
}

_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
{setup}
call()
times = []
for _ in range(int(sys.argv[2])):
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    times.append((time.perf_counter() - wall, time.process_time() - cpu))
print(json.dumps({{"file": hope_attr.__file__, "times": times}}))
"""


def run_tree(tree: str, case: str, threads: int, calls: int) -> dict:
    environment = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    environment["HOPE_ATTR_ADAPT_THREADS"] = "0"
    child = _CHILD.format(setup=CASES[case])
    done = subprocess.run(
        [sys.executable, "-c", child, str(threads), str(calls)],
        capture_output=True, text=True, cwd="/", env=environment, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{tree}: the child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--old", required=True, help="the tree before the change")
    parser.add_argument("--new", default=".", help="the tree after it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=4, help="processes per tree, alternating")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process")
    args = parser.parse_args()
    times: dict[str, list] = {"old": [], "new": []}
    files = {}
    for _ in range(args.trials):
        for side, tree in (("old", args.old), ("new", args.new)):
            result = run_tree(tree, args.case, args.threads, args.calls)
            times[side] += result["times"]
            files[side] = result["file"]
    print(f"{args.case}, {args.threads} torch thread(s), {args.trials} x {args.calls} calls each")
    for side, measured in times.items():
        wall = statistics.median(t[0] for t in measured)
        cpu = statistics.median(t[1] for t in measured)
        print(f"  {side}: median wall {wall * 1e3:.1f} ms, CPU {cpu * 1e3:.1f} ms ({files[side]})")


if __name__ == "__main__":
    main()
