"""Attribution methods side by side on the same images: time, agreement and faithfulness.

For every method of a registry (:mod:`benchmarks.methods`: HOPE at several orders, exact and the
paper's diagonal rule, and Captum's gradient, perturbation and LRP methods), on the same ``N``
images and targets:

* ``s/image``: the median wall time of one call on one image (a warm-up call first, excluded;
  every method runs in this process under the same ``torch`` thread setting);
* agreement with single-pixel Captum ``FeatureAblation`` (baseline 0, the reference): the mean
  Spearman correlation of the signed maps, and the overlap of the top 10 % pixels by
  ``|attribution|`` (the pixels a feature selection would keep);
* faithfulness: deletion and insertion AUC (the target's softmax probability while pixels are set
  to the baseline, or copied onto it, in the order of the signed attributions; lower deletion,
  higher insertion is better), ``captum.metrics.infidelity`` (normalized; perturbations remove a
  random 20 % of the pixels) and ``captum.metrics.sensitivity_max``;
* ``|delta|``: the mean absolute completeness delta for methods that have one: ``sum(attr) -
  (f(x) - f(baseline))`` for HOPE, IntegratedGradients, DeepLift and GradientShap, and the
  relevance conservation ``sum(R) - f(x)`` for LRP.

The registry's names are importable from here too (the MNIST tutorial and its tests use them);
the timing, environment and report helpers every benchmark script shares are in
:mod:`benchmarks._harness`; ``python benchmarks/attribution.py --quantus`` runs
:mod:`benchmarks.quantus_eval`.

Example (a toy linear model, on which HOPE and FeatureAblation agree exactly)::

    >>> import torch
    >>> from benchmarks.attribution import Budget, run_benchmark, markdown_table, hope_method
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    >>> x = torch.rand(2, 1, 4, 4)
    >>> result = run_benchmark(model, x, [0, 1], [hope_method(2)], budget=Budget.tiny())
    >>> round(result.rows[0].spearman, 6)
    1.0
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from captum.metrics import infidelity, infidelity_perturb_func_decorator, sensitivity_max
from matplotlib.figure import Figure
from matplotlib.text import Text
from scipy.stats import rankdata
from torch import Tensor, nn
from tqdm.auto import tqdm

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _harness  # noqa: E402
from benchmarks.methods import (  # noqa: E402
    BASELINE,
    CAPTUM_METHODS,
    REFERENCE,
    Budget,
    Explainer,
    Method,
    all_methods,
    attribute,
    hope_method,
    hope_methods,
    hope_paper_method,
    is_relu_network,
    method_by_name,
    superpixel_mask,
)

__all__ = [
    "BASELINE", "CAPTUM_METHODS", "REFERENCE", "REMOVED_SHARE", "BenchmarkResult", "Budget",
    "Explainer", "Method", "Row", "all_methods", "area_under_curve", "attribute",
    "evaluate_method", "feature_ranks", "hope_method", "hope_methods", "hope_paper_method",
    "is_relu_network", "markdown_table", "median_seconds", "method_by_name",
    "plot_time_vs_agreement", "removal_curves", "run_benchmark", "spearman", "superpixel_mask",
    "top_overlap",
]  # fmt: skip

REMOVED_SHARE = 0.2  # infidelity's perturbations set this share of the pixels to the baseline


# --------------------------------------------------------------------------- metrics
def _flat(values: Tensor) -> np.ndarray:
    return values.detach().reshape(values.shape[0], -1).double().cpu().numpy()


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per example (ties get average ranks; constant maps give 0)."""
    ranks_a = rankdata(_flat(a), axis=1)
    ranks_b = rankdata(_flat(b), axis=1)
    ranks_a -= ranks_a.mean(1, keepdims=True)
    ranks_b -= ranks_b.mean(1, keepdims=True)
    norms = np.linalg.norm(ranks_a, axis=1) * np.linalg.norm(ranks_b, axis=1)
    products = (ranks_a * ranks_b).sum(1)
    return torch.from_numpy(
        np.divide(products, norms, out=np.zeros_like(products), where=norms > 0)
    )


def _top_mask(values: Tensor, k: int) -> Tensor:
    flat = values.detach().reshape(values.shape[0], -1).abs()
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k).indices, True)


def top_overlap(a: Tensor, b: Tensor, fraction: float = 0.1) -> Tensor:
    """Per example, the share of the top ``fraction`` features by ``|a|`` also top by ``|b|``."""
    k = max(1, math.ceil(fraction * a[0].numel()))
    return (_top_mask(a, k) & _top_mask(b, k)).sum(1).double() / k


def feature_ranks(attributions: Tensor) -> Tensor:
    """Rank of every feature per example, 0 for the largest (signed) attribution."""
    flat = attributions.detach().reshape(attributions.shape[0], -1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))


def removal_curves(
    model: nn.Module,
    inputs: Tensor,
    target: Sequence[int],
    attributions: Tensor,
    steps: int = 20,
    insertion: bool = False,
) -> Tensor:
    """The target's softmax probability ``(B, steps + 1)`` as features move in attribution order.

    Deletion (default) starts from the input and sets the highest-ranked features to the
    baseline first; insertion starts from the baseline and copies the highest-ranked first.
    """
    ranks = feature_ranks(attributions).reshape(inputs.shape)
    count = ranks[0].numel()
    moved = [ranks < round(count * step / steps) for step in range(steps + 1)]
    moved_mask = torch.stack(moved, dim=1)  # (B, steps + 1, *I)
    x = inputs.unsqueeze(1)
    baseline = torch.full_like(x, BASELINE)
    images = (
        torch.where(moved_mask, x, baseline) if insertion else torch.where(moved_mask, baseline, x)
    )
    with torch.no_grad():
        logits = model(images.reshape(-1, *inputs.shape[1:]))
    probabilities = logits.softmax(-1).reshape(inputs.shape[0], steps + 1, -1)
    index = torch.as_tensor(list(target)).reshape(-1, 1, 1).expand(-1, steps + 1, 1)
    return probabilities.gather(2, index)[..., 0]


def area_under_curve(curves: Tensor) -> Tensor:
    """Trapezoid area of curves sampled on an even grid of ``[0, 1]``, per row."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def _removal_perturbation(multiply_by_inputs: bool) -> Callable[..., Any]:
    @infidelity_perturb_func_decorator(multiply_by_inputs)
    def remove_random_pixels(inputs: Tensor, baselines: Tensor) -> Tensor:
        removed = torch.rand_like(inputs) < REMOVED_SHARE
        return torch.where(removed, baselines.expand_as(inputs), inputs)

    return remove_random_pixels


# --------------------------------------------------------------------------- the benchmark
@dataclass(frozen=True)
class Row:
    """One method's results, averaged over the benchmark's images."""

    method: str
    seconds_per_image: float
    spearman: float
    top_overlap: float
    deletion_auc: float
    insertion_auc: float
    infidelity: float
    sensitivity: float
    delta: float | None


@dataclass
class BenchmarkResult:
    """The rows, every method's attributions ``(N, *I)`` and the run's settings."""

    rows: list[Row]
    attributions: dict[str, Tensor]
    threads: int
    images: int
    budget: Budget


def median_seconds(function: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall time of ``repeats`` calls of ``function``, after one warm-up call."""
    return _harness.timed_median(function, repeats)[0]


def _timed_attributions(
    explainer: Explainer, inputs: Tensor, target: list[int]
) -> tuple[Tensor, float]:
    """Attributions one image at a time, and the median seconds per call (warm-up excluded)."""
    explainer(inputs[:1], target[:1])
    seconds, maps = [], []
    for index in range(inputs.shape[0]):
        start = time.perf_counter()
        result = explainer(inputs[index : index + 1], target[index : index + 1])
        seconds.append(time.perf_counter() - start)
        maps.append(result.detach())
    return torch.cat(maps), statistics.median(seconds)


def evaluate_method(
    explainer: Explainer,
    inputs: Tensor,
    target: list[int],
    reference: Tensor,
    seed: int = 0,
) -> tuple[Row, Tensor]:
    """Time ``explainer`` on ``inputs`` and score it against the ``reference`` maps."""
    torch.manual_seed(seed)  # the sampling methods draw the same noise in every run
    maps, seconds = _timed_attributions(explainer, inputs, target)
    budget, model = explainer.budget, explainer.model
    deletion = removal_curves(model, inputs, target, maps, budget.curve_steps)
    insertion = removal_curves(model, inputs, target, maps, budget.curve_steps, insertion=True)
    infidelities = infidelity(
        model,
        _removal_perturbation(explainer.multiplies_by_inputs),
        inputs,
        maps,
        baselines=torch.full_like(inputs, BASELINE),
        target=target,
        n_perturb_samples=budget.infidelity_samples,
        normalize=True,
    )
    sensitivities = sensitivity_max(
        explainer,
        inputs,
        target=target,
        n_perturb_samples=budget.sensitivity_samples,
    )
    delta = explainer.convergence_delta(inputs, target)
    row = Row(
        method=explainer.method.name,
        seconds_per_image=seconds,
        spearman=spearman(maps, reference).mean().item(),
        top_overlap=top_overlap(maps, reference).mean().item(),
        deletion_auc=area_under_curve(deletion).mean().item(),
        insertion_auc=area_under_curve(insertion).mean().item(),
        infidelity=infidelities.mean().item(),
        sensitivity=sensitivities.mean().item(),
        delta=None if delta is None else delta.abs().mean().item(),
    )
    return row, maps


def run_benchmark(
    model: nn.Module,
    inputs: Tensor,
    target: Sequence[int],
    methods: Sequence[Method] | None = None,
    budget: Budget | None = None,
    progress: bool = True,
) -> BenchmarkResult:
    """Benchmark ``methods`` (default :func:`all_methods`) on ``inputs`` and their targets.

    Methods whose ``applies`` rejects the model are skipped. The reference, single-pixel
    ``FeatureAblation`` with baseline 0, is computed first, in one batch.
    """
    budget = budget or Budget()
    target = [int(t) for t in target]
    chosen = [m for m in (methods if methods is not None else all_methods()) if m.applies(model)]
    reference_method = method_by_name(REFERENCE, CAPTUM_METHODS)
    reference = Explainer(reference_method, model, budget)(inputs, target).detach()
    rows, attributions = [], {}
    for method in tqdm(chosen, desc="benchmark", disable=not progress):
        row, maps = evaluate_method(Explainer(method, model, budget), inputs, target, reference)
        rows.append(row)
        attributions[method.name] = maps
    return BenchmarkResult(rows, attributions, torch.get_num_threads(), inputs.shape[0], budget)


# --------------------------------------------------------------------------- output
_COLUMNS = (
    ("method", "method", "{}"),
    ("ms/image", "seconds_per_image", "ms"),
    ("Spearman vs FA", "spearman", "{:.3f}"),
    ("top-10% overlap", "top_overlap", "{:.2f}"),
    ("deletion AUC (lower better)", "deletion_auc", "{:.3f}"),
    ("insertion AUC (higher better)", "insertion_auc", "{:.3f}"),
    ("infidelity", "infidelity", "{:.3g}"),
    ("sensitivity max", "sensitivity", "{:.3g}"),
    ("mean abs delta", "delta", "{:.3g}"),
)


def _cell(value: Any, form: str) -> str:
    if value is None:
        return "-"
    if form == "ms":
        return f"{1000 * value:.1f}"
    return form.format(value)


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table (times in milliseconds)."""
    header = "| " + " | ".join(title for title, _, _ in _COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in _COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [_cell(getattr(row, name), form) for _, name, form in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_FLOOR = 1e-6  # where a disagreement of 0 is drawn on the log axis
_CAPTUM_COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:pink", "tab:gray", "tab:olive")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _style(name: str, counters: dict[str, int]) -> tuple[str, str]:
    """A colour per family (HOPE exact, HOPE diagonal, other HOPE, Captum), a marker per member."""
    if name.startswith("HOPE exact"):
        family, colors = "exact", ("tab:red",)
    elif name.startswith("HOPE diagonal"):
        family, colors = "diagonal", ("tab:orange",)
    elif name.startswith("HOPE"):
        family, colors = "hope", ("tab:brown",)
    else:
        family, colors = "captum", _CAPTUM_COLORS
    count = counters.get(family, 0)
    counters[family] = count + 1
    return colors[count % len(colors)], _MARKERS[(count // len(colors)) % len(_MARKERS)]


def _place_labels(axis: Any, points: Sequence[tuple[float, float]], numbers: Sequence[int]) -> None:
    """Number the points, each label where it overlaps no other label or point.

    Points closer than a few pixels (e.g. methods that all reproduce the reference) share one
    label, "3,4,9". Candidate positions around the point are tried in turn, further out when all
    are taken; a line joins a label to its point when it had to move away.
    """
    renderer = axis.figure.canvas.get_renderer()
    pixels = axis.transData.transform(np.asarray(points))
    groups: list[list[int]] = []
    for index, pixel in enumerate(pixels):
        for group in groups:
            if np.abs(pixels[group[0]] - pixel).max() < 5:
                group.append(index)
                break
        else:
            groups.append([index])
    radius = 5.0
    taken = [
        (p[0] - radius, p[1] - radius, p[0] + radius, p[1] + radius) for p in pixels
    ]  # the markers
    frame = axis.get_window_extent(renderer)
    directions = [(1, 0.2), (1, -1), (-1, 0.2), (-1, -1), (0, 1), (0, -1.6), (1, 1), (-1, 1)]
    for group in groups:
        text = ",".join(str(numbers[i]) for i in group)
        placed = None
        for distance in (6, 14, 24, 36):
            for dx, dy in directions:
                label = axis.annotate(
                    text,
                    points[group[0]],
                    xytext=(dx * distance, dy * distance),
                    textcoords="offset points",
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="center",
                    fontsize=7,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"}
                    if distance > 6
                    else None,
                )
                # The text alone: an annotation's extent includes its leader line, which ends
                # at its own marker, so every moved candidate looked taken.
                label.update_positions(renderer)
                box = Text.get_window_extent(label, renderer)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1
                inside = inside and frame.y0 <= box.y0 and box.y1 <= frame.y1
                free = all(
                    box.x1 < x0 or box.x0 > x1 or box.y1 < y0 or box.y0 > y1
                    for x0, y0, x1, y1 in taken
                )
                if inside and free:
                    placed = box
                    break
                label.remove()
            if placed is not None:
                break
        if placed is None:  # crowded beyond every candidate: keep the first one
            label = axis.annotate(
                text, points[group[0]], xytext=(6, 1), textcoords="offset points", fontsize=7
            )
            placed = label.get_window_extent(renderer)
        taken.append((placed.x0, placed.y0, placed.x1, placed.y1))


def plot_time_vs_agreement(rows: Sequence[Row], title: str = "") -> Figure:
    """Median time per image against disagreement with FA, ``1 - Spearman`` (both log scale).

    The log of ``1 - Spearman`` separates methods that all agree closely (0.97 vs 0.9999).
    Every method has its own colour and marker, a number next to its point and a legend entry;
    labels are placed so that they overlap neither each other nor the points.

    Example:
        >>> row = Row("A", 0.01, 0.9, 0.5, 0.1, 0.5, 0.1, 0.1, None)
        >>> figure = plot_time_vs_agreement([row])
        >>> figure.axes[0].get_legend().get_texts()[0].get_text()
        '1  A'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(figure)  # label placement measures text on a renderer
    axis = figure.add_axes((0.1, 0.1, 0.56, 0.82))  # fixed: the legend takes the right side
    points = [(1000 * row.seconds_per_image, max(1.0 - row.spearman, _FLOOR)) for row in rows]
    counters: dict[str, int] = {}
    for number, (row, point) in enumerate(zip(rows, points, strict=True), start=1):
        color, marker = _style(row.method, counters)
        axis.scatter(*point, color=color, marker=marker, s=28, label=f"{number}  {row.method}")
    axis.set_xscale("log")
    axis.set_yscale("log")
    if points:
        times = [p[0] for p in points]
        axis.set_xlim(min(times) / 1.8, max(times) * 1.8)
        axis.set_ylim(_FLOOR / 4, 4.0)
    axis.set_xlabel("median ms per image (log)")
    axis.set_ylabel(f"1 - Spearman vs single-pixel {REFERENCE}\n(log; 0 drawn at {_FLOOR:g})")
    axis.set_title(title or "time vs agreement", fontsize=9)
    axis.grid(alpha=0.3, which="both")
    axis.legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=7,
        frameon=False,
        title="lower left is better:\nfaster and closer to FeatureAblation",
        title_fontsize=7,
        ncols=1 if len(rows) <= 24 else 2,
    )
    _place_labels(axis, points, list(range(1, len(rows) + 1)))
    return figure


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> None:
    """``python benchmarks/attribution.py --quantus``: the Quantus evaluation's results page."""
    from benchmarks import quantus_eval

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--quantus", action="store_true", help="run the Quantus evaluation")
    parser.add_argument("--digits", type=int, default=4, help="test digits explained")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (the tutorial's)")
    parser.add_argument("--cache", type=Path, default=quantus_eval.MNIST_EXAMPLE / ".cache")
    _harness.add_outputs(parser)
    parser.set_defaults(markdown=_harness.ROOT / "benchmarks/results/quantus.md")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke test: 2 digits, 1 epoch, 3 methods, tiny budget"
    )
    arguments = parser.parse_args(argv)
    if not arguments.quantus:
        parser.error("choose an evaluation: --quantus")
    torch.set_num_threads(arguments.threads)
    warnings.simplefilter("ignore", UserWarning)  # Captum's advice on hooks, repeated per call
    command = "python benchmarks/attribution.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if arguments.tiny:
        result = quantus_eval.run(
            digits=2,
            epochs=1,
            cache=arguments.cache,
            budget=Budget.tiny(),
            method_names=("HOPE exact n=2", "Saliency", "LRP"),
        )
    else:
        result = quantus_eval.run(arguments.digits, arguments.epochs, arguments.cache)
    _harness.save(arguments, quantus_eval.markdown(result, command.strip()))
    print(f"wrote {arguments.markdown} in {result.seconds:.0f} s")


if __name__ == "__main__":
    main()
