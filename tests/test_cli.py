"""The command line, on a model given as module:factory with a state dict."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr import TaylorPolynomial
from hope_attr.cli import main


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
    with pytest.raises(SystemExit, match="trust-pickle"):
        main(["expand", str(pickled), "--point", "0,0"])
    main(["expand", str(pickled), "--trust-pickle", "--point", "0,0", "--order", "1"])


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
    main(["expand", path, "--point", point, "--order", str(order), "--json", str(out)])
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

    with pytest.raises(SystemExit, match="TorchScript 'Custom'.*--state-dict"):
        main(["expand", _save(Custom(), tmp_path / "custom.pt"), "--point", "0,0"])
    # A traced module keeps no settings: a Softplus beta of 2 would silently become 1, an
    # Unflatten's dim cannot be known. The CLI names the module and the fix.
    path = _save(
        _mlp(beta=2.0), tmp_path / "t.pt", trace_with=torch.zeros(1, 3, dtype=torch.float64)
    )
    with pytest.raises(SystemExit, match=r"model\[2\]\[1\].*Softplus.*torch.jit.script"):
        main(["expand", path, "--point", MLP_POINT, "--order", "1"])
    path = _save(_cnn(), tmp_path / "c.pt", trace_with=torch.zeros(1, 16, dtype=torch.float64))
    with pytest.raises(SystemExit, match=r"model\[0\].*Unflatten.*'dim'.*torch.jit.script"):
        main(["expand", path, "--point", CNN_POINT, "--order", "1"])


def test_torchscript_model_saved_in_training_mode_is_expanded_in_eval_mode(tmp_path) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 1)
    ).double()
    model(torch.randn(16, 2, dtype=torch.float64))  # running statistics away from 0 and 1
    path = _save(model.train(), tmp_path / "m.pt")
    out = tmp_path / "poly.json"
    main(["expand", path, "--point", "0.3,0.1", "--order", "3", "--json", str(out)])
    expected = hope_attr.expand(model.eval(), torch.tensor([0.3, 0.1], dtype=torch.float64), 3)
    torch.testing.assert_close(
        TaylorPolynomial.load(out).coefficients, expected.coefficients, rtol=0, atol=1e-12
    )
