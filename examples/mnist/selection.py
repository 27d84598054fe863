"""Feature selection (the HOPE paper's application, Sec. 5.5): keep the pixels that matter most.

Each method ranks the pixels by its mean ``|attribution|`` over training digits (each explained
for its own label). Keeping the top ``k`` % of pixels, two accuracies are measured on the test
digits: (a) the trained model with every other pixel set to the baseline (0), and (b) a small MLP
retrained on the kept pixels only (ROAR-style, short training). Random pixels are the control.
"""

from __future__ import annotations

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

    levels: Sequence[int] = (5, 10, 20, 50)
    rank_images: int = 64
    batch_size: int = 16
    retrain_epochs: int = 5
    seed: int = 0


@dataclass
class SelectionResult:
    """Accuracies per method and level (percent of pixels kept), and the ranking times."""

    levels: list[int]
    masked: dict[str, list[float]] = field(default_factory=dict)
    retrained: dict[str, list[float]] = field(default_factory=dict)
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
    importances[RANDOM] = torch.rand(shape, generator=generator, dtype=torch.float64)
    return importances, seconds


def _score(
    model: nn.Module,
    train_digits: Digits,
    test_digits: Digits,
    keep: Tensor,
    settings: SelectionSettings,
) -> tuple[float, float]:
    """(a) masked and (b) retrained test accuracy for one set of kept pixels."""
    return (
        masked_accuracy(model, test_digits, keep),
        retrained_accuracy(train_digits, test_digits, keep, settings.retrain_epochs, settings.seed),
    )


def run_selection(
    model: nn.Module,
    methods: Sequence[Method],
    train_digits: Digits,
    test_digits: Digits,
    settings: SelectionSettings,
    budget: Budget,
) -> SelectionResult:
    """Rank pixels with every method that applies to ``model`` (and randomly), then score
    each selection level, and all pixels as the reference."""
    methods = [method for method in methods if method.applies(model)]
    importances, seconds = _importances(model, methods, train_digits, settings, budget)
    everything = torch.ones_like(train_digits.images[0], dtype=torch.bool)
    result = SelectionResult(
        list(settings.levels),
        ranking_seconds=seconds,
        importances=importances,
        all_pixels=_score(model, train_digits, test_digits, everything, settings),
        rank_images=min(settings.rank_images, len(train_digits.labels)),
    )
    jobs = [(name, level) for name in importances for level in settings.levels]
    for name, level in tqdm(jobs, desc="selection accuracy"):
        keep = keep_mask(importances[name], level)
        masked, retrained = _score(model, train_digits, test_digits, keep, settings)
        result.masked.setdefault(name, []).append(masked)
        result.retrained.setdefault(name, []).append(retrained)
    return result


def selection_table(result: SelectionResult, which: str) -> str:
    """``which`` is ``"masked"`` or ``"retrained"``: one row per method, one column per level."""
    values = getattr(result, which)
    header = "| method | " + " | ".join(f"top {k}%" for k in result.levels) + " | mean |"
    rule = "|---|" + "---|" * (len(result.levels) + 1)
    lines = [header, rule]
    for name, accuracies in values.items():
        cells = [f"{100 * a:.1f}" for a in accuracies]
        mean = 100 * sum(accuracies) / len(accuracies)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:.1f} |")
    return "\n".join(lines)
