"""The file format of :meth:`TaylorPolynomial.save`: plain JSON, validated before it is trusted.

A saved polynomial is one JSON object::

    {"format": "hope_attr.TaylorPolynomial/1", "names": [...], "center": [...],
     "exponents": [[...], ...], "output_shape": [...], "coefficients": [[...], ...]}

with the coefficients flattened to one row per monomial. Loading runs no code (no pickle), and a
malformed or hostile file is refused field by field, in plain Python, before any tensor is built:
a type error deep in a nested list would otherwise surface as torch's own message, or not at all
(``torch.tensor`` truncates the exponent 1.5 to 1).
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from hope_attr.polynomial.validation import MAX_DEGREE

FORMAT = "hope_attr.TaylorPolynomial/1"
_PAYLOAD_KEYS = ("names", "center", "exponents", "output_shape", "coefficients")

Built = TypeVar("Built")


def write(
    path: str | Path,
    center: Tensor,
    exponents: Tensor,
    coefficients: Tensor,
    names: Sequence[str],
) -> None:
    """Write a polynomial as JSON; float64 values round-trip exactly.

    Raises:
        ValueError: a coefficient is NaN or infinite (JSON has no such numbers).
    """
    payload = {
        "format": FORMAT,
        "names": list(names),
        "center": center.double().tolist(),
        "exponents": exponents.tolist(),
        "output_shape": list(coefficients.shape[1:]),
        "coefficients": coefficients.double().reshape(len(exponents), -1).tolist(),
    }
    if not bool(torch.isfinite(coefficients).all()):
        raise ValueError("cannot save a polynomial with NaN or infinite coefficients")
    Path(path).write_text(json.dumps(payload, allow_nan=False))


def read(path: str | Path, build: Callable[[Tensor, Tensor, Tensor, list[str]], Built]) -> Built:
    """``build(center, exponents, coefficients, names)`` from a file written by :func:`write`.

    ``build`` (the polynomial's constructor) makes the last checks; its ``TypeError`` or
    ``ValueError`` is reported as the file's.

    Raises:
        ValueError: the file is not a valid saved TaylorPolynomial (the message names the file
            and says why).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        payload = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        # RecursionError: thousands of nested brackets.
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise ValueError(f"{path} is not a saved TaylorPolynomial: not JSON ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a saved TaylorPolynomial ({FORMAT})")
    try:
        return build(*parse_payload(payload))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a valid saved TaylorPolynomial: {error}") from None


def parse_payload(payload: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """``(center, exponents, coefficients, names)`` from a saved polynomial's JSON object.

    Raises:
        ValueError: a field is missing or does not hold what it must (the message names it).
    """
    missing = [key for key in _PAYLOAD_KEYS if key not in payload]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    names, center, exponents, shape, coefficients = (payload[key] for key in _PAYLOAD_KEYS)
    if not isinstance(names, list):
        raise ValueError(f"names must be a list of strings, got {reprlib.repr(names)}")
    center = _finite_numbers(center, "center")
    if not center:  # no variables: every later check would pass vacuously, then torch fails
        raise ValueError(
            "center must be a non-empty list of numbers, one per variable (the expansion "
            "point), got []"
        )
    _check_exponent_rows(exponents, len(center))
    if not isinstance(shape, list) or not all(type(n) is int and n >= 1 for n in shape):
        raise ValueError(
            f"output_shape must be a list of positive integers, got {reprlib.repr(shape)}"
        )
    width = math.prod(shape)
    if not isinstance(coefficients, list) or len(coefficients) != len(exponents):
        raise ValueError(
            f"coefficients must be a list of one row per monomial ({len(exponents)} rows), got "
            f"{reprlib.repr(coefficients)}"
        )
    rows = [_finite_numbers(row, "each row of coefficients", width) for row in coefficients]
    return (
        torch.tensor(center, dtype=torch.float64),
        torch.tensor(exponents, dtype=torch.long),
        torch.tensor(rows, dtype=torch.float64).reshape(len(exponents), *shape),
        names,
    )


def _check_exponent_rows(exponents: Any, num_variables: int) -> None:
    if not isinstance(exponents, list) or not exponents:
        raise ValueError(
            f"exponents must be a non-empty list of rows, got {reprlib.repr(exponents)}"
        )
    for row in exponents:
        if not isinstance(row, list) or len(row) != num_variables:
            raise ValueError(
                f"each row of exponents must list {num_variables} integers (one per variable, as "
                f"in center), got {reprlib.repr(row)}"
            )
        for value in row:
            if type(value) is not int or not 0 <= value <= MAX_DEGREE:
                raise ValueError(
                    f"exponents must be integers from 0 to {MAX_DEGREE}, got {reprlib.repr(value)}"
                )


def _finite_numbers(values: Any, what: str, length: int | None = None) -> list[float]:
    if not isinstance(values, list) or (length is not None and len(values) != length):
        size = "" if length is None else f" of length {length}"
        raise ValueError(f"{what} must be a list{size} of numbers, got {reprlib.repr(values)}")
    for value in values:
        if type(value) not in (int, float):
            raise ValueError(f"{what} must hold numbers, got {reprlib.repr(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond float64
            finite = False
        if not finite:
            raise ValueError(f"{what} must hold finite numbers, got {reprlib.repr(value)}")
    return values


__all__ = ["FORMAT", "parse_payload", "read", "write"]
