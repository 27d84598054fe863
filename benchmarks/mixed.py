"""Benchmark: mixed partials by hope_attr, and Taylor polynomials as fast surrogates.

Three measurements, each reported as ratios measured in this one run:

1. **The practitioner's case** (``shared/seeds/002``: a network called tens of thousands of times
   inside a simulation, which needs every partial derivative up to order 3): a tanh MLP
   ``5-64-64-64-1`` (3 hidden layers of width 64), all partials of orders 1, 2 and 3 at 10,000
   points. :func:`hope_attr.mixed_derivatives` against ``torch.func`` compositions, each vmapped
   over the points: ``jacrev`` once, then ``jacfwd`` twice (the usual recipe), and the other
   orders of ``jacrev``/``jacfwd``, with the lower orders returned as ``has_aux`` so that one call
   yields all three tensors, over all points at once or in vmap chunks of 1000 points. The
   fastest composition is the baseline. The results are compared in the benchmark's dtype, and
   hope is checked against the two fastest compositions in float64 on a subset of the points
   (relative error <= 1e-9). hope takes its default route (for this MLP the multivariate
   "MLP route" of ``hope_attr.derivatives.mlp``) and, for comparison, the univariate jets
   (``hope_attr.derivatives.mixed``). A block-size sweep shows how both routes' points-per-block
   budgets were
   chosen, next to the jets' method before blocking (all points at once, the engine's default
   chunks of directions).
   **Routes**: both routes on 3-layer width-64 tanh MLPs with ``p = 2, 5, 8`` inputs, 1 or 4
   outputs and orders 2 to 5 (and 16 outputs for ``p = 5``) at 2000 points: which is faster,
   and which one ``mixed_derivatives`` picks by default (``hope_attr.derivatives.mlp.is_cheaper``).
2. **The paper's Table 1**: 10-layer tanh MLPs of width 1024 with ``p = 1, 2, 3`` inputs, all mixed
   partials of orders ``1..n`` for ``n = 1..10`` at one point, against the paper's baseline: nested
   ``torch.autograd.grad`` over every entry of the previous derivative tensor (``p^(k-1)`` backward
   passes for order ``k``, as the paper counts ``(p^(n+1) - p) / (p - 1)`` partials). A baseline
   call is stopped past ``--budget`` seconds (or past ``--memory-limit`` GiB of extra memory);
   higher orders are then skipped. Stopped calls give lower bounds; any extrapolation is labelled.
3. **Fast inference** (the paper's Table 3): ``hope_attr.expand(f, 0, 3).to_module()`` against the
   network ``f`` at batch sizes 1..4096, for a controller-sized MLP (``1-64-64-64-1``, one input
   like the paper's tank-level controller) and for the practitioner's MLP. Both in eval mode under
   ``torch.no_grad()``. The polynomial is a local surrogate: the table prints how far it is from
   the network on the timed inputs (uniform in ``[-1, 1]^p``), since untrained random weights
   make no claim about its accuracy.

Weights are PyTorch's default initialization under ``torch.manual_seed(0)``, in float32 unless
``--dtype float64``. Timing: ``torch.set_num_threads(--threads)`` (default 2) for every method, a
warm-up call, then the median of up to ``--repeats`` calls (fewer once a configuration took 20 s).
Wall time and process CPU time (all threads) are both printed, and ratios are given for both: on
a machine shared with other processes the CPU time is the steadier of the two.

Threads and the OpenMP wait policy: with ``OMP_WAIT_POLICY=PASSIVE`` idle OpenMP threads sleep,
and every parallel operation pays for waking them. hope_attr runs many medium-sized operations
(blocks of points), torch.func few large ones, so PASSIVE with 2 threads penalizes hope_attr most
(its 2 threads then gain nothing over 1). The committed results come from the default
environment (no ``MALLOC_*`` or ``OMP_*`` variable), 2 threads, on a quiet machine::

    python benchmarks/mixed.py --markdown benchmarks/results/mixed.md

On a machine shared with other processes (where spinning threads steal each other's cores), one
thread is the steadier choice: ``--threads 1``. The allocator tuning ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000`` is optional; the script prints the setting it ran with.

``--quick`` runs every code path on a tiny budget (smaller models and batches; under a minute) for
a smoke test; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vmap

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hope_attr  # noqa: E402
from benchmarks import _harness  # noqa: E402
from benchmarks._harness import BudgetExceeded, Timing  # noqa: E402
from hope_attr.derivatives import interpolation as _interpolation  # noqa: E402
from hope_attr.derivatives import mlp as _mlp_taylor  # noqa: E402
from hope_attr.engine.expansion import Expansion  # noqa: E402

SEED = 0
ENVIRONMENT_VARIABLES = ("OMP_WAIT_POLICY", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
TUNING = (
    "optional: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000; on a shared machine "
    "--threads 1"
)
REPEAT_CAP_S = 20.0  # no further repeats once one configuration's timed calls took this long
CHECK_TOLERANCE = 1e-9  # float64 agreement required of hope and the baselines
PRACTITIONER_TARGET = 3.0  # hope at least this many times faster than the fastest torch.func
TABLE1_TARGET_S = 1.0  # n = 10, p = 3 under this many seconds
BLOCK_DEFAULT = hope_attr.Resources().mixed_block_bytes  # the jets' points per block (bytes)
MLP_BLOCK_DEFAULT = hope_attr.Resources().mlp_block_bytes  # the MLP route's


@dataclass(frozen=True)
class Settings:
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


def settings_from(args: argparse.Namespace) -> Settings:
    common = dict(
        dtype=getattr(torch, args.dtype),
        threads=args.threads,
        memory_limit_gib=args.memory_limit,
    )
    if args.quick:
        return Settings(
            quick=True,
            repeats=args.repeats or 1,
            budget=min(args.budget, 5.0),
            points=500,
            check_points=20,
            table1_width=64,
            table1_inputs=(1, 3),
            table1_orders=(1, 3),
            batch_sizes=(1, 64),
            block_budgets_mib=(1.0,),
            route_points=50,
            route_cases=((5, 1, 3), (2, 1, 2)),
            **common,
        )
    return Settings(
        quick=False,
        repeats=args.repeats or 5,
        budget=args.budget,
        points=10_000,
        check_points=200,
        table1_width=1024,
        table1_inputs=(1, 2, 3),
        table1_orders=tuple(range(1, 11)),
        batch_sizes=(1, 4, 16, 64, 256, 1024, 4096),
        block_budgets_mib=(0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
        route_points=2000,
        route_cases=tuple(
            (p, outputs, order) for p in (2, 5, 8) for outputs in (1, 4) for order in (2, 3, 4, 5)
        )
        + tuple((5, 16, order) for order in (2, 3, 4)),
        **common,
    )


# =============================================================================== timing
def timed(call: Callable[[], object], repeats: int, warm_up: bool = True) -> tuple[Timing, object]:
    """Median timing of ``call`` (after a warm-up); stops at a budget. Returns the last result."""
    return _harness.repeat(call, repeats, warm_up=warm_up, cap_s=REPEAT_CAP_S)


def rss_gib() -> float:
    """Resident memory of this process (Linux), 0 where unknown."""
    return (_harness.proc_status_mib("VmRSS") or 0.0) / 1024


class Budget:
    """Time and memory allowed to one baseline call, counted from the budget's creation."""

    def __init__(self, seconds: float, memory_gib: float) -> None:
        self.seconds, self.memory_gib = seconds, memory_gib
        self.start, self.base_rss_gib = time.perf_counter(), rss_gib()

    def check(self, done: int, total: int) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.seconds:
            raise BudgetExceeded(done / total, f"stopped past {self.seconds:.0f} s", elapsed)
        if rss_gib() - self.base_rss_gib > self.memory_gib:
            reason = f"stopped past {self.memory_gib:g} GiB of extra memory"
            raise BudgetExceeded(done / total, reason, elapsed)


def relative_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    """Largest over orders of ``max |a - e| / max |e|`` (float64)."""
    errors = []
    for a, e in zip(actual, expected, strict=True):
        a, e = a.double(), e.double()
        errors.append(((a - e).abs().max() / e.abs().max().clamp_min(1e-300)).item())
    return max(errors)


def mlp(inputs: int, widths: list[int], outputs: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(inputs, width), nn.Tanh()]
        inputs = width
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers).to(dtype).eval()


def uniform_points(count: int, p: int, dtype: torch.dtype, seed: int = SEED) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(count, p, generator=generator, dtype=torch.float64) - 1).to(dtype)


# =============================================================================== 1. practitioner
PRACTITIONER_WIDTHS = [64, 64, 64]
PRACTITIONER_P = 5
PRACTITIONER_ORDER = 3


def torch_func_composition(
    model: nn.Module, transforms: tuple[str, ...] | None, chunk: int | None
) -> Callable[[Tensor], list[Tensor]]:
    """``x (B, p) -> [gradient, Hessian, third] (B, O, p, ...)`` by a ``torch.func`` composition.

    ``transforms`` names the innermost to outermost Jacobian (``"rev"``/``"fwd"``); each outer one
    returns the inner results as ``has_aux``, so one call yields all orders. ``None``: the usual
    three separate calls (``jacrev``, ``jacfwd(jacrev)``, ``jacfwd(jacfwd(jacrev))``). ``chunk``:
    points per vmap call.
    """
    single = lambda z: model(z.unsqueeze(0))[0]
    jac = {"rev": jacrev, "fwd": jacfwd}

    if transforms is None:
        first = jacrev(single)
        second = jacfwd(first)
        functions = [vmap(first), vmap(second), vmap(jacfwd(second))]

        def per_chunk(x: Tensor) -> list[Tensor]:
            return [f(x) for f in functions]

    else:
        inner, middle, outer = (jac[t] for t in transforms)

        def d1(z: Tensor) -> tuple[Tensor, tuple[Tensor]]:
            g = inner(single)(z)
            return g, (g,)

        def d2(z: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            h, (g,) = middle(d1, has_aux=True)(z)
            return h, (g, h)

        def d3(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            t, (g, h) = outer(d2, has_aux=True)(z)
            return g, h, t

        batched = vmap(d3)

        def per_chunk(x: Tensor) -> list[Tensor]:
            return list(batched(x))

    def run(x: Tensor, budget: Budget | None = None) -> list[Tensor]:
        size = chunk or x.shape[0]
        parts = []
        with torch.no_grad():
            for start in range(0, x.shape[0], size):
                if budget is not None:
                    budget.check(start, x.shape[0])
                parts.append(per_chunk(x[start : start + size]))
        return [torch.cat(tensors) for tensors in zip(*parts, strict=True)]

    return run


def candidates(quick: bool) -> list[tuple[str, tuple[str, ...] | None, int | None]]:
    orders = [("rev", "fwd", "fwd"), ("rev", "rev", "fwd")]
    if not quick:
        orders += [("rev", "fwd", "rev"), ("rev", "rev", "rev"), ("fwd", "fwd", "fwd")]
    result: list[tuple[str, tuple[str, ...] | None, int | None]] = [
        ("jacrev; jacfwd(jacrev); jacfwd(jacfwd(jacrev)), 3 calls", None, None)
    ]
    for transforms in orders:
        name = "jac" + "(jac".join(reversed(transforms)) + "(f" + ")" * len(transforms)
        for chunk in (None, 1000) if not quick else (None,):
            where = "all points" if chunk is None else f"chunks of {chunk}"
            result.append((f"{name} with aux, {where}", transforms, chunk))
    return result


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
    model = mlp(PRACTITIONER_P, PRACTITIONER_WIDTHS, 1, settings.dtype)
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
    for name, transforms, chunk in candidates(settings.quick):
        run = torch_func_composition(model, transforms, chunk)

        def call(run: Callable = run) -> list[Tensor]:
            return run(x, Budget(settings.budget, settings.memory_limit_gib))

        timing, result = timed(call, settings.repeats)
        diff = relative_error(result, hope_result) if timing.completed else None
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
        name, transforms, chunk = candidates(settings.quick)[index]
        expected = torch_func_composition(model64, transforms, chunk)(x64)
        for label, reference in references.items():
            checks.append((f"{label} vs {name}", relative_error(reference, expected)))
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
        model = mlp(p, PRACTITIONER_WIDTHS, outputs, settings.dtype)
        x = uniform_points(settings.route_points, p, settings.dtype)
        results, timings = {}, {}
        for route in ("jets", "mlp"):
            call = partial(hope_attr.mixed_derivatives, model, x, order, route=route)
            timings[route], results[route] = timed(call, settings.repeats)
        diff = relative_error(results["mlp"], results["jets"])
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
    return mlp(p, [width] * 9, 1, dtype)  # 10 linear layers, 9 tanh


def nested_autograd(
    model: nn.Module, x0: Tensor, order: int, budget: Budget | None
) -> list[Tensor]:
    """The paper's baseline: ``torch.autograd.grad`` of every entry of the previous tensor.

    Order ``k`` takes ``p^(k-1)`` backward passes through graphs that grow with ``k``.
    """
    p = x0.numel()
    total = sum(p**k for k in range(order))  # backward passes
    done = 0
    x = x0.detach().clone().requires_grad_()
    entries = [model(x[None])[0, 0]]
    tensors = []
    for k in range(1, order + 1):
        following = []
        for entry in entries:
            if budget is not None:
                budget.check(done, total)
            if entry.requires_grad:
                (gradient,) = torch.autograd.grad(
                    entry, x, create_graph=k < order, retain_graph=True
                )
            else:  # an earlier derivative was constant: all further ones vanish
                gradient = torch.zeros_like(x)
            following.extend(gradient.unbind())
            done += 1
        tensors.append(torch.stack(following).detach().reshape([1, 1] + [p] * k))
        entries = following
    return tensors


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
                    return nested_autograd(model, x0, order, budget)

                # No warm-up for calls that may take a minute: the first order warmed up the code.
                warm = order == settings.table1_orders[0]
                autograd, result = timed(call, settings.repeats, warm_up=warm)
                row.autograd = autograd
                if autograd.completed:
                    row.diff = relative_error(result, hope_result)
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
    error = relative_error(
        nested_autograd(model, x0, 4, None), hope_attr.mixed_derivatives(model, x0[None], 4)
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


def per_call_seconds(call: Callable[[], object], target_s: float) -> float:
    """Median over 5 rounds of the mean time per call, each round about ``target_s`` long."""
    call()
    loops, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= target_s / 5 or loops >= 1 << 20:
            break
        loops *= 4
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        rounds.append((time.perf_counter() - start) / loops)
    return statistics.median(rounds)


def run_inference(settings: Settings, log: Callable[[str], None]) -> list[InferenceRow]:
    models = {
        "controller 1-64-64-64-1": mlp(1, [64, 64, 64], 1, settings.dtype),
        "practitioner 5-64-64-64-1": mlp(PRACTITIONER_P, PRACTITIONER_WIDTHS, 1, settings.dtype),
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
                network = per_call_seconds(partial(model, x), target)
                polynomial = per_call_seconds(partial(surrogate, x), target)
            rows.append(InferenceRow(name, batch, network, polynomial, gap))
        log(f"  {name}: done")
    return rows


# =============================================================================== report
def seconds(value: float) -> str:
    return f"{value:.3f} s" if value >= 0.1 else f"{1e3 * value:.1f} ms"


def timing_cells(timing: Timing) -> list[str]:
    if not timing.completed:
        return [f"> {timing.stopped_after:.0f} s (stopped)", "-"]
    return [seconds(timing.median_wall), seconds(timing.median_cpu)]


def autograd_text(row: Table1Row) -> str:
    if row.autograd is None:
        return f"skipped (order {row.stopped_order} already took > {row.skip_bound:.0f} s)"
    if row.autograd.completed:
        return f"{row.autograd.median_wall:.3f} s"
    return f"> {row.autograd.stopped_after:.0f} s ({row.autograd.reason})"


def ratio(slow: float, fast: float, lower_bound: bool = False) -> str:
    return (">= " if lower_bound else "") + f"{slow / fast:.3g}x"


def practitioner_section(result: PractitionerResult, settings: Settings, md: bool) -> list[str]:
    out = []
    rows = [
        [
            f"hope_attr.mixed_derivatives (default: the {result.route} route)",
            *timing_cells(result.hope),
            "-",
            "-",
            "-",
        ],
        [
            "hope_attr.mixed_derivatives, jets route (route='jets')",
            *timing_cells(result.jets),
            ratio(result.jets.median_wall, result.hope.median_wall),
            ratio(result.jets.median_cpu, result.hope.median_cpu),
            "-",
        ],
    ]
    for name, timing, diff in result.baselines:
        cells = timing_cells(timing)
        if timing.completed:
            speedups = [
                ratio(timing.median_wall, result.hope.median_wall),
                ratio(timing.median_cpu, result.hope.median_cpu),
            ]
        else:
            speedups = [ratio(timing.stopped_after, result.hope.median_wall, True), "-"]
        rows.append([f"torch.func: {name}", *cells, *speedups, f"{diff:.1e}" if diff else "-"])
    header = ["method", "median wall", "median CPU", "hope speed-up (wall)", "(CPU)"]
    header.append("rel. diff vs hope")
    out += [_harness.table(header, rows, md), ""]
    prefix = "- " if md else "  "
    for name, error in result.checks:
        verdict = "PASS" if error <= CHECK_TOLERANCE else "FAIL"
        out.append(
            f"{prefix}float64 check on {settings.check_points} points, {name}: max "
            f"relative error per order {error:.1e} (needed <= {CHECK_TOLERANCE:g}): {verdict}"
        )
    out += [
        "",
        ("Block-size sweep" if not md else "**Block-size sweep**") + " (hope, same case):",
        "",
    ]
    rows = [[name, *timing_cells(timing)] for name, timing in result.sweep]
    out += [_harness.table(["route: block budget", "median wall", "median CPU"], rows, md), ""]
    return out


def routes_section(rows: list[RouteRow], md: bool) -> list[str]:
    cells = []
    for row in rows:
        faster = "mlp" if row.mlp.median_wall < row.jets.median_wall else "jets"
        cells.append(
            [
                str(row.p),
                str(row.outputs),
                str(row.order),
                seconds(row.jets.median_wall),
                seconds(row.mlp.median_wall),
                ratio(row.jets.median_wall, row.mlp.median_wall),
                faster,
                row.picked + ("" if row.picked == faster else " (not the faster)"),
                f"{row.diff:.1e}",
            ]
        )
    header = ["p", "outputs", "n", "jets", "MLP route", "jets / MLP", "faster", "default"]
    header.append("rel. diff")
    return [_harness.table(header, cells, md), ""]


def table1_section(rows: list[Table1Row], md: bool) -> list[str]:
    cells = []
    for row in rows:
        hope = row.hope
        if row.autograd is None:
            auto_cells = [f"skipped (n = {row.stopped_order} took > {row.skip_bound:.0f} s)", "-"]
            speedups = [ratio(row.skip_bound, hope.median_wall, True), "-"]
            note = ""
        elif row.autograd.completed:
            auto_cells = timing_cells(row.autograd)
            speedups = [
                ratio(row.autograd.median_wall, hope.median_wall),
                ratio(row.autograd.median_cpu, hope.median_cpu),
            ]
            note = ""
        else:
            auto_cells = timing_cells(row.autograd)
            speedups = [ratio(row.autograd.stopped_after, hope.median_wall, True), "-"]
            note = row.autograd.reason
            if row.autograd.progress > 0:
                estimate = row.autograd.stopped_after / row.autograd.progress
                note += (
                    f"; {row.autograd.progress:.1%} of the backward passes done; EXTRAPOLATED "
                    f"(not measured, passes of the last orders cost more, so likely an "
                    f"underestimate): ~{estimate:.0f} s"
                )
        diff = "-" if row.diff is None else f"{row.diff:.1e}"
        cells.append(
            [str(row.p), str(row.order), *timing_cells(hope), *auto_cells, *speedups, diff, note]
        )
    header = ["p", "n", "hope wall", "hope CPU", "autograd wall", "autograd CPU"]
    header += ["speed-up (wall)", "(CPU)", "rel. diff", "note"]
    return [_harness.table(header, cells, md), ""]


def inference_section(rows: list[InferenceRow], md: bool) -> list[str]:
    cells = [
        [
            row.model,
            str(row.batch),
            f"{1e6 * row.network:.1f} us",
            f"{1e6 * row.polynomial:.1f} us",
            f"{row.network / row.polynomial:.3g}x",
            f"{row.max_gap:.2e}",
        ]
        for row in rows
    ]
    header = ["model", "batch", "network", "polynomial module", "speed-up", "max |P - f|"]
    return [_harness.table(header, cells, md), ""]


def targets_section(
    practitioner: PractitionerResult, table1: list[Table1Row], md: bool
) -> list[str]:
    rows = []
    hope = practitioner.hope
    by_wall, by_cpu = practitioner.fastest("wall"), practitioner.fastest("cpu")
    if by_wall is not None and by_cpu is not None:
        wall = by_wall[1].median_wall / hope.median_wall
        cpu = by_cpu[1].median_cpu / hope.median_cpu
        verdict = "PASS" if min(wall, cpu) >= PRACTITIONER_TARGET else "FAIL"
        rows.append(
            [
                f"practitioner: hope >= {PRACTITIONER_TARGET:g}x faster than the fastest "
                f"torch.func composition (by wall: {by_wall[0]}; by CPU: {by_cpu[0]})",
                f"{wall:.2f}x wall, {cpu:.2f}x CPU",
                verdict + ("" if verdict == "PASS" else " (the lower ratio counts)"),
            ]
        )
    worst = max((c[1] for c in practitioner.checks), default=None)
    if worst is not None:
        verdict = "PASS" if worst <= CHECK_TOLERANCE else "FAIL"
        rows.append(["practitioner: exact (float64 check <= 1e-9)", f"{worst:.1e}", verdict])
    for row in table1:
        if row.p == 3 and row.order == 10:
            verdict = "PASS" if row.hope.median_wall < TABLE1_TARGET_S else "FAIL"
            rows.append(
                [
                    f"Table 1: n = 10, p = 3 under {TABLE1_TARGET_S:g} s",
                    f"{row.hope.median_wall:.3f} s wall, {row.hope.median_cpu:.3f} s CPU",
                    verdict,
                ]
            )
    return [_harness.table(["target", "measured", "verdict"], rows, md), ""]


def render(
    header: list[str],
    settings: Settings,
    practitioner: PractitionerResult,
    routes: list[RouteRow],
    table1: list[Table1Row],
    inference: list[InferenceRow],
    md: bool,
) -> str:
    heading = "## " if md else "=== "
    out = [("# " if md else "") + "hope_attr mixed-partials benchmark", ""]
    out += [("- " if md else "  ") + line for line in header] + [""]
    out += [
        f"{heading}1. Practitioner's case: all partials up to order {PRACTITIONER_ORDER}, "
        f"MLP {PRACTITIONER_P}-64-64-64-1 (tanh), {settings.points} points",
        "",
    ]
    out += practitioner_section(practitioner, settings, md)
    out += [
        f"{heading}Routes: univariate jets or the MLP route, 3 tanh layers of width 64, "
        f"{settings.route_points} points",
        "",
    ]
    out += routes_section(routes, md)
    out += [
        f"{heading}2. Paper's Table 1: all mixed partials of orders 1..n at one point, "
        f"10-layer tanh MLP of width {settings.table1_width}, vs nested autograd",
        "",
    ]
    out += table1_section(table1, md)
    out += [
        f"{heading}3. Paper's Table 3: order-3 polynomial module vs network, time per batch",
        "",
    ]
    out += inference_section(inference, md)
    out += [f"{heading}Targets", ""]
    out += targets_section(practitioner, table1, md)
    return "\n".join(out)


def run_header(settings: Settings, command: str, session: _harness.Run) -> list[str]:
    environment = _harness.variables(ENVIRONMENT_VARIABLES)
    return [
        f"command: `{command}`",
        _harness.revision(("hope_attr", "benchmarks/mixed.py")),
        f"{_harness.versions()}, dtype {settings.dtype}",
        f"environment: {environment} (all unset: the default environment; {TUNING})",
        session.load_line(),
        f"timing: a warm-up call, then the median of up to {settings.repeats} calls (fewer once a "
        f"configuration took {REPEAT_CAP_S:.0f} s); baselines stopped past {settings.budget:.0f} s "
        f"or {settings.memory_limit_gib:g} GiB of extra memory",
        "wall time and process CPU time (all threads) are both given; on a machine shared with "
        "other processes the CPU time is the steadier one, and the load average says how shared",
        f"models: PyTorch default init under torch.manual_seed({SEED}), eval mode",
    ]


# =============================================================================== main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _harness.parser(__doc__, quick="tiny budget, for a smoke test")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every method")
    parser.add_argument("--repeats", type=int, help="timed calls per configuration (median)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per baseline call")
    parser.add_argument(
        "--note", help="a line for the report's header (e.g. how loaded the machine was)"
    )
    parser.add_argument(
        "--memory-limit", type=float, default=6.0, help="GiB of extra memory per baseline call"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from(args)
    torch.set_num_threads(settings.threads)
    log = lambda line: print(line, flush=True)
    session = _harness.Run()
    log(f"load average at start: {session.load_at_start:.2f}")
    log(f"verified: {verify_table1_baseline()}")
    log("1. practitioner's case")
    practitioner = run_practitioner(settings, log)
    log("routes")
    routes = run_routes(settings, log)
    log("2. Table 1")
    table1 = run_table1(settings, log)
    log("3. Table 3")
    inference = run_inference(settings, log)
    command = " ".join(["python", "benchmarks/mixed.py", *map(shlex.quote, argv or sys.argv[1:])])
    header = run_header(settings, command, session)
    if args.note:
        header.insert(0, f"note: {args.note}")
    print()
    print(render(header, settings, practitioner, routes, table1, inference, md=False))
    text = render(header, settings, practitioner, routes, table1, inference, md=True)
    _harness.save(args, text + "\n")
    if args.markdown:
        print(f"markdown written to {args.markdown}")


if __name__ == "__main__":
    main()
