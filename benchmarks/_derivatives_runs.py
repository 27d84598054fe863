"""The runs of ``benchmarks/derivatives.py``: its methods, and how one configuration is measured.

``derivatives.py`` holds the page (its tables, ratios, targets and command line) and turns its
options into :class:`Settings`; here:

* the methods, each ``(model, x, order, pixels, budget) -> derivatives (n, C, pixels)``:
  hope_attr, the forward floor and Captum's FeatureAblation (reference points), and the
  baselines of :mod:`benchmarks._baselines`, which :func:`verify_baselines` checks against
  hope_attr on tiny float64 models;
* :func:`measure_model`: every method at increasing orders, a warm-up then the median of up to
  ``Settings.repeats`` calls, a baseline stopped past ``Settings.budget`` and its higher orders
  skipped, each result compared with hope_attr's;
* :func:`measure_memory`: one configuration's peak RSS in a fresh process (``derivatives.py
  --child``, :func:`child_main`);
* :class:`Measurement` and how it reads (:func:`describe`, :func:`time_text`, :func:`note_text`).
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

import hope_attr
from benchmarks import _baselines, _harness
from benchmarks._harness import Budget, BudgetExceeded
from benchmarks._models import (
    NUM_CLASSES,
    NUM_PIXELS,
    build_model,
    load_digit,
    model_input,
    tiny_classifiers,
)

SCRIPT = Path(__file__).resolve().with_name("derivatives.py")  # runs the memory children
THREADS = 2
WARMUP_PIXELS = 8  # warm-up of a per-feature loop: every code path, a sliver of the work


# =============================================================================== the methods
# Each method is a call ``(model, x, order, pixels, budget) -> derivatives (n, C, pixels)``
# (``None`` for the reference points FeatureAblation and forward floor). ``pixels`` limits the
# work to the first pixels (warm-up of the baselines); the baselines check ``budget`` (a
# ``_harness.Budget``) as they go. The models and the baselines: benchmarks/_models.py,
# benchmarks/_baselines.py.
MethodCall = Callable[[nn.Module, Tensor, int, int, Budget], "Tensor | None"]


def run_hope(model: nn.Module, x: Tensor, order: int, pixels: int, budget: Budget) -> Tensor:
    derivatives = hope_attr.unmixed_derivatives(model, x, order)
    return derivatives.reshape(order, NUM_CLASSES, -1)[..., :pixels]


def run_feature_ablation(
    model: nn.Module, x: Tensor, order: int, pixels: int, budget: Budget
) -> None:
    _baselines.feature_ablation(model, perturbations_per_eval=NUM_PIXELS)(x)


def run_forward_floor(model: nn.Module, x: Tensor, order: int, pixels: int, budget: Budget) -> None:
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
        Method("jvp", "nested jvp, vmapped", _baselines.nested_jvp, baseline=True),
        Method(
            "autograd", "nested autograd, per feature", _baselines.nested_autograd_per_feature, True
        ),
        Method(
            "copies", "nested autograd, batched copies", _baselines.nested_autograd_copies, True
        ),
    )
}


# =============================================================================== verification
def verify_baselines(order: int = 3, tolerance: float = 1e-9) -> list[str]:
    """Check every baseline against hope_attr on tiny float64 models; raise if one disagrees."""
    lines = []
    for model, x in tiny_classifiers():
        pixels = x[0].numel()
        reference = hope_attr.unmixed_derivatives(model, x, order).reshape(order, NUM_CLASSES, -1)
        for method in METHODS.values():
            if not method.baseline:
                continue
            result = method.call(model, x, order, pixels, Budget())
            error = _baselines.relative_difference(result, reference)
            if not error <= tolerance:
                raise AssertionError(f"{method.label} disagrees with hope_attr: {error:.2e}")
            lines.append(f"{method.label} on a {pixels}-feature tiny model: rel. diff {error:.1e}")
    return lines


# =============================================================================== measurement
@dataclass
class Measurement:
    """One method at one order on one model: its times, or why it has none, and its memory."""

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
    """What one run does: orders, repeats and budgets (``derivatives.py`` sets them from its
    options)."""

    quick: bool
    dtype: torch.dtype
    repeats: int
    budget: float
    repeat_cap: float  # stop adding repeats once the timed calls of one configuration take this
    hope_orders: tuple[int, ...]
    baseline_orders: dict[str, tuple[int, ...]]
    memory_orders: dict[str, tuple[int, ...]] | None  # None: every completed configuration


def measure(
    model: nn.Module, x: Tensor, method: Method, order: int, settings: Settings
) -> tuple[Measurement, Tensor | None]:
    """Warm up, then time up to ``repeats`` calls; the last result is returned for comparison.

    The garbage collector is off during the calls (``pause_gc``): collecting right before each
    call would walk the ~300,000 objects torch keeps, evicting the CPU caches (about 1.2 ms per
    call here, a third of a short one). It collects once per configuration instead.
    """

    def call(pixels: int, seconds: float) -> Callable[[], Tensor | None]:
        return lambda: method.call(model, x, order, pixels, Budget(seconds))

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
                record.rel_diff = _baselines.relative_difference(result, hope_results[record.order])
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
    for tiny, tiny_x in tiny_classifiers():
        method.call(tiny.to(dtype), tiny_x.to(dtype), 2, tiny_x[0].numel(), Budget())
    gc.collect()
    base = _harness.rss_mib()
    reset = _harness.reset_peak_rss()
    budget = Budget(spec["budget"])
    try:
        method.call(model, x, spec["order"], NUM_PIXELS, budget)
        stopped = False
    except BudgetExceeded:
        stopped = True
    _harness.reply(
        {"peak_mib": _harness.peak_rss_mib(reset) - base, "stopped": stopped, "reset": reset}
    )


def measure_memory(record: Measurement, settings: Settings) -> None:
    spec = {
        "model": record.model,
        "method": record.method,
        "order": record.order or 1,
        "dtype": str(settings.dtype).removeprefix("torch."),
        "budget": settings.budget,
    }
    try:
        report = _harness.run_child(SCRIPT, spec)
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
