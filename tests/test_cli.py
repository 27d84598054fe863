"""The command line, on a model given as module:factory with a state dict."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

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
