"""Feature selection (the HOPE paper's application, Sec. 5.5): keep the pixels that matter most.

Each method ranks the pixels by its mean ``|attribution|`` over training digits (each explained
for its own label). Three measurements on the test digits:

(a) the trained model with every pixel outside the top ``k`` % set to the baseline (0);
(b) KAR (keep and retrain): a small MLP trained from scratch on the top ``k`` % pixels only;
    higher is better, and the small fractions (2-20 %) are where rankings differ;
(c) ROAR (remove and retrain): the MLP trained without the top ``k`` % pixels; lower is better.

Retraining answers "do these pixels carry the information?" rather than "does the trained model
break when they go dark?" (the black pixels of (a) are inputs the model never saw). Each
retraining runs with several seeds, and random rankings (a new one per seed) are the control:
a method is only better than another where the gap exceeds the spread over seeds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from training import accuracy, small_mlp, train

from benchmarks.attribution import BASELINE, Budget, Explainer, Method
from hope_attr.datasets import Digits

RANDOM = "random (control)"


@dataclass(frozen=True)
class SelectionSettings:
    """What the selection run costs: how many digits rank, which levels, how long to retrain."""

    levels: Sequence[int] = (2, 5, 10, 20)  # (a) and KAR: percent of the pixels kept
    remove_levels: Sequence[int] = (10, 20, 30, 50)  # ROAR: percent of the pixels removed
    rank_images: int = 64
    batch_size: int = 16
    retrain_epochs: int = 5
    seeds: int = 3  # retrainings per level (and random rankings of the control)
    seed: int = 0


@dataclass
class SelectionResult:
    """Accuracies per method and level (percent of pixels kept), and the ranking times."""

    levels: list[int]
    remove_levels: list[int] = field(default_factory=list)
    masked: dict[str, list[float]] = field(default_factory=dict)
    retrained: dict[str, list[list[float]]] = field(default_factory=dict)  # per level, per seed
    removed: dict[str, list[list[float]]] = field(default_factory=dict)  # ROAR, per level, seed
    ranking_seconds: dict[str, float] = field(default_factory=dict)
    importances: dict[str, Tensor] = field(default_factory=dict)
    all_pixels: tuple[float, float] = (float("nan"), float("nan"))  # (a) and (b), 100% kept
    rank_images: int = 0


def mean_abs_attribution(
    explainer: Explainer, digits: Digits, count: int, batch_size: int
) -> Tensor:
    """``mean |attribution|`` over the first ``count`` digits, each for its own label."""
    total = torch.zeros_like(digits.images[0], dtype=torch.float64)
    for start in range(0, count, batch_size):
        images = digits.images[start : min(start + batch_size, count)]
        labels = digits.labels[start : start + len(images)]
        total += explainer(images, labels.tolist()).detach().abs().sum(0).double()
    return total / count


def keep_mask(importance: Tensor, percent: int) -> Tensor:
    """Boolean mask of the top ``percent`` % pixels by ``importance`` (ties: lower index)."""
    flat = importance.reshape(-1)
    count = max(1, round(flat.numel() * percent / 100))
    order = flat.argsort(descending=True, stable=True)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:count]] = True
    return mask.reshape(importance.shape)


def masked_accuracy(model: nn.Module, digits: Digits, keep: Tensor) -> float:
    """(a) Accuracy of the trained model with the pixels outside ``keep`` at the baseline."""
    images = torch.where(keep, digits.images, torch.full_like(digits.images, BASELINE))
    return accuracy(model, images, digits.labels)


def retrained_accuracy(
    train_digits: Digits, test_digits: Digits, keep: Tensor, epochs: int, seed: int
) -> float:
    """(b) Test accuracy of a small MLP trained from scratch on the kept pixels only."""
    index = keep.reshape(-1).nonzero()[:, 0]
    train_pixels = train_digits.images.flatten(1)[:, index]
    test_pixels = test_digits.images.flatten(1)[:, index]
    torch.manual_seed(seed)
    model = small_mlp(len(index))
    train(
        model,
        train_pixels,
        train_digits.labels,
        epochs,
        batch_size=128,
        learning_rate=3e-3,
        seed=seed,
        progress=False,
    )
    return accuracy(model, test_pixels, test_digits.labels)


def _importances(
    model: nn.Module,
    methods: Sequence[Method],
    train_digits: Digits,
    settings: SelectionSettings,
    budget: Budget,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    importances, seconds = {}, {}
    count = min(settings.rank_images, len(train_digits.labels))
    for method in tqdm(methods, desc="ranking pixels"):
        torch.manual_seed(settings.seed)
        start = time.perf_counter()
        explainer = Explainer(method, model, budget)
        importances[method.name] = mean_abs_attribution(
            explainer, train_digits, count, settings.batch_size
        )
        seconds[method.name] = time.perf_counter() - start
    generator = torch.Generator().manual_seed(settings.seed)
    shape = train_digits.images[0].shape
    for seed in range(settings.seeds):  # one random ranking per seed: the control's spread
        importances[_random_name(seed)] = torch.rand(
            shape, generator=generator, dtype=torch.float64
        )
    return importances, seconds


def _random_name(seed: int) -> str:
    return f"{RANDOM} #{seed}"


def _method_of(name: str) -> str:
    return RANDOM if name.startswith(RANDOM) else name


def run_selection(
    model: nn.Module,
    methods: Sequence[Method],
    train_digits: Digits,
    test_digits: Digits,
    settings: SelectionSettings,
    budget: Budget,
) -> SelectionResult:
    """Rank pixels with every method that applies to ``model`` (and randomly), then measure
    (a), KAR and ROAR at every level, and all pixels as the reference."""
    methods = [method for method in methods if method.applies(model)]
    importances, seconds = _importances(model, methods, train_digits, settings, budget)
    everything = torch.ones_like(train_digits.images[0], dtype=torch.bool)
    epochs = settings.retrain_epochs
    result = SelectionResult(
        list(settings.levels),
        list(settings.remove_levels),
        ranking_seconds=seconds,
        importances=importances,
        all_pixels=(
            masked_accuracy(model, test_digits, everything),
            retrained_accuracy(train_digits, test_digits, everything, epochs, settings.seed),
        ),
        rank_images=min(settings.rank_images, len(train_digits.labels)),
    )
    jobs = [
        (name, kind, level)
        for name in importances
        for kind, levels in (("keep", settings.levels), ("remove", settings.remove_levels))
        for level in levels
    ]
    for name, kind, level in tqdm(jobs, desc="selection accuracy"):
        method = _method_of(name)
        top = keep_mask(importances[name], level)
        keep = top if kind == "keep" else ~top
        # A method's ranking is retrained with every seed; each random ranking with its own.
        seeds = (
            [settings.seed + int(name.rsplit("#", 1)[1])]
            if method == RANDOM
            else [settings.seed + k for k in range(settings.seeds)]
        )
        scores = [
            retrained_accuracy(train_digits, test_digits, keep, epochs, seed) for seed in seeds
        ]
        target = result.retrained if kind == "keep" else result.removed
        per_level = target.setdefault(
            method, [[] for _ in (settings.levels if kind == "keep" else settings.remove_levels)]
        )
        levels = settings.levels if kind == "keep" else settings.remove_levels
        per_level[list(levels).index(level)].extend(scores)
        if kind == "keep" and (method != RANDOM or name == _random_name(0)):  # (a): no seeds
            result.masked.setdefault(method, []).append(masked_accuracy(model, test_digits, keep))
    return result


def _cell(values: Sequence[float]) -> str:
    mean = 100 * sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def selection_table(result: SelectionResult, which: str) -> str:
    """``which``: ``"masked"`` (a), ``"retrained"`` (KAR) or ``"removed"`` (ROAR).

    One row per method, one column per level, then the mean over levels; retrained cells are
    the mean ± standard deviation over seeds.
    """
    values = getattr(result, which)
    levels = result.remove_levels if which == "removed" else result.levels
    verb = "removed" if which == "removed" else "kept"
    header = "| method | " + " | ".join(f"{k}% {verb}" for k in levels) + " | mean |"
    lines = [header, "|---|" + "---|" * (len(levels) + 1)]
    for name, per_level in values.items():
        if which == "masked":
            cells = [f"{100 * a:.1f}" for a in per_level]
            mean = 100 * sum(per_level) / len(per_level)
        else:
            cells = [_cell(v) for v in per_level]
            mean = 100 * sum(sum(v) / len(v) for v in per_level) / len(per_level)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:.1f} |")
    return "\n".join(lines)


def summary(result: SelectionResult) -> str:
    """Which ranking wins KAR (highest mean) and ROAR (lowest), and the random control's."""

    def means(values: dict[str, list[list[float]]]) -> dict[str, float]:
        return {
            name: sum(sum(v) / len(v) for v in per_level) / len(per_level)
            for name, per_level in values.items()
        }

    parts = []
    for label, values, best in (("KAR", result.retrained, max), ("ROAR", result.removed, min)):
        if not values:
            continue
        scores = means(values)
        winner = best(scores, key=scores.get)
        ranked = sorted(scores, key=scores.get, reverse=best is max)
        parts.append(
            f"{label}: best {winner} ({100 * scores[winner]:.1f}%), then "
            + ", ".join(f"{n} ({100 * scores[n]:.1f}%)" for n in ranked[1:4])
            + f"; random control {100 * scores.get(RANDOM, float('nan')):.1f}%"
        )
    return "; ".join(parts) + "."
