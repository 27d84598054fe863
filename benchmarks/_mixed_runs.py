"""The runs of ``benchmarks/mixed.py``: what each of its parts computes and times.

``mixed.py`` holds the page (its tables, targets and command line) and turns its options into
:class:`Settings`; the functions here run one part each and return its rows, logging progress
through ``log``:

* :func:`run_practitioner`: all partials up to order 3 of a 5-64-64-64-1 tanh MLP at many points,
  hope_attr (default route and jets route) against the ``torch.func`` compositions of
  :mod:`benchmarks._baselines`, a float64 check against the two fastest, and a block-size sweep;
* :func:`run_routes`: the jets route against the MLP route, and which one hope_attr picks;
* :func:`run_table1`: the paper's Table 1, hope_attr against nested autograd (stopped past a
  time or memory budget; higher orders then skipped);
* :func:`run_inference`: the paper's Table 3, the order-3 polynomial module against the network.

Timing: :func:`benchmarks._harness.repeat` (a warm-up, then the median of up to
``Settings.repeats`` calls, fewer once they took :data:`REPEAT_CAP_S`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

import hope_attr
from benchmarks import _baselines, _harness
from benchmarks._harness import Budget, Timing
from benchmarks._models import SEED, seeded_mlp, uniform_points
from hope_attr.derivatives import interpolation as _interpolation
from hope_attr.derivatives import mlp as _mlp_taylor
from hope_attr.engine.expansion import Expansion

REPEAT_CAP_S = 20.0  # no further repeats once one configuration's timed calls took this long
CHECK_TOLERANCE = 1e-9  # float64 agreement required of hope and the baselines
BLOCK_DEFAULT = hope_attr.Resources().mixed_block_bytes  # the jets' points per block (bytes)
MLP_BLOCK_DEFAULT = hope_attr.Resources().mlp_block_bytes  # the MLP route's
PRACTITIONER_WIDTHS = [64, 64, 64]
PRACTITIONER_P = 5
PRACTITIONER_ORDER = 3


@dataclass(frozen=True)
class Settings:
    """What one run does: sizes, repeats and budgets (``mixed.py`` sets them from its options)."""

    quick: bool
    dtype: torch.dtype
    threads: int
    repeats: int
    budget: float
    memory_limit_gib: float
    points: int  # practitioner's case
    check_points: int
    table1_width: int
    table1_inputs: tuple[int, ...]
    table1_orders: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    block_budgets_mib: tuple[float, ...]
    route_points: int
    route_cases: tuple[tuple[int, int, int], ...]  # (p, outputs, order)


def timed(call: Callable[[], object], repeats: int, warm_up: bool = True) -> tuple[Timing, object]:
    """Median timing of ``call`` (after a warm-up); stops at a budget. Returns the last result."""
    return _harness.repeat(call, repeats, warm_up=warm_up, cap_s=REPEAT_CAP_S)


# =============================================================================== 1. practitioner
@dataclass
class PractitionerResult:
    hope: Timing
    route: str  # which route hope's default took
    jets: Timing  # hope with the univariate jets forced, for comparison
    baselines: list[tuple[str, Timing, float | None]]  # name, timing, rel. diff vs hope
    checks: list[tuple[str, float]]  # float64 agreement
    sweep: list[tuple[str, Timing]]

    def fastest(self, metric: str) -> tuple[str, Timing] | None:
        """The composition with the smallest median ``"wall"`` or ``"cpu"`` time."""
        done = [(name, t) for name, t, _ in self.baselines if t.completed]
        median = lambda item: item[1].median_wall if metric == "wall" else item[1].median_cpu
        return min(done, key=median) if done else None


def hope_before_blocking(model: nn.Module, x: Tensor, order: int) -> list[Tensor]:
    """The method before blocks of points: all points at once, the engine's default chunks of
    directions (each chunk recomputes the primal and its Taylor tables)."""
    expansion = Expansion(model, x, order)
    p = x.shape[1]
    directions = _interpolation.directions(p, order, x.dtype)
    along = expansion.directional_coefficients((directions[:, None, :].expand(-1, len(x), -1),))
    return [
        _interpolation.recover(along[k - 1].movedim(0, -1), p, order, k)
        for k in range(1, order + 1)
    ]


def with_resources(call: Callable[[], object], **changes: object) -> Callable[[], object]:
    """``call`` under the resource policy changed by ``changes`` (``hope_attr.resources``)."""

    def run() -> object:
        with hope_attr.resources(**changes):
            return call()

    return run


def route_of(model: nn.Module, x: Tensor, order: int) -> str:
    """Which route ``mixed_derivatives`` takes by default (``"mlp"`` or ``"jets"``)."""
    expansion = Expansion(model, x[:1], order)
    chain = _mlp_taylor.chain_of(expansion)
    return "mlp" if chain is not None and _mlp_taylor.is_cheaper(expansion) else "jets"


def run_practitioner(settings: Settings, log: Callable[[str], None]) -> PractitionerResult:
    model = seeded_mlp(PRACTITIONER_P, PRACTITIONER_WIDTHS, 1, settings.dtype)
    x = torch.randn(
        settings.points,
        PRACTITIONER_P,
        generator=torch.Generator().manual_seed(SEED),
        dtype=settings.dtype,
    )
    order = PRACTITIONER_ORDER
    hope_call = lambda: hope_attr.mixed_derivatives(model, x, order)
    jets_call = lambda: hope_attr.mixed_derivatives(model, x, order, route="jets")
    hope, hope_result = timed(hope_call, settings.repeats)
    route = route_of(model, x, order)
    log(f"  hope ({route} route): {hope.median_wall:.3f} s wall, {hope.median_cpu:.3f} s CPU")
    jets, _ = timed(jets_call, settings.repeats)
    log(f"  hope, jets route: {jets.median_wall:.3f} s wall")

    baselines = []
    for name, transforms, chunk in _baselines.torch_func_candidates(settings.quick):
        run = _baselines.torch_func_partials(model, transforms, chunk)

        def call(run: Callable = run) -> list[Tensor]:
            return run(x, Budget(settings.budget, settings.memory_limit_gib))

        timing, result = timed(call, settings.repeats)
        diff = _baselines.relative_error(result, hope_result) if timing.completed else None
        baselines.append((name, timing, diff))
        log(f"  {name}: " + (f"{timing.median_wall:.3f} s" if timing.completed else timing.reason))

    # float64 check on a subset: hope against the two fastest compositions (CPU time).
    model64 = copy.deepcopy(model).double()
    x64 = x[: settings.check_points].double()
    references = {
        f"hope ({route} route)": hope_attr.mixed_derivatives(model64, x64, order),
        "hope (jets route)": hope_attr.mixed_derivatives(model64, x64, order, route="jets"),
    }
    done = sorted(
        (timing.median_cpu, index)
        for index, (_, timing, _) in enumerate(baselines)
        if timing.completed
    )
    checks = []
    for _, index in done[:2]:
        name, transforms, chunk = _baselines.torch_func_candidates(settings.quick)[index]
        expected = _baselines.torch_func_partials(model64, transforms, chunk)(x64)
        for label, reference in references.items():
            checks.append((f"{label} vs {name}", _baselines.relative_error(reference, expected)))
            log(f"  float64 check, {checks[-1][0]}: {checks[-1][1]:.1e}")

    sweep = []
    for mib in settings.block_budgets_mib:
        budget = int(mib * 2**20)
        timing, _ = timed(with_resources(hope_call, mlp_block_bytes=budget), settings.repeats)
        default = " (the default)" if budget == MLP_BLOCK_DEFAULT else ""
        sweep.append((f"MLP route: {mib:g} MiB{default}", timing))
    for mib in settings.block_budgets_mib:
        budget = int(mib * 2**20)
        timing, _ = timed(with_resources(jets_call, mixed_block_bytes=budget), settings.repeats)
        default = " (the default)" if budget == BLOCK_DEFAULT else ""
        sweep.append((f"jets route: {mib:g} MiB{default}", timing))
    timing, _ = timed(lambda: hope_before_blocking(model, x, order), settings.repeats)
    sweep.append(("jets, all points at once, engine's direction chunks (before blocks)", timing))
    log("  block sweep done")
    return PractitionerResult(hope, route, jets, baselines, checks, sweep)


# =============================================================================== routes
@dataclass
class RouteRow:
    p: int
    outputs: int
    order: int
    jets: Timing
    mlp: Timing
    picked: str
    diff: float


def run_routes(settings: Settings, log: Callable[[str], None]) -> list[RouteRow]:
    """Both routes of mixed partials on 3-layer width-64 tanh MLPs: which is faster, and which
    one ``mixed_derivatives`` picks by default."""
    rows = []
    for p, outputs, order in settings.route_cases:
        model = seeded_mlp(p, PRACTITIONER_WIDTHS, outputs, settings.dtype)
        x = uniform_points(settings.route_points, p, settings.dtype)
        results, timings = {}, {}
        for route in ("jets", "mlp"):
            call = partial(hope_attr.mixed_derivatives, model, x, order, route=route)
            timings[route], results[route] = timed(call, settings.repeats)
        diff = _baselines.relative_error(results["mlp"], results["jets"])
        rows.append(
            RouteRow(
                p, outputs, order, timings["jets"], timings["mlp"], route_of(model, x, order), diff
            )
        )
        log(
            f"  p={p} O={outputs} n={order}: jets {timings['jets'].median_wall:.3f} s, mlp "
            f"{timings['mlp'].median_wall:.3f} s, default: {rows[-1].picked}"
        )
    return rows


# =============================================================================== 2. Table 1
def table1_model(p: int, width: int, dtype: torch.dtype) -> nn.Module:
    return seeded_mlp(p, [width] * 9, 1, dtype)  # 10 linear layers, 9 tanh


@dataclass
class Table1Row:
    p: int
    order: int
    hope: Timing
    autograd: Timing | None  # None: skipped (a lower order was stopped)
    skip_bound: float = 0.0  # seconds the stopped lower order ran
    stopped_order: int = 0  # the lower order that was stopped
    diff: float | None = None


def run_table1(settings: Settings, log: Callable[[str], None]) -> list[Table1Row]:
    rows = []
    for p in settings.table1_inputs:
        model = table1_model(p, settings.table1_width, settings.dtype)
        x0 = uniform_points(1, p, settings.dtype)[0]
        stopped: tuple[int, float] | None = None  # (order, seconds) of the stopped call
        for order in settings.table1_orders:
            hope, hope_result = timed(
                partial(hope_attr.mixed_derivatives, model, x0[None], order), settings.repeats
            )
            row = Table1Row(p, order, hope, None)
            if stopped is None:

                def call(model: nn.Module = model, x0: Tensor = x0, order: int = order) -> list:
                    budget = Budget(settings.budget, settings.memory_limit_gib)
                    return _baselines.nested_autograd_partials(model, x0, order, budget)

                # No warm-up for calls that may take a minute: the first order warmed up the code.
                warm = order == settings.table1_orders[0]
                autograd, result = timed(call, settings.repeats, warm_up=warm)
                row.autograd = autograd
                if autograd.completed:
                    row.diff = _baselines.relative_error(result, hope_result)
                else:
                    stopped = (order, autograd.stopped_after)
            else:
                row.stopped_order, row.skip_bound = stopped
            rows.append(row)
            log(f"  p={p} n={order}: hope {hope.median_wall:.3f} s, autograd " + autograd_text(row))
    return rows


def verify_table1_baseline() -> str:
    """The nested-autograd baseline agrees with hope in float64 on a small net (orders 1..4)."""
    model = table1_model(3, 16, torch.float64)
    x0 = uniform_points(1, 3, torch.float64)[0]
    error = _baselines.relative_error(
        _baselines.nested_autograd_partials(model, x0, 4, None),
        hope_attr.mixed_derivatives(model, x0[None], 4),
    )
    if not error <= CHECK_TOLERANCE:
        raise AssertionError(f"nested autograd disagrees with hope in float64: {error:.1e}")
    return f"nested autograd vs hope, float64, 10-layer width-16 MLP, p = 3, n = 4: {error:.1e}"


# =============================================================================== 3. Table 3
@dataclass
class InferenceRow:
    model: str
    batch: int
    network: float  # seconds per call
    polynomial: float
    max_gap: float  # max |P(x) - f(x)| on the timed inputs


def run_inference(settings: Settings, log: Callable[[str], None]) -> list[InferenceRow]:
    models = {
        "controller 1-64-64-64-1": seeded_mlp(1, [64, 64, 64], 1, settings.dtype),
        "practitioner 5-64-64-64-1": seeded_mlp(
            PRACTITIONER_P, PRACTITIONER_WIDTHS, 1, settings.dtype
        ),
    }
    target = 0.05 if settings.quick else 0.5
    rows = []
    for name, model in models.items():
        p = model[0].in_features
        surrogate = hope_attr.expand(model, torch.zeros(p, dtype=settings.dtype), 3).to_module()
        for batch in settings.batch_sizes:
            x = uniform_points(batch, p, settings.dtype, seed=batch)
            with torch.no_grad():
                gap = (surrogate(x) - model(x)).abs().max().item()
                network = _harness.per_call_seconds(partial(model, x), target)
                polynomial = _harness.per_call_seconds(partial(surrogate, x), target)
            rows.append(InferenceRow(name, batch, network, polynomial, gap))
        log(f"  {name}: done")
    return rows


def autograd_text(row: Table1Row) -> str:
    if row.autograd is None:
        return f"skipped (order {row.stopped_order} already took > {row.skip_bound:.0f} s)"
    if row.autograd.completed:
        return f"{row.autograd.median_wall:.3f} s"
    return f"> {row.autograd.stopped_after:.0f} s ({row.autograd.reason})"
