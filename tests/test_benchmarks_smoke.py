"""The benchmark scripts run end to end on a small budget (their numbers are not checked here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["benchmarks/derivatives.py", "benchmarks/paper_rule.py"])
def test_benchmark_quick_mode_runs(script: str, tmp_path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg", OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run(
        [sys.executable, script, "--quick", "--markdown", str(tmp_path / "out.md")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "out.md").read_text().strip()


@pytest.mark.slow
def test_mixed_benchmark_quick_mode_runs(tmp_path) -> None:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run(
        [sys.executable, "benchmarks/mixed.py", "--quick", "--markdown", str(tmp_path / "out.md")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = (tmp_path / "out.md").read_text()
    assert "float64 check" in report and "## Targets" in report


@pytest.mark.slow
def test_quantus_evaluation_tiny_run(tmp_path) -> None:
    pytest.importorskip("quantus")
    out = tmp_path / "quantus.md"
    command = ["benchmarks/attribution.py", "--quantus", "--tiny", "--markdown", str(out)]
    result = subprocess.run(
        [sys.executable, *command, "--cache", str(tmp_path / "cache")],
        cwd=ROOT,
        env=dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    page = out.read_text()
    assert "## tanh-cnn" in page and "## relu-cnn" in page and "| LRP |" in page
    for metric in ("FaithfulnessCorrelation ↑", "PixelFlipping ↓", "MPRT ↓", "Sparseness ↑"):
        assert metric in page
    assert "nan" not in page.lower()


def test_quantus_explain_function_takes_numpy_and_matches_the_harness() -> None:
    # Quantus passes numpy arrays (a trap: HOPEAttribution and Captum want tensors).
    import numpy as np
    import torch

    from benchmarks import attribution as harness
    from benchmarks import quantus_eval

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).eval()
    x, y = np.random.default_rng(0).random((2, 1, 4, 4), dtype=np.float32), np.array([0, 2])
    method = harness.hope_method(8)
    maps = quantus_eval.explain_function(method, harness.Budget.tiny())(model, x, y)
    assert isinstance(maps, np.ndarray) and maps.shape == x.shape
    reference = harness.attribute(
        harness.method_by_name("FeatureAblation"), model, torch.from_numpy(x), [0, 2]
    )
    np.testing.assert_allclose(maps, reference.numpy(), atol=1e-4)
    quantus_eval.ensure_trapz()
    assert np.trapz(np.ones(3), dx=0.5) == 1.0  # Quantus 0.6's call works on numpy >= 2.4


def test_default_environment_benchmark_times_every_method() -> None:
    """The child of benchmarks/default_env.py, in this process, one round, one thread."""
    from benchmarks import default_env

    times = default_env.child({"threads": 1, "repeats": 1, "methods": default_env.METHODS})
    assert set(times) == set(default_env.METHODS)
    assert all(seconds > 0 for seconds in times.values())


def test_large_images_benchmark_runs_its_quick_budget() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/large_images.py", "--quick", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| resnet18 | 4 | 10 |" in result.stdout and "| vit | 4 | 10 |" in result.stdout
