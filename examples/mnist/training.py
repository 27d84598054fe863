"""The tutorial's models: the paper's Tanh/AvgPool CNN, a ReLU/MaxPool variant, and a small MLP.

Training is plain Adam on cross-entropy with a fixed seed. Trained weights are cached as a
``state_dict`` under a file name made of the architecture and a hash of everything that
determines them (data, split, epochs, learning rate, batch size, seed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


def paper_cnn() -> nn.Sequential:
    """The HOPE paper's kind of MNIST classifier: smooth activations, average pooling."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 64),
        nn.Tanh(),
        nn.Linear(64, 10),
    )


def relu_cnn() -> nn.Sequential:
    """The same layout with ReLU and max pooling (piecewise linear: LRP applies)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def small_mlp(num_inputs: int, hidden: int = 64, classes: int = 10) -> nn.Sequential:
    """The model retrained on the selected pixels only (their values, flattened)."""
    return nn.Sequential(nn.Linear(num_inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes))


ARCHITECTURES: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "tanh-cnn": (
        "Conv(1,8,5)-Tanh-AvgPool(2)-Conv(8,16,5)-Tanh-AvgPool(2)-Linear(256,64)-Tanh-Linear(64,10)",
        paper_cnn,
    ),
    "relu-cnn": (
        "Conv(1,8,5)-ReLU-MaxPool(2)-Conv(8,16,5)-ReLU-MaxPool(2)-Linear(256,64)-ReLU-Linear(64,10)",
        relu_cnn,
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (the cache key)."""

    architecture: str
    data: str
    num_train: int
    epochs: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0

    def key(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{self.architecture}-{digest[:12]}"


def train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    description: str = "training",
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place with Adam on cross-entropy; returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    bar = tqdm(range(epochs), desc=description, leave=False, disable=not progress)
    for _ in bar:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Share of ``images`` classified as their ``labels``."""
    with torch.no_grad():
        return (model(images).argmax(-1) == labels).double().mean().item()


def trained_model(
    config: TrainConfig, images: Tensor, labels: Tensor, cache: Path
) -> tuple[nn.Module, bool]:
    """The model of ``config``, from ``cache`` if present, else trained and saved there.

    Returns:
        ``(model, loaded)``: the model in eval mode and whether it came from the cache.
    """
    _, build = ARCHITECTURES[config.architecture]
    torch.manual_seed(config.seed)
    model = build()
    path = cache / f"{config.key()}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), True
    train(
        model,
        images,
        labels,
        config.epochs,
        config.batch_size,
        config.learning_rate,
        config.seed,
        description=f"training {config.architecture}",
    )
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model, False
