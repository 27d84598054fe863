"""Benchmark on a CUDA GPU: the derivative benchmark's models, and 224-pixel attribution.

Run on a machine with a GPU (``python benchmarks/gpu.py --markdown benchmarks/results/gpu.md``):

* the MNIST MLP and tanh CNN of ``benchmarks/derivatives.py`` (one digit, all 10 classes):
  ``hope_attr.unmixed_derivatives`` at orders 1, 4, 6 and 10, Captum ``FeatureAblation`` for one
  class (784 perturbations in one batch), nested ``torch.func.jvp`` at order 3; the time of one
  heat map is what the HOPE paper reports as 0.002 s on its GPU (Sec. 5, MNIST);
* the same for batches of 16 digits;
* resnet18 (random weights, realistic BatchNorm statistics) at 224 x 224 with 16 x 16
  superpixels (196 groups), ``HOPEAttribution`` order 4 for all 1000 classes against
  ``FeatureAblation`` for one class.

Every hope_attr result is checked against float64 on the CPU (column ``error``: the largest over
orders of the relative max-norm error). Times are medians of ``--repeats`` calls after a warm-up,
with ``torch.cuda.synchronize()`` around each call; ratios come from this one run.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hope_attr  # noqa: E402
from benchmarks import _harness  # noqa: E402
from benchmarks.derivatives import NUM_PIXELS, build_model, load_digit, model_input  # noqa: E402


def timed(call: Callable[[], object], repeats: int) -> float:
    """Median seconds after a warm-up (kernels, allocator), the device synchronized around each
    call."""
    return _harness.timed_median(call, repeats, synchronize=torch.cuda.synchronize)[0]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    worst = 0.0
    for a, e in zip(actual.double().cpu(), expected, strict=True):
        worst = max(worst, ((a - e).abs().max() / e.abs().max().clamp_min(1e-300)).item())
    return worst


def nested_jvp(model: torch.nn.Module, x: torch.Tensor, order: int) -> torch.Tensor:
    from torch.func import jvp, vmap

    def directional(k: int) -> Callable:
        if k == 0:
            return lambda y, v: model(y)
        inner = directional(k - 1)
        return lambda y, v: jvp(lambda z: inner(z, v), (y,), (v,))[1]

    eye = torch.eye(NUM_PIXELS, dtype=x.dtype, device=x.device).reshape(NUM_PIXELS, *x.shape)
    return vmap(lambda v: directional(order)(x, v))(eye)


def mnist_rows(repeats: int) -> list[list[str]]:
    from captum.attr import FeatureAblation

    pixels, _ = load_digit()
    rows = []
    for name in ("mlp", "cnn"):
        for batch in (1, 16):
            model = build_model(name, torch.float32).cuda()
            one = model_input(name, pixels, torch.float32)
            x = one.repeat(batch, *[1] * (one.dim() - 1)).cuda()
            reference_model = build_model(name, torch.float64)
            reference = hope_attr.unmixed_derivatives(reference_model, x[:1].double().cpu(), 10)
            ablation = timed(
                lambda model=model, x=x: FeatureAblation(model).attribute(
                    x, baselines=0, target=0, perturbations_per_eval=NUM_PIXELS
                ),
                repeats,
            )
            jvp3 = timed(lambda model=model, x=x: nested_jvp(model, x[:1], 3), 1) * batch
            for order in (1, 3, 4, 6, 10):
                seconds = timed(
                    lambda m=model, x=x, n=order: hope_attr.unmixed_derivatives(m, x, n), repeats
                )
                got = hope_attr.unmixed_derivatives(model, x[:1], order)
                error = relative_error(got, reference[:order])
                rows.append(
                    [name, str(batch), str(order), f"{seconds * 1e3:.2f}",
                     f"{seconds * 1e3 / batch:.3f}", f"{ablation / seconds:.2f}x",
                     f"{jvp3 / seconds:.0f}x" if order == 3 else "", f"{error:.1e}"]
                )  # fmt: skip
            rows.append(
                [name, str(batch), "FA", f"{ablation * 1e3:.2f}", f"{ablation * 1e3 / batch:.3f}",
                 "1 class", "", ""]
            )  # fmt: skip
            rows.append(
                [name, str(batch), "jvp 3", f"{jvp3 * 1e3:.2f}", f"{jvp3 * 1e3 / batch:.3f}",
                 "", "", ""]
            )  # fmt: skip
    return rows


def resnet_rows(repeats: int) -> list[list[str]]:
    import torchvision
    from captum.attr import FeatureAblation

    torch.manual_seed(0)
    model = torchvision.models.resnet18().cuda().train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 224, 224, device="cuda"))
    model.eval()
    x = torch.randn(1, 3, 224, 224, device="cuda")
    groups = torch.arange(196, device="cuda").reshape(14, 14)
    mask = groups.repeat_interleave(16, 0).repeat_interleave(16, 1).expand(1, 3, 224, 224)
    hope = hope_attr.HOPEAttribution(model, order=4)
    every_class = timed(lambda: hope.attribute_all_targets(x, feature_mask=mask), repeats)
    ablation = timed(
        lambda: FeatureAblation(model).attribute(
            x, target=0, feature_mask=mask, perturbations_per_eval=196
        ),
        repeats,
    )
    return [
        ["resnet18 224px, 196 superpixels", "HOPE order 4, all 1000 classes",
         f"{every_class * 1e3:.1f}", f"{ablation / every_class:.2f}x"],
        ["resnet18 224px, 196 superpixels", "FeatureAblation, 1 class",
         f"{ablation * 1e3:.1f}", ""],
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--no-tf32",
        action="store_true",
        help="full float32 convolutions (cuDNN uses TF32 by default)",
    )
    args = parser.parse_args(argv)
    torch.backends.cudnn.allow_tf32 = not args.no_tf32
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device")
    header = [
        f"# hope_attr on a GPU: {torch.cuda.get_device_name()}",
        "",
        f"{_harness.revision()}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"Python {platform.python_version()};"
        f" `python benchmarks/gpu.py --repeats {args.repeats}{' --no-tf32' * args.no_tf32}`;"
        f" float32, times are medians; cuDNN TF32 convolutions {'off' if args.no_tf32 else 'on'}"
        " (PyTorch's default: on).",
        "",
        "MNIST models of benchmarks/derivatives.py, all 10 classes (FA: Captum FeatureAblation, "
        "one class, 784 perturbations per batch; jvp 3: nested torch.func.jvp at order 3, "
        "vmapped over the 784 directions, run on one digit and scaled by the batch):",
        "",
    ]
    mnist = _harness.table(
        ["model", "batch", "order", "ms", "ms / digit", "vs FA", "vs jvp", "error vs CPU float64"],
        mnist_rows(args.repeats),
    )
    resnet = _harness.table(["model", "method", "ms", "vs FA"], resnet_rows(args.repeats))
    text = "\n".join(header) + "\n" + mnist + "\n\n" + resnet + "\n"
    print(text)
    _harness.save(args, text)


if __name__ == "__main__":
    main()
