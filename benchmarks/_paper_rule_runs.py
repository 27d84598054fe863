"""The runs of ``benchmarks/paper_rule.py``: what each of its three parts computes and times.

``paper_rule.py`` holds the page (its explanation, tables and command line) and turns its options
into :class:`Settings`; the functions here run one part each, logging progress through ``log``:

* :func:`measure_derivatives` (a): the relative error and wrong-sign share of the paper's rule
  (``method="diagonal"``) against the exact jets, per activation, depth and weight scale;
  :func:`check_exact_cases` asserts the cases where the rule is exact in theory;
* :func:`measure_heat_maps` (b): the paper's map, the exact map and the gradient against the
  true single-pixel perturbation on MNIST digits (:data:`MAP_COLUMNS`);
* :func:`measure_timing` (c): ``attribute_all_targets`` by both methods against Captum's
  Saliency and FeatureAblation on the MNIST CNN, in interleaved rounds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

import hope_attr
from benchmarks import _baselines, _harness
from benchmarks._models import (
    NUM_CLASSES,
    Sin,
    accuracy,
    mlp,
    mnist_cnn,
    mnist_mlp,
    scale_weights,
    train,
)
from hope_attr.attribution.diagonal import diagonal_coefficients
from hope_attr.datasets import load_mnist
from hope_attr.engine.expansion import Expansion

INPUT_DIM, WIDTH, OUTPUT_DIM = 8, 16, 4
MAX_ORDER = 6
EXACT_TOLERANCE = 1e-12  # depth 1 and order 1: relative error to rounding
MAP_ORDER = 4  # the paper's heat maps: order 4, dx = 1
NUM_TRAIN = 4000  # digits 0..3999 may train the CNN; the heat maps use digits from 4000 on


@dataclass(frozen=True)
class Settings:
    """What one run does: nets, digits and rounds (``paper_rule.py`` sets them from ``--quick``)."""

    nets: int  # random nets (and points) per (activation, depth, scale)
    depths: tuple[int, ...]
    scales: tuple[float, ...]
    digits: int
    train_digits: int
    epochs: int
    timing_orders: tuple[int, ...]
    rounds: int


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "sin": Sin,
}


def scale_label(factor: float) -> str:
    return "x1 (PyTorch default init)" if factor == 1.0 else f"x{factor:g}"


# =============================================================================== (a) derivatives
@dataclass(frozen=True)
class DerivativeErrors:
    """Per net ``(nets, MAX_ORDER)``: relative error and share of entries with the wrong sign."""

    relative: Tensor
    wrong_sign: Tensor


def compare_rules(model: nn.Module, x: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """``(order,)`` relative errors and wrong-sign shares of the paper's rule at ``x``."""
    expansion = Expansion(model, x, order)
    exact = expansion.unmixed_coefficients()[0].reshape(order, -1)
    paper = diagonal_coefficients(expansion)[0].reshape(order, -1)
    # Both are normalized coefficients (derivative / k!): the k! cancels in the ratio.
    relative = torch.linalg.vector_norm(paper - exact, dim=1) / torch.linalg.vector_norm(
        exact, dim=1
    )
    wrong_sign = (torch.sign(paper) != torch.sign(exact)).double().mean(dim=1)
    return relative, wrong_sign


def random_net(activation: str, depth: int, index: int) -> tuple[nn.Module, Tensor]:
    """Net ``index`` of a depth and its point: the same weights for every activation and scale."""
    torch.manual_seed(1000 * depth + index)
    widths = (INPUT_DIM, *([WIDTH] * depth), OUTPUT_DIM)
    model = mlp(widths, ACTIVATIONS[activation]).double().eval()
    return model, torch.randn(1, INPUT_DIM, dtype=torch.float64)


def derivative_errors(activation: str, depth: int, scale: float, nets: int) -> DerivativeErrors:
    results = []
    for index in range(nets):
        model, x = random_net(activation, depth, index)
        results.append(compare_rules(scale_weights(model, scale), x, MAX_ORDER))
    relative, wrong_sign = (torch.stack(column) for column in zip(*results, strict=True))
    return DerivativeErrors(relative, wrong_sign)


Config = tuple[str, int, float]  # activation, depth, weight scale


def measure_derivatives(
    settings: Settings, log: Callable[[str], None]
) -> dict[Config, DerivativeErrors]:
    results = {}
    for scale in settings.scales:
        for activation in ACTIVATIONS:
            for depth in settings.depths:
                results[activation, depth, scale] = derivative_errors(
                    activation, depth, scale, settings.nets
                )
        log(f"(a) derivatives, weights {scale_label(scale)}: done")
    return results


def largest_exact_case_error(results: dict[Config, DerivativeErrors]) -> float:
    """Largest relative error where the rule is exact in theory: depth 1, or order 1."""
    errors = [
        (stats.relative if depth == 1 else stats.relative[:, 0]).max().item()
        for (_, depth, _), stats in results.items()
    ]
    return max(errors)


def check_exact_cases(results: dict[Config, DerivativeErrors]) -> float:
    largest = largest_exact_case_error(results)
    if not largest < EXACT_TOLERANCE:
        raise AssertionError(
            f"the paper's rule should be exact at depth 1 and at order 1, but its relative error "
            f"reaches {largest:.2e} (tolerance {EXACT_TOLERANCE:.0e})"
        )
    return largest


# =============================================================================== (b) heat maps
def paper_map(model: nn.Module, x: Tensor, target: int, method: str) -> tuple[Tensor, float]:
    """Eq. 77 at dx = 1, order MAP_ORDER; and the share ``||orders 2..n|| / ||order 1||``."""
    attribution = hope_attr.HOPEAttribution(model, order=MAP_ORDER, method=method)
    heat_map, orders = attribution.paper_heat_map(x, dx=1.0, target=target, return_orders=True)
    share = torch.linalg.vector_norm(orders[1:].sum(0)) / torch.linalg.vector_norm(orders[0])
    return heat_map[0], share.item()


def correlation(value: float) -> str:
    return f"{value:.5f}"


def number(value: float) -> str:
    return f"{value:.2g}"


MAP_COLUMNS: tuple[tuple[str, Callable[[float], str]], ...] = (
    ("Spearman paper-true", correlation),
    ("Spearman exact-true", correlation),
    ("Spearman gradient-true", correlation),
    ("Spearman paper-exact", correlation),
    ("rel. L2 error paper", number),
    ("rel. L2 error exact", number),
    ("rel. L2 error gradient", number),
    ("orders>=2 / order 1 (exact)", number),
)


def map_scores(model: nn.Module, x: Tensor) -> tuple[float, ...]:
    """One image ``(1, *I)``: the MAP_COLUMNS, for the model's predicted class."""
    with torch.no_grad():
        target = int(model(x).argmax(1))
    true = _baselines.true_perturbation(model, x, target)
    paper, _ = paper_map(model, x, target, "diagonal")
    exact, share = paper_map(model, x, target, "exact")
    gradient = _baselines.gradient_map(model, x, target)
    return (
        _baselines.spearman(paper, true),
        _baselines.spearman(exact, true),
        _baselines.spearman(gradient, true),
        _baselines.spearman(paper, exact),
        _baselines.relative_distance(paper, true),
        _baselines.relative_distance(exact, true),
        _baselines.relative_distance(gradient, true),
        share,
    )


def heat_map_models(settings: Settings, digits: Tensor, labels: Tensor) -> dict[str, nn.Module]:
    trained = mnist_cnn()
    train(
        trained, digits[: settings.train_digits], labels[: settings.train_digits], settings.epochs
    )
    test_accuracy = accuracy(trained, digits[NUM_TRAIN:], labels[NUM_TRAIN:])
    models = {
        "MLP 784-128-64-10 tanh, default init": mnist_mlp(),
        "MLP 784-128-64-10 tanh, weights x8": scale_weights(mnist_mlp(), 8.0),
        "CNN, random init": mnist_cnn(),
        f"CNN, trained {settings.epochs} epoch(s) on {settings.train_digits} digits "
        f"(test accuracy {test_accuracy:.1%} on {len(labels) - NUM_TRAIN})": trained,
    }
    return {name: model.double().eval() for name, model in models.items()}


def measure_heat_maps(
    settings: Settings, log: Callable[[str], None]
) -> dict[str, list[tuple[float, ...]]]:
    data = load_mnist()
    models = heat_map_models(settings, data.images, data.labels)
    test_images = data.images[NUM_TRAIN : NUM_TRAIN + settings.digits].double()
    results = {}
    for name, model in models.items():
        results[name] = [map_scores(model, image.unsqueeze(0)) for image in test_images]
        log(f"(b) heat maps, {name}: done")
    return results


# =============================================================================== (c) timing
@dataclass(frozen=True)
class Timed:
    method: str
    hope_order: int | None  # None: a Captum method
    classes: int
    call: Callable[[], object]


def timed_methods(model: nn.Module, x: Tensor, orders: Iterable[int]) -> list[Timed]:
    from captum.attr import Saliency

    def hope(order: int, method: str) -> Callable[[], object]:
        attribution = hope_attr.HOPEAttribution(model, order=order, method=method)
        return lambda: attribution.attribute_all_targets(x, baselines=0.0)

    features = x[0].numel()
    methods = [
        Timed(f'HOPE method="{method}"', order, NUM_CLASSES, hope(order, method))
        for order in orders
        for method in ("diagonal", "exact")
    ]
    saliency, ablation = Saliency(model), _baselines.feature_ablation(model)
    x_grad = x.clone().requires_grad_()  # Saliency warns about an input without requires_grad
    methods += [
        Timed("Captum Saliency", None, 1, lambda: saliency.attribute(x_grad, target=0, abs=False)),
        Timed(
            f"Captum FeatureAblation (perturbations_per_eval={features})",
            None,
            1,
            partial(ablation, x),
        ),
    ]
    return methods


def measure_timing(settings: Settings, log: Callable[[str], None]) -> dict[Timed, list[float]]:
    model = mnist_cnn().eval()
    x = load_mnist().images[NUM_TRAIN : NUM_TRAIN + 1]
    methods = timed_methods(model, x, settings.timing_orders)
    times = _harness.interleaved_rounds(
        {method: method.call for method in methods}, settings.rounds
    )
    log("(c) timing: done")
    return times
