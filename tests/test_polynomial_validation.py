"""Malformed files and arguments get a ValueError/TypeError that says what is wrong, at once."""

from __future__ import annotations

import json
import time

import pytest
import torch

import hope_attr
from hope_attr import TaylorPolynomial

VALID = {
    "format": "hope_attr.TaylorPolynomial/1",
    "names": ["x1", "x2"],
    "center": [0.5, -1.0],
    "exponents": [[0, 0], [1, 0], [0, 2]],
    "output_shape": [2],
    "coefficients": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
}


def with_field(key: str, value: object) -> str:
    payload = dict(VALID)
    if value is _DROP:
        del payload[key]
    else:
        payload[key] = value
    return json.dumps(payload)


_DROP = object()

# (file text, what the message must say)
MALFORMED = [
    ("", "not JSON"),
    ("{not json", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),  # deep recursion
    (b"\xff\xfe\x00garbage".decode("latin-1"), "not JSON"),
    ("[1, 2, 3]", "not a saved TaylorPolynomial"),
    ('"a string"', "not a saved TaylorPolynomial"),
    (with_field("format", "hope_attr.TaylorPolynomial/0"), "not a saved TaylorPolynomial"),
    (with_field("exponents", _DROP), "missing exponents"),
    (with_field("coefficients", _DROP), "missing coefficients"),
    (with_field("names", {"x1": 1}), "names must be a list"),
    (with_field("names", ["x1", 2]), "names must be a list of non-empty strings"),
    (with_field("names", ["x1", "x1"]), "2 distinct strings"),
    (with_field("names", ["x1"]), "2 distinct strings"),
    (with_field("center", "0.5"), "center must be a list"),
    (with_field("center", [0.5, [1.0, [2.0]]]), "center must hold numbers"),
    (with_field("center", [0.5, float("nan")]), "center must hold finite numbers"),
    (with_field("center", [0.5, 10**400]), "center must hold finite numbers"),
    (with_field("center", [0.5, True]), "center must hold numbers"),
    (with_field("center", []), "center must be a non-empty list of numbers, one per variable"),
    (with_field("exponents", []), "non-empty list of rows"),
    (with_field("exponents", [[0, 0], [1], [0, 2]]), "list 2 integers"),
    (with_field("exponents", [[0, 0], [1, 0], [0, 10**7]]), "integers from 0 to 1000"),
    (with_field("exponents", [[0, 0], [1, 0], [0, 10**300]]), "integers from 0 to 1000"),
    (with_field("exponents", [[0, 0], [-1, 0], [0, 2]]), "integers from 0 to 1000"),
    (with_field("exponents", [[0, 0], [1.5, 0], [0, 2]]), "integers from 0 to 1000"),
    (with_field("exponents", [[0, 0], [1.0, 0], [0, 2]]), "integers from 0 to 1000"),
    (with_field("exponents", [[0, 0], [600, 0], [501, 500]]), "degree is above the limit"),
    (with_field("exponents", [[0, 0], [1, 0], [1, 0]]), "appears more than once"),
    (with_field("exponents", [[0, 0], [1, 0], {"a": 1}]), "list 2 integers"),
    (with_field("output_shape", [-2]), "output_shape must be a list of positive integers"),
    (with_field("output_shape", "2"), "output_shape must be a list of positive integers"),
    (with_field("output_shape", [3]), "list of length 3 of numbers"),
    (with_field("coefficients", [[1.0, 2.0], [3.0, 4.0]]), "one row per monomial"),
    (with_field("coefficients", [[1.0, 2.0], [3.0, "4"], [5.0, 6.0]]), "must hold numbers"),
    (with_field("coefficients", [[1.0, 2.0], [3.0, None], [5.0, 6.0]]), "must hold numbers"),
    (
        with_field("coefficients", [[1.0, 2.0], [3.0, float("inf")], [5.0, 6.0]]),
        "must hold finite numbers",
    ),
    (with_field("coefficients", [[1.0, 2.0], [3.0, [4.0]], [5.0, 6.0]]), "must hold numbers"),
]


def test_the_valid_file_loads(tmp_path) -> None:
    path = tmp_path / "valid.json"
    path.write_text(json.dumps(VALID))
    poly = TaylorPolynomial.load(path)
    x = torch.tensor([[1.5, 0.0]], dtype=torch.float64)
    # 1 + 3 (x1 - 0.5) + 5 (x2 + 1)^2, and 2 + 4 (x1 - 0.5) + 6 (x2 + 1)^2
    torch.testing.assert_close(poly(x), torch.tensor([[9.0, 12.0]], dtype=torch.float64))


@pytest.mark.parametrize(("text", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_files_are_refused_with_the_reason(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="latin-1" if "\xff" in text else "utf-8")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as raised:
        TaylorPolynomial.load(path)
    assert time.perf_counter() - start < 0.5
    assert str(path) in str(raised.value)
    assert len(str(raised.value)) < 400  # nested garbage is abbreviated, not echoed


@pytest.mark.parametrize("rows", [[[]], [[], []]])
def test_a_file_without_variables_is_refused_with_the_field_to_fix(tmp_path, rows) -> None:
    # Issue 30: "center": [] with rows of no exponents passed every check, then torch's max()
    # of an empty tensor raised a RuntimeError about reduction dims.
    payload = dict(VALID, names=[], center=[], exponents=rows, output_shape=[1])
    payload["coefficients"] = [[1.0] for _ in rows]
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"center must be a non-empty list of numbers") as raised:
        TaylorPolynomial.load(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda: TaylorPolynomial(
            torch.zeros(0), torch.zeros(1, 0, dtype=torch.long), torch.ones(1)
        ),
        lambda: hope_attr.expand(torch.sin, torch.zeros(0), 2),
        lambda: hope_attr.discover(torch.sin, [], 1.0, num_points=2, order=2),
    ],
    ids=["constructor", "expand", "discover"],
)
def test_a_point_without_variables_is_refused(call) -> None:
    with pytest.raises(ValueError, match="must hold at least one number, one per variable"):
        call()


def test_save_refuses_non_finite_coefficients(tmp_path) -> None:
    poly = TaylorPolynomial(torch.zeros(1), torch.tensor([[0], [1]]), torch.tensor([1.0, 0.0]))
    poly.coefficients[1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        poly.save(tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


def test_the_polynomial_owns_copies_of_its_tensors() -> None:
    center = torch.tensor([0.5, -1.0], dtype=torch.float64)
    exponents = torch.tensor([[0, 0], [1, 0], [0, 2]])
    coefficients = torch.tensor([[1.0], [3.0], [5.0]], dtype=torch.float64)
    poly = TaylorPolynomial(center, exponents, coefficients)
    x = torch.tensor([[1.5, 0.0]], dtype=torch.float64)
    before = poly(x).clone()
    center += 10.0
    exponents[1, 0] = 3
    coefficients *= 7.0
    torch.testing.assert_close(poly(x), before, rtol=0, atol=0)
    torch.testing.assert_close(poly.recenter([0.0, 0.0])(x), before, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (([0.0], torch.tensor([[1]]), torch.ones(1)), TypeError, "center must be a torch.Tensor"),
        ((torch.zeros(1), torch.tensor([[1.0]]), torch.ones(1)), TypeError, "integer tensor"),
        ((torch.zeros(1), torch.tensor([[-1]]), torch.ones(1)), ValueError, "non-negative"),
        ((torch.zeros(2), torch.tensor([[1]]), torch.ones(1)), ValueError, r"\(M, 2\)"),
        ((torch.zeros(1), torch.tensor([[1]]), torch.ones(2)), ValueError, "one row per monomial"),
        (
            (torch.zeros(1), torch.tensor([[1]]), torch.ones(1, dtype=torch.long)),
            TypeError,
            "float",
        ),
        ((torch.tensor([float("nan")]), torch.tensor([[1]]), torch.ones(1)), ValueError, "finite"),
        ((torch.zeros(1), torch.tensor([[10**7]]), torch.ones(1)), ValueError, "degree"),
        ((torch.zeros(1), torch.tensor([[1], [1]]), torch.ones(2)), ValueError, "more than once"),
    ],
)
def test_constructor_refuses_bad_tensors(arguments, error: type, message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(error, match=message):
        TaylorPolynomial(*arguments)
    assert time.perf_counter() - start < 0.5


def test_bad_points_and_outputs_are_refused() -> None:
    poly = TaylorPolynomial(
        torch.zeros(2, dtype=torch.float64), torch.tensor([[0, 0], [1, 1]]), torch.ones(2, 3)
    )
    with pytest.raises(ValueError, match=r"tensor of points \(N, 2\)"):
        poly(torch.zeros(2))
    with pytest.raises(ValueError, match=r"new_center must be one point of shape \(2,\)"):
        poly.recenter([0.0])
    with pytest.raises(ValueError, match="new_center must be finite"):
        poly.recenter([0.0, float("inf")])
    with pytest.raises(TypeError, match="new_center must be a tensor or a sequence"):
        poly.recenter("origin")
    for bound in (poly.bounds, poly.remainder_bound):  # refused before any expansion
        with pytest.raises(ValueError, match=r"tensor of points \(N, 2\)"):
            bound(torch.zeros(2), radius=1.0, forward_func=torch.sin)
    for output in (3, -4, (0, 0), 1.0, True):
        with pytest.raises(ValueError, match=r"within the output shape \(3,\)"):
            poly.terms(output=output)
    assert poly.terms(output=-1) == [(1.0, "1"), (1.0, "x1 x2")]
