"""The benchmark scripts run end to end on a small budget (their numbers are not checked here);
the shared harness reads pages as written by hand; compare.py runs each tree with its own code."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
import textwrap
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


def test_large_images_benchmark_runs_its_quick_budget(tmp_path: Path) -> None:
    command = ["benchmarks/large_images.py", "--quick", "--repeats", "1"]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(tmp_path / "out.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| resnet18 | 4 | 10 |" in result.stdout and "| vit | 4 | 10 |" in result.stdout
    results = json.loads((tmp_path / "out.json").read_text())
    named = {(case["case"], case["measure"]): case["seconds"] for case in results["cases"]}
    for model in ("resnet18 | 4 | 10", "vit | 4 | 10"):
        assert named[model, "HOPE all classes"] > 0 and named[model, "HOPE one class"] > 0
    assert Path(results["environment"]["hope_attr_file"]).is_relative_to(ROOT)


# =============================================================================== the harness
def test_harness_examples_run() -> None:
    from benchmarks import _harness, _results

    assert doctest.testmod(_harness).failed == 0 and doctest.testmod(_results).failed == 0


PAGE = """# A benchmark

- load average (1 min) at the start: 0.10

## CNN: conv-tanh

| method | order | rel. error | median time | CPU time | time (s) | ms | ms |
|---|---|---|---|---|---|---|---|
| hope | 4 | 1.2e-07 | 12.5 ms | 25 ms | 0.25 | 3 | 4.5 |
| autograd | 4 | - | > 20 s (stopped) | - | - | - | - |
| FeatureAblation | - | 0.5 | 1.5 s | 900 us | - | - | - |

## Targets

| target | measured | verdict |
|---|---|---|
| hope >= 3x faster than the fastest (by wall: jacfwd(jacrev(f)); by CPU: x) | 3.2x | PASS |
| CNN: order 3 >= 300x faster (per feature) | 124x | FAIL |
| CNN: order 6 >= 25x faster | >= 20x | UNDECIDED (stopped baseline) |

- p = 14, order 8, method moebius: SV error 2.4e-06 (target <= 1e-3): **met**. More text
- p = 24, order 3, SV: error 7.2e-04 vs 7.0e-04 for the best run: **NOT more accurate**
- Memory check (CNN, order 10): peak RSS 69 MiB, limit 2048 MiB: FAIL
- p = 24, order 2, SV: error 2.5e-03; no approximator run finished in that time
"""


def test_results_from_markdown_reads_every_time_and_verdict() -> None:
    from benchmarks._results import results_from_markdown

    results = results_from_markdown(PAGE)
    cases = {(c["section"], c["case"], c["measure"]): c["seconds"] for c in results["cases"]}
    section = "CNN: conv-tanh"
    # Units from the cells or, for bare numbers, from the header; "ms" twice: the second "ms #2".
    # A row is named by its leading text and integer cells, up to the first measurement.
    assert cases == pytest.approx(
        {
            (section, "hope | 4", "median time"): 0.0125,
            (section, "hope | 4", "CPU time"): 0.025,
            (section, "hope | 4", "time (s)"): 0.25,
            (section, "hope | 4", "ms"): 0.003,
            (section, "hope | 4", "ms #2"): 0.0045,
            (section, "FeatureAblation | -", "median time"): 1.5,
            (section, "FeatureAblation | -", "CPU time"): 0.0009,
        }
    )
    assert results["targets"] == [
        {"target": "hope >= 3x faster than the fastest", "holds": True},
        {"target": "CNN: order 3 >= 300x faster (per feature)", "holds": False},
        {"target": "CNN: order 6 >= 25x faster", "holds": None},
        {"target": "p = 14, order 8, method moebius", "holds": True},
        {"target": "p = 24, order 3, SV", "holds": False},
        {"target": "Memory check (CNN, order 10)", "holds": False},
    ]


def test_committed_pages_give_every_case_a_distinct_name() -> None:
    # compare.py matches cases by name: two cases of one page under one name would be mixed up.
    from benchmarks._results import results_from_markdown

    for page in (ROOT / "benchmarks" / "results").glob("*.md"):
        cases = results_from_markdown(page.read_text())["cases"]
        names = [(c["section"], c["case"], c["measure"]) for c in cases]
        assert len(names) == len(set(names)), page.name


def test_quantus_evaluation_does_not_import_the_attribution_benchmark() -> None:
    code = "import sys, benchmarks.quantus_eval; print('benchmarks.attribution' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


# =============================================================================== compare.py
FAKE_BENCHMARK = """
import argparse, hope_attr
from pathlib import Path
{harness_import}

parser = {parser}
parser.add_argument("--trace", type=Path, required=True)
args = parser.parse_args()
with args.trace.open("a") as trace:  # which tree ran, in which order
    trace.write(hope_attr.__version__ + "\\n")
verdict = "PASS" if hope_attr.SECONDS < 0.03 else "FAIL"
page = (
    "# Fake\\n\\n| case | order | time |\\n|---|---|---|\\n"
    f"| a | 1 | {{hope_attr.SECONDS * 1e3}} ms |\\n\\n"
    f"## Targets\\n\\n- a is fast enough: {{verdict}}\\n"
)
{write}
"""


def fake_tree(root: Path, version: str, seconds: float, harness: bool) -> Path:
    """A source tree with a hope_attr whose benchmark ``fake`` takes ``seconds``; ``harness``:
    the script is built on benchmarks/_harness.py (writes --json), else it predates it."""
    (root / "hope_attr").mkdir(parents=True)
    (root / "hope_attr" / "__init__.py").write_text(
        f"__version__ = {version!r}\nSECONDS = {seconds}\n"
    )
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "__init__.py").write_text("")
    if harness:
        for module in ("_harness.py", "_results.py"):
            shutil.copy(ROOT / "benchmarks" / module, root / "benchmarks" / module)
        parts = {
            "harness_import": "from benchmarks import _harness",
            "parser": "_harness.parser('A fake benchmark.')",
            "write": "_harness.save(args, page)",
        }
    else:
        parts = {
            "harness_import": "",
            "parser": "argparse.ArgumentParser()\nparser.add_argument('--markdown', type=Path)",
            "write": "args.markdown.write_text(page)",
        }
    script = textwrap.dedent(FAKE_BENCHMARK).format(**parts)
    (root / "benchmarks" / "fake.py").write_text(script)
    return root


def compare(tmp_path: Path, old: Path, new: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "benchmarks/compare.py", "--old", str(old), "--new", str(new), "fake",
         *extra, "--", "--trace", str(tmp_path / "trace")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_compare_runs_each_tree_with_its_own_code_in_alternating_rounds(tmp_path: Path) -> None:
    old = fake_tree(tmp_path / "old", "old", 0.04, harness=False)  # a page only
    new = fake_tree(tmp_path / "new", "new", 0.01, harness=True)  # --json
    out = tmp_path / "comparison.json"
    result = compare(tmp_path, old, new, "--rounds", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "trace").read_text().split() == ["old", "new", "old", "new"]
    data = json.loads(out.read_text())
    assert data["cases"] == [
        {"section": "Fake", "case": "a | 1", "measure": "time", "old": [0.04, 0.04],
         "new": [0.01, 0.01]}
    ]  # fmt: skip
    target = {"target": "a is fast enough", "old": [False, False], "new": [True, True]}
    assert data["targets"] == [target]
    assert "| a \\| 1 | time | 40 ms | 10 ms | 0.25 |" in result.stdout
    assert f"hope_attr from {old.resolve() / 'hope_attr' / '__init__.py'}" in result.stdout


def test_compare_refuses_a_tree_whose_child_imports_another_hope_attr(tmp_path: Path) -> None:
    old = fake_tree(tmp_path / "old", "old", 0.04, harness=False)
    new = fake_tree(tmp_path / "new", "new", 0.01, harness=False)
    shutil.rmtree(new / "hope_attr")  # the child would fall back on the installed package
    result = compare(tmp_path, old, new)
    assert result.returncode != 0
    assert f"not from the tree {new.resolve()}" in result.stderr


@pytest.mark.slow
def test_compare_a_real_benchmark_with_itself(tmp_path: Path) -> None:
    out = tmp_path / "comparison.json"
    command = ["benchmarks/compare.py", "--old", ".", "--new", ".", "recenter_memory"]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(out), "--", "--variables", "2", "--order", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    cases = json.loads(out.read_text())["cases"]
    assert {case["case"].split(" | ")[0] for case in cases} == {
        "recenter", "terms_around_zero", "recenter_many",
    }  # fmt: skip
    assert all(len(case["old"]) == len(case["new"]) == 1 for case in cases)
