"""Benchmark: 224 x 224 images with 16 x 16 superpixels on a CPU (issue 14, target 3).

For torchvision's resnet18 (ReLU, BatchNorm with statistics from a few training-mode passes of
random data) and a ViT-tiny (torchvision ``VisionTransformer``: patch 16, 12 layers, 3 heads,
width 192, MLP 768; GELU, LayerNorm; its zero-initialized head randomized), random weights
(``torch.manual_seed(0)``), float32, one random image, 196 superpixels (the 14 x 14 grid of
16 x 16 patches over all 3 channels), baseline 0, in the default environment:

* ``HOPEAttribution(order=4).attribute_all_targets``: every class at once; its time per class
  is the call's time divided by the number of classes;
* ``HOPEAttribution(order=4).attribute`` for one class;
* Captum's ``FeatureAblation`` for one class, with 16 and with 49 perturbations per evaluation
  (the faster of the two is the reference);
* per pixel (resnet18 only, 150528 features): ``attribute(x, target=0)`` and
  ``attribute_all_targets(x)`` without a mask, timed once each (resnet18 is piecewise linear,
  so both come from reverse mode, :mod:`hope_attr.engine.reverse`: one backward pass per class).

Times are medians of ``--repeats`` calls after a warm-up, methods interleaved per round; ratios
come from this one run. resnet18 is piecewise linear: every order >= 2 is zero there, and the
``PiecewiseLinearWarning`` is silenced in this script.

Run from the repository root::

    python benchmarks/large_images.py --markdown benchmarks/results/large_images.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hope_attr  # noqa: E402
from benchmarks import _harness  # noqa: E402
from hope_attr import HOPEAttribution  # noqa: E402

ORDER = 4


def build(name: str, size: int, classes: int) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    if name == "resnet18":
        model = torchvision.models.resnet18(num_classes=classes).train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(8, 3, size, size))
        return model.eval()
    model = torchvision.models.VisionTransformer(
        image_size=size, patch_size=16, num_layers=12 if size == 224 else 2, num_heads=3,
        hidden_dim=192, mlp_dim=768, num_classes=classes,
    )  # fmt: skip
    for parameter in model.heads.parameters():  # torchvision starts the head at zero
        nn.init.normal_(parameter, std=0.02)
    return model.eval()


def superpixels(size: int) -> torch.Tensor:
    cells = size // 16
    grid = torch.arange(cells * cells).reshape(cells, cells)
    return grid.repeat_interleave(16, 0).repeat_interleave(16, 1).expand(1, 3, size, size)


def per_pixel(hope: HOPEAttribution, x: torch.Tensor) -> dict[str, float]:
    """Seconds for the per-pixel maps (every input value a feature): one class, every class;
    and the process's peak resident memory after the second (Linux: ``ru_maxrss`` in KiB)."""
    import resource

    times = {}
    start = time.perf_counter()
    hope.attribute(x, target=0)
    times["pixel_one"] = time.perf_counter() - start
    start = time.perf_counter()
    maps = hope.attribute_all_targets(x)
    times["pixel_all"] = time.perf_counter() - start
    times["pixel_all_gib"] = maps.numel() * maps.element_size() / 2**30
    times["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return times


def measure(name: str, size: int, classes: int, repeats: int, pixels: bool) -> dict:
    from captum.attr import FeatureAblation

    model = build(name, size, classes)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    mask = superpixels(size)
    hope = HOPEAttribution(model, order=ORDER)
    groups = int(mask.max()) + 1
    calls = {
        "hope_all": lambda: hope.attribute_all_targets(x, feature_mask=mask),
        "hope_one": lambda: hope.attribute(x, target=0, feature_mask=mask),
        "fa_16": lambda: FeatureAblation(model).attribute(
            x, target=0, feature_mask=mask, perturbations_per_eval=16
        ),
        "fa_49": lambda: FeatureAblation(model).attribute(
            x, target=0, feature_mask=mask, perturbations_per_eval=49
        ),
    }
    rounds = _harness.interleaved_rounds(calls, repeats)
    times = {name: statistics.median(values) for name, values in rounds.items()}
    result = {"model": name, "groups": groups, "classes": classes, **times}
    if pixels and name == "resnet18":
        result.update(per_pixel(hope, x))
    return result


def report(rows: list[dict], args: argparse.Namespace, session: _harness.Run) -> str:
    lines = [
        "# 224 x 224 images with superpixels on a CPU",
        "",
        f"- command: `python benchmarks/large_images.py{' --quick' if args.quick else ''}"
        f"{f' --markdown {args.markdown}' if args.markdown else ''}`",
        f"- {_harness.revision()}; {_harness.versions()}; environment: {_harness.variables()}",
        f"- order {ORDER}, float32, one random image, baseline 0, 16 x 16 superpixels over all "
        f"channels; medians of {args.repeats} interleaved rounds after a warm-up",
        f"- {session.load_line()}",
        "",
    ]
    cells = []
    for row in rows:
        fa = min(row["fa_16"], row["fa_49"])
        cells.append(
            [row["model"], str(row["groups"]), str(row["classes"]), f"{row['hope_all']:.2f} s",
             f"{row['hope_all'] / row['classes'] * 1e3:.1f} ms", f"{row['hope_one']:.2f} s",
             f"{row['fa_16']:.2f} s / {row['fa_49']:.2f} s", f"{row['hope_one'] / fa:.2f}",
             f"{row['hope_all'] / fa:.2f}"]
        )  # fmt: skip
    header = ["model", "groups", "classes", "HOPE all classes", "per class", "HOPE one class"]
    header += ["FeatureAblation one class (16 / 49 per eval)", "HOPE one class / FA"]
    lines.append(_harness.table([*header, "HOPE all classes / FA"], cells))
    lines += [
        "",
        "Ratios are times divided by the faster FeatureAblation setting: below 1, HOPE took less "
        "time. `HOPE all classes` returns a map per class (1000 x 3 x 224 x 224 values: writing "
        "them is part of its time).",
    ]
    for row in rows:
        if "pixel_one" in row:
            fa = min(row["fa_16"], row["fa_49"])
            per_evaluation = fa / row["groups"]
            features = 3 * 224 * 224 if row["classes"] == 1000 else None
            lines += [
                "",
                f"Per pixel ({row['model']}, every input value a feature, measured once each): "
                f"one class {row['pixel_one']:.2f} s (`attribute(x, target=0)`), all "
                f"{row['classes']} classes {row['pixel_all']:.1f} s "
                f"(`attribute_all_targets(x)`, {row['pixel_all_gib']:.2f} GiB of maps; the "
                f"process's peak resident memory after it: {row['peak_gib']:.2f} GiB). The "
                "network is piecewise linear, so the expansion is its Jacobian and comes from "
                "one backward pass per class (`hope_attr.engine.reverse`).",
            ]
            if features:
                lines[-1] += (
                    f" FeatureAblation was not run per pixel: at its {per_evaluation * 1e3:.0f} "
                    f"ms per perturbation above, {features} perturbations would take about "
                    f"{features * per_evaluation / 60:.0f} min (an estimate)."
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = _harness.parser(__doc__, quick="32 px, tiny ViT: a smoke test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-pixels", action="store_true", help="skip the per-pixel maps")
    args = parser.parse_args()
    warnings.simplefilter("ignore", hope_attr.PiecewiseLinearWarning)
    session = _harness.Run()
    size, classes = (32, 10) if args.quick else (224, 1000)
    pixels = not args.no_pixels
    rows = [measure(name, size, classes, args.repeats, pixels) for name in ("resnet18", "vit")]
    text = report(rows, args, session)
    print(text)
    _harness.save(args, text)


if __name__ == "__main__":
    main()
