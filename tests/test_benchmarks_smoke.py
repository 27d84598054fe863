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
