"""Cost and accuracy of HOPE's Taylor continuation against Captum's FeatureAblation.

Models (float64, default initialization, seed 0; the x25 MLP has every weight and bias times 25):
the issue's 784-64-64-10 tanh MLP x25, and the tutorial's two MNIST CNN layouts (tanh/avg-pool and
ReLU/max-pool, ``examples/mnist/training.py``), on real MNIST digits (``load_mnist``), every pixel
its own feature; and torchvision's ``mobilenet_v3_small`` and ``efficientnet_b0`` (10 classes) on
one random 3x32x32 image (uniform in [0, 1], seed 0), 8x8 patches as ``feature_mask`` groups (16
groups), with realistic BatchNorm statistics (the exact averages over 4 batches of 16 random images
in train mode, then eval; default statistics leave efficientnet's output flat to 1e-14). 32x32
keeps the whole run at a few minutes on one thread. Baseline 0, one class (target 0). Times are
medians of ``--repeats`` calls after a warm-up, both methods in the same process;
FeatureAblation runs all perturbations in one batch. Continuation runs twice: as shipped (each
path the first series does not reach ends by one forward pass at its end) and with
``hope_attr.attribution.continuation.TAYLOR_STEPS = 200`` (the path integrated in Taylor steps).

Run (from the repository root)::

    OMP_NUM_THREADS=1 python -m benchmarks.continuation --out benchmarks/results/continuation.md
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from captum.attr import FeatureAblation
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "mnist"))  # the tutorial's models
from training import paper_cnn, relu_cnn  # noqa: E402

from benchmarks import _harness  # noqa: E402
from hope_attr import ConvergenceWarning, HOPEAttribution  # noqa: E402
from hope_attr.attribution import continuation as _continuation  # noqa: E402
from hope_attr.datasets import load_mnist  # noqa: E402


def steep_mlp() -> nn.Module:
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(25)
    return model


def _calibrated(model: nn.Module, size: int) -> nn.Module:
    """Running BatchNorm statistics of random images (cumulative average, not momentum)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(16, 3, size, size, dtype=torch.float64))
    return model.eval()


def mobile_cases(size: int = 32, patch: int = 8) -> list[tuple]:
    """``(name, model, x, feature_mask)`` for the two torchvision mobile architectures."""
    from torchvision.models import efficientnet_b0, mobilenet_v3_small

    ids = torch.arange(size) // patch
    mask = (ids.reshape(-1, 1) * (size // patch) + ids).reshape(1, 1, size, size)
    cases = []
    for build in (mobilenet_v3_small, efficientnet_b0):
        torch.manual_seed(0)
        model = _calibrated(build(num_classes=10).double(), size)
        x = torch.rand(1, 3, size, size, dtype=torch.float64)
        cases.append((f"{build.__name__} {size}x{size}, {patch}x{patch} patches", model, x, mask))
    return cases


def _median_time(call: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    return _harness.timed_median(call, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    _harness.add_outputs(parser, "--out", "--markdown")
    args = parser.parse_args()
    torch.manual_seed(0)
    digits = load_mnist().images[: args.images].double()
    cases = []
    for name, build, order, rtol in [
        ("tanh MLP x25", steep_mlp, 4, 1e-4),
        ("tanh/avg-pool CNN", paper_cnn, 4, 1e-6),
        ("ReLU/max-pool CNN", relu_cnn, 2, 1e-6),
    ]:
        torch.manual_seed(0)
        cases.append((name, build().double().eval(), digits, None, order, rtol))
    cases += [(*case, 8, 1e-6) for case in mobile_cases()]
    rows = []
    for name, model, x, mask, order, rtol in cases:
        fa_time, expected = _median_time(
            lambda model=model, x=x, mask=mask: FeatureAblation(model).attribute(
                x, target=0, feature_mask=mask, perturbations_per_eval=784
            ),
            args.repeats,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            exact = HOPEAttribution(model, order=order).attribute(x, target=0, feature_mask=mask)
        warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
        hope = HOPEAttribution(model, order=order, method="continuation", rtol=rtol)
        cells = []
        for taylor_steps in (0, 200):  # the default (end by a forward pass), Taylor steps
            _continuation.TAYLOR_STEPS = taylor_steps
            hope_time, (actual, diagnostics) = _median_time(
                lambda hope=hope, x=x, mask=mask: hope.attribute(
                    x, target=0, feature_mask=mask, return_diagnostics=True
                ),
                args.repeats,
            )
            steps = diagnostics.steps.float()
            if mask is not None:  # one entry per group, not per pixel
                groups = range(int(mask.max()) + 1)
                steps = torch.stack([steps[0, 0][mask[0, 0] == g][0] for g in groups])
            error = ((actual - expected).norm() / expected.norm()).item()
            cells.append(
                f"{error:.2g} | {hope_time * 1e3:.0f} | {hope_time / fa_time:.2f} | "
                f"{steps.mean():.2f} / {int(steps.max())}"
            )
        _continuation.TAYLOR_STEPS = 0
        exact_error = ((exact - expected).norm() / expected.norm()).item()
        rows.append(
            f"| {name} | {order} | {rtol:g} | {exact_error:.2g} | {'yes' if warned else 'no'} | "
            f"{fa_time * 1e3:.0f} | {cells[0]} | {cells[1]} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"Continuation vs FeatureAblation, {args.images} MNIST digit(s) (one random image for "
            f"the torchvision models), baseline 0, target 0, float64, "
            f"{torch.get_num_threads()} thread(s), median of {args.repeats}.",
            "",
            "| model | order | rtol | exact: rel. error | exact warns | FA ms | continuation: "
            "rel. error | ms | / FA | steps mean / max | Taylor steps: rel. error | ms | / FA | "
            "steps mean / max |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    _harness.save(
        args,
        "# Taylor continuation vs FeatureAblation\n\n"
        f"{_harness.revision()}; {_harness.versions()}.\n\n"
        "Generated by `OMP_NUM_THREADS=1 python -m benchmarks.continuation --out "
        "benchmarks/results/continuation.md` (errors: Frobenius norm of the map relative "
        "to FeatureAblation's). *continuation*: the default, each path the first series "
        "does not reach ends by one forward pass at its end (`steps` counts it as 1); "
        "*Taylor steps*: `hope_attr.attribution.continuation.TAYLOR_STEPS = 200`, "
        "the path integrated "
        "in Taylor steps up to any branch change (then the forward pass).\n\n" + table + "\n",
    )
    print(table)


if __name__ == "__main__":
    main()
