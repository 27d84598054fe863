"""The command line: models given as module:factory with a state dict, TorchScript files and
pickles (code, behind --trust-code), and one clean error line for every mistake in the arguments."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr import TaylorPolynomial
from hope_attr.cli import main

ROOT = Path(__file__).parents[1]  # the checkout under test, for subprocesses


def _error(argv: list[str]) -> str:
    """The message of the one ``error:`` line ``main(argv)`` ends with (exit status 2)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2, err.getvalue()
    lines = err.getvalue().splitlines()
    assert "Traceback" not in err.getvalue()
    # argparse's own errors come after its usage lines; ours are the only line.
    assert lines[-1].startswith(f"hope-attr {argv[0]}: error: "), lines
    return lines[-1].split(": error: ", 1)[1]


class Quadratic(nn.Module):
    """``y = 0.5 x1^2 + 0.5 x2``: the paper's function-discovery example, exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x[:, :1] ** 2 + 0.5 * x[:, 1:2]


def test_expand_prints_terms_latex_and_saves(tmp_path, capsys) -> None:
    out = tmp_path / "poly.json"
    main(
        [
            "expand",
            "tests.test_cli:Quadratic",
            "--point",
            "0,0",
            "--order",
            "3",
            "--latex",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "+0.5  x2" in printed and "+0.5  x1^2" in printed
    assert "x_{1}^{2}" in printed
    assert json.loads(out.read_text())["format"].startswith("hope_attr.TaylorPolynomial")


def test_discover_reports_mean_and_spread(capsys) -> None:
    main(
        [
            "discover",
            "tests.test_cli:Quadratic",
            "--point",
            "0.5,0.5",
            "--radius",
            "0.5",
            "--num",
            "5",
            "--order",
            "2",
            "--around-zero",
        ]
    )
    rows = {row["term"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows.keys() == {"x1^2", "x2"}
    assert abs(rows["x1^2"]["mean"] - 0.5) < 1e-9 and rows["x2"]["spread"] < 1e-9


def test_state_dict_is_loaded_and_pickles_need_consent(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    main(
        [
            "expand",
            "tests.test_cli:_linear",
            "--state-dict",
            str(weights),
            "--point",
            "0,0",
            "--order",
            "1",
            "--threshold",
            "0",
        ]
    )
    printed = dict(line.split()[::-1] for line in capsys.readouterr().out.splitlines())
    assert abs(float(printed["x1"]) - model.weight[0, 0].item()) < 1e-6
    assert abs(float(printed["1"]) - model.bias[0].item()) < 1e-6
    pickled = tmp_path / "model.pt"
    torch.save(model, pickled)
    assert "--trust-code if you trust" in _error(["expand", str(pickled), "--point", "0,0"])
    capsys.readouterr()
    for flag in ("--trust-code", "--trust-pickle"):  # the old name still works
        main(["expand", str(pickled), flag, "--point", "0,0", "--order", "1", "--threshold", "0"])
        printed = dict(line.split()[::-1] for line in capsys.readouterr().out.splitlines())
        assert abs(float(printed["x2"]) - model.weight[0, 1].item()) < 1e-6


def _linear() -> nn.Module:
    return nn.Linear(2, 1)


# ----------------------------------------------------------------------------- TorchScript files
def _mlp(beta: float = 2.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 8),
        nn.Tanh(),
        nn.Sequential(nn.Linear(8, 4), nn.Softplus(beta=beta)),
        nn.Linear(4, 2),
    ).double()


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Unflatten(1, (1, 4, 4)),
        nn.Conv2d(1, 2, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(2, 2),
        nn.Sigmoid(),
    ).double()


def _save(model: nn.Module, path, trace_with: torch.Tensor | None = None) -> str:
    """``torch.jit.script`` (``trace_with=None``) or ``torch.jit.trace`` the model into ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.10+
        if trace_with is None:
            torch.jit.script(model).save(str(path))
        else:
            torch.jit.trace(model, trace_with).save(str(path))
    return str(path)


MLP_POINT, CNN_POINT = "0.1,-0.2,0.3", ",".join(["0.2"] * 16)


@pytest.mark.parametrize(
    ("model", "point", "order", "trace"),
    [
        (_mlp(beta=2.0), MLP_POINT, 4, False),  # scripted: module settings are kept
        (_mlp(beta=1.0), MLP_POINT, 4, True),  # traced with default settings only
        (_cnn(), CNN_POINT, 2, False),
    ],
)
def test_torchscript_model_expands_like_the_eager_one(model, point, order, trace, tmp_path) -> None:
    x0 = torch.tensor([float(v) for v in point.split(",")], dtype=torch.float64)
    path = _save(model, tmp_path / "m.pt", trace_with=x0[None] if trace else None)
    out = tmp_path / "poly.json"
    main(
        [
            "expand",
            path,
            "--trust-code",
            "--point",
            point,
            "--order",
            str(order),
            "--json",
            str(out),
        ]
    )
    loaded = TaylorPolynomial.load(out)
    expected = hope_attr.expand(model, x0, order)
    torch.testing.assert_close(loaded.exponents, expected.exponents)
    torch.testing.assert_close(loaded.coefficients, expected.coefficients, rtol=0, atol=1e-12)


def test_torchscript_models_that_cannot_be_rebuilt_are_refused_with_the_fix(tmp_path) -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.linear(x)) * 2

    path = _save(Custom(), tmp_path / "custom.pt")
    assert re.search(
        "TorchScript 'Custom'.*--state-dict",
        _error(["expand", path, "--trust-code", "--point", "0,0"]),
    )
    # A traced module keeps no settings: a Softplus beta of 2 would silently become 1, an
    # Unflatten's dim cannot be known. The CLI names the module and the fix.
    path = _save(
        _mlp(beta=2.0), tmp_path / "t.pt", trace_with=torch.zeros(1, 3, dtype=torch.float64)
    )
    message = _error(["expand", path, "--trust-code", "--point", MLP_POINT, "--order", "1"])
    assert re.search(r"model\[2\]\[1\].*Softplus.*torch.jit.script", message)
    path = _save(_cnn(), tmp_path / "c.pt", trace_with=torch.zeros(1, 16, dtype=torch.float64))
    message = _error(["expand", path, "--trust-code", "--point", CNN_POINT, "--order", "1"])
    assert re.search(r"model\[0\].*Unflatten.*'dim'.*torch.jit.script", message)


def test_torchscript_model_saved_in_training_mode_is_expanded_in_eval_mode(tmp_path) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 1)
    ).double()
    model(torch.randn(16, 2, dtype=torch.float64))  # running statistics away from 0 and 1
    path = _save(model.train(), tmp_path / "m.pt")
    out = tmp_path / "poly.json"
    main(["expand", path, "--trust-code", "--point", "0.3,0.1", "--order", "3", "--json", str(out)])
    expected = hope_attr.expand(model.eval(), torch.tensor([0.3, 0.1], dtype=torch.float64), 3)
    torch.testing.assert_close(
        TaylorPolynomial.load(out).coefficients, expected.coefficients, rtol=0, atol=1e-12
    )


# --------------------------------------------------------------- files that run code (issue 12)
def _hostile_tanh(marker: Path) -> type[nn.Module]:
    """A TorchScript module named ``Tanh`` (so it passes for ``nn.Tanh``) that creates a file
    when it is loaded (``__setstate__``) and when it runs (``forward``)."""

    class Tanh(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.marker = str(marker)
            self.touched = torch.zeros(1)

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.marker, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.marker, self.training = state[0], state[1]
            # torch.from_file(shared=True) creates the file: a stand-in for any side effect.
            self.touched = torch.from_file(self.marker + ".load", shared=True, size=1).fill_(1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.touched = torch.from_file(self.marker + ".run", shared=True, size=1).fill_(1.0)
            return torch.tanh(x)

    return Tanh


def test_torchscript_runs_only_with_the_trust_flag(tmp_path, capsys) -> None:
    marker = tmp_path / "ran"
    model = nn.Sequential(nn.Linear(2, 3), _hostile_tanh(marker)(), nn.Linear(3, 1)).double()
    path = _save(model, tmp_path / "hostile.pt")
    message = _error(["expand", path, "--point", "0,0"])
    assert "TorchScript is code" in message and "--trust-code" in message
    assert not list(tmp_path.glob("ran*")), "the file's code ran without --trust-code"
    # The same file with the flag: its code does run (so the refusal above is what stopped it),
    # and the network is expanded as the eager one.
    main(["expand", path, "--trust-pickle", "--point", "0,0", "--order", "2", "--threshold", "0"])
    assert {p.name for p in tmp_path.glob("ran*")} == {"ran.load", "ran.run"}
    assert "x1^2" in capsys.readouterr().out


def test_state_dict_given_as_the_model_is_answered_with_the_fix(tmp_path) -> None:
    weights = tmp_path / "w.pt"
    torch.save(nn.Linear(2, 1).state_dict(), weights)
    for flags in ([], ["--trust-code"]):  # the flag must not turn it into an AttributeError
        message = _error(["expand", str(weights), *flags, "--point", "0,0"])
        assert "state dict" in message and f"--state-dict {weights}" in message


def test_the_error_line_of_a_real_run_has_no_traceback(tmp_path) -> None:
    weights = tmp_path / "w.pt"
    torch.save(nn.Linear(2, 1).state_dict(), weights)
    done = subprocess.run(
        [sys.executable, "-m", "hope_attr.cli", "expand", str(weights), "--point", "0,0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("hope-attr expand: error: ") and done.stderr.count("\n") == 1


def _grid() -> nn.Module:
    """Outputs shaped (2, 3): ``--output`` counts over the flattened entries."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(2, 6), nn.Unflatten(1, (2, 3)))


def _pickled(tmp_path) -> str:
    path = tmp_path / "model.pt"
    torch.save(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)), path)
    return str(path)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--point", "0,0,0"], r"\(1, 3\) input \(RuntimeError: mat1 and mat2.*one number per"),
        (["--point", "0,0", "--output", "5"], r"--output 5 is out of range.*2 outputs.*0 to 1"),
        (["--point", "0,0", "--names", "a"], r"1 names for the 2 numbers.*--names x1,x2"),
        (["--point", "0,0", "--names", "a,a"], r"--names must be distinct"),
        (["--point", "0,0", "--names", "a,"], r"non-empty"),
        (["--point", "nan,0"], r"argument --point: --point must be finite numbers, got nan,0"),
        (["--point", "0,inf"], r"--point must be finite"),
        (["--point", "0,x"], r"--point must be numbers like 0,0.5"),
        (["--point", "0,0", "--order", "0"], r"argument --order: expected an integer >= 1"),
        (["--point", "0,0", "--output", "-1"], r"argument --output: expected an integer >= 0"),
        (["--point", "0,0", "--threshold", "nan"], r"argument --threshold: expected a number"),
        (["--point", "0,0", "--json", "/no/such/dir/p.json"], r"folder /no/such/dir does not"),
    ],
)
def test_argument_mistakes_end_in_one_error_line(argv, expected, tmp_path) -> None:
    assert re.search(expected, _error(["expand", _pickled(tmp_path), "--trust-code", *argv]))


@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        ("no_such_module_xyz:Net", [], r"cannot import 'no_such_module_xyz'.*current directory"),
        ("torch.nn:NoSuchNet", [], r"'torch.nn' has no function or class 'NoSuchNet'"),
        ("torch.nn:Linear", [], r"Linear\(\) failed.*no arguments"),
        ("tests.test_cli:_not_a_module", [], r"returned a str, not an nn.Module"),
        ("missing.pt", [], r"'missing.pt' is no file, nor package.module:factory"),
        ("tests/test_cli.py", [], r"not a file torch.save or torch.jit.save wrote"),
        ("tests.test_cli:_linear", ["--state-dict", "tests/test_cli.py"], r"not a file torch."),
        ("tests.test_cli:_linear", ["--state-dict", "GRID_WEIGHTS"], r"do not fit.*Missing key"),
        ("tests.test_cli:_linear", ["--state-dict", "PICKLE"], r"more than tensors.*runs code"),
    ],
)
def test_model_mistakes_end_in_one_error_line(model, extra, expected, tmp_path) -> None:
    grid_weights = tmp_path / "grid.pt"
    torch.save(_grid().state_dict(), grid_weights)
    files = {"GRID_WEIGHTS": str(grid_weights), "PICKLE": _pickled(tmp_path)}
    extra = [files.get(arg, arg) for arg in extra]
    assert re.search(expected, _error(["expand", model, *extra, "--point", "0,0"]))


def _not_a_module() -> str:
    return "model"


def test_output_counts_over_flattened_outputs(capsys) -> None:
    main(["expand", "tests.test_cli:_grid", "--point", "0,0", "--order", "1", "--output", "4"])
    printed = dict(line.split()[::-1] for line in capsys.readouterr().out.splitlines())
    linear = _grid()[0]  # entry (1, 1) of the (2, 3) output is row 4 of the weights
    expected = {"x1": linear.weight[4, 0], "x2": linear.weight[4, 1], "1": linear.bias[4]}
    assert printed.keys() == {k for k, v in expected.items() if abs(v) > 1e-3}
    for key in printed:
        assert abs(float(printed[key]) - expected[key].item()) < 1e-6
    assert re.search(
        r"6 outputs.*shape \(2, 3\)",
        _error(["expand", "tests.test_cli:_grid", "--point", "0,0", "--output", "6"]),
    )


def test_library_refusals_end_in_one_error_line(monkeypatch) -> None:
    """A refusal from the library (an absurd --order, say) is shown as it is, without a traceback;
    an unexpected exception keeps its traceback (a defect must stay visible)."""

    def refuse(*args, **kwargs):
        raise ValueError("order 10**6 needs 3 TB;\nchoose a lower --order")

    monkeypatch.setattr(hope_attr.polynomial, "expand", refuse)
    message = _error(["expand", "torch.nn:Tanh", "--point", "0", "--order", "1000000"])
    assert message == "order 10**6 needs 3 TB; choose a lower --order"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hope_attr.polynomial, "expand", interrupted)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["expand", "torch.nn:Tanh", "--point", "0"])
    assert exit_.value.code == 130 and err.getvalue() == "hope-attr expand: interrupted\n"

    def defect(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(hope_attr.polynomial, "expand", defect)
    with pytest.raises(KeyError, match="a bug"):
        main(["expand", "torch.nn:Tanh", "--point", "0"])


# ------------------------------------------------------------------------------- --help is fast
_HELP_WITHOUT_PACKAGE = """
import sys, types
# hope_attr/__init__.py imports torch (the lead's file); load the CLI module on its own to check
# that what it owns imports no torch before answering --help.
package = types.ModuleType("hope_attr")
package.__path__ = [sys.argv[1]]
sys.modules["hope_attr"] = package
import hope_attr.cli
try:
    hope_attr.cli.main(["expand", "--help"])
except SystemExit as exit_:
    assert exit_.code == 0
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_help_is_answered_before_torch_is_imported() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HELP_WITHOUT_PACKAGE, str(ROOT / "hope_attr")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: hope-attr expand" in done.stdout and done.stdout.endswith("[]\n")


def test_help_of_the_installed_module_does_not_import_torch() -> None:
    code = (
        "import runpy, sys; sys.argv = ['hope-attr', '--help']\n"
        "try:\n    runpy.run_module('hope_attr.cli', run_name='__main__')\n"
        "except SystemExit as exit_:\n    assert exit_.code == 0\n"
        "assert 'torch' not in sys.modules, 'hope-attr --help imported torch'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "usage: hope-attr" in done.stdout
