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

Code: this file holds the page (its tables, targets and command line);
``benchmarks/_mixed_runs.py`` what each part runs and times; the models and the baselines
are shared with the other scripts (``benchmarks/_models.py``, ``benchmarks/_baselines.py``),
and timing, the environment and the markdown come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _harness  # noqa: E402
from benchmarks._harness import Timing  # noqa: E402
from benchmarks._mixed_runs import (  # noqa: E402
    CHECK_TOLERANCE,
    PRACTITIONER_ORDER,
    PRACTITIONER_P,
    REPEAT_CAP_S,
    InferenceRow,
    PractitionerResult,
    RouteRow,
    Settings,
    Table1Row,
    run_inference,
    run_practitioner,
    run_routes,
    run_table1,
    verify_table1_baseline,
)
from benchmarks._models import SEED  # noqa: E402

ENVIRONMENT_VARIABLES = ("OMP_WAIT_POLICY", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
TUNING = (
    "optional: MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000; on a shared machine "
    "--threads 1"
)
PRACTITIONER_TARGET = 3.0  # hope at least this many times faster than the fastest torch.func
TABLE1_TARGET_S = 1.0  # n = 10, p = 3 under this many seconds
# The code the numbers come from: the header says whether it differs from the commit.
SOURCES = (
    "hope_attr",
    "benchmarks/mixed.py",
    "benchmarks/_mixed_runs.py",
    "benchmarks/_baselines.py",
    "benchmarks/_models.py",
    "benchmarks/_harness.py",
)


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


# =============================================================================== report
def seconds(value: float) -> str:
    return f"{value:.3f} s" if value >= 0.1 else f"{1e3 * value:.1f} ms"


def timing_cells(timing: Timing) -> list[str]:
    if not timing.completed:
        return [f"> {timing.stopped_after:.0f} s (stopped)", "-"]
    return [seconds(timing.median_wall), seconds(timing.median_cpu)]


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
        _harness.revision(SOURCES),
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
