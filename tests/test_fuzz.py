"""Fuzzing the public entry points: every call is correct or a clear ValueError/TypeError.

Hypothesis draws dtypes, shapes, orders, targets, baselines, feature masks and extra arguments,
valid and invalid. A call must either return a finite result of the documented shape that
matches Captum's FeatureAblation (the model is a quadratic polynomial, so the order-2 expansion
is exact), or raise a ValueError/TypeError whose message says what is wrong. Each example must
finish within the deadline: nothing hangs.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import FeatureAblation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import hope_attr

pytestmark = pytest.mark.usefixtures("single_thread")
CLEAR = (ValueError, TypeError)
FAST = settings(
    max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Quadratic(nn.Module):
    """Linear, square, Linear: a polynomial of degree 2, exact at order >= 2."""

    def __init__(self, features: int, outputs: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(features * 10 + outputs)
        self.a = nn.Linear(features, 5)
        self.b = nn.Linear(5, outputs)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def forward(self, x: torch.Tensor, scale: object = 1.0) -> torch.Tensor:
        return self.b(self.a(x.flatten(1)) ** 2) * scale


def _clear(error: Exception) -> None:
    message = str(error)
    assert len(message) > 20, f"an unclear message: {message!r}"
    assert "Traceback" not in message


_REFUSED = object()


def _call(call, own_error: type[Exception] | None) -> object:
    """``call()``; ``_REFUSED`` if it raised a clear error or the model's own (both checked)."""
    try:
        return call()
    except CLEAR as error:
        _clear(error)
    except Exception as error:
        assert own_error is not None and isinstance(error, own_error), error
    return _REFUSED


def _model_error(model: nn.Module, x: torch.Tensor) -> type[Exception] | None:
    """The error the model itself raises on ``x`` (a float32 input to a float64 model): an entry
    point may raise the same, as Captum's methods do."""
    try:
        with torch.no_grad():
            model(x)
    except Exception as error:  # noqa: BLE001 - reported to the caller
        return type(error)
    return None


dtypes = st.sampled_from([torch.float64, torch.float32, torch.float16, torch.int64, torch.bool])
orders = st.one_of(st.integers(-2, 5), st.sampled_from([0.5, "2", None, True, 10**7]))


@FAST
@given(
    batch=st.integers(0, 3),
    features=st.integers(1, 4),
    outputs=st.integers(1, 3),
    dtype=dtypes,
    order=orders,
    nan=st.booleans(),
)
def test_unmixed_derivatives(batch, features, outputs, dtype, order, nan) -> None:
    model = Quadratic(features, outputs).double().eval()
    x = torch.rand(batch, features, dtype=torch.float64).to(dtype)
    if nan and batch and dtype.is_floating_point:
        x[0, 0] = float("nan")
    own_error = _model_error(model, x) if batch else None
    d = _call(lambda: hope_attr.unmixed_derivatives(model, x, order), own_error)
    if d is _REFUSED:
        return
    assert isinstance(order, int) and 1 <= order <= 1000 and batch > 0 and not nan
    assert d.shape == (order, batch, outputs, features)
    assert torch.isfinite(d).all()
    if order >= 3:
        assert (d[2:] == 0).all(), "a quadratic has no third derivative"


targets = st.one_of(
    st.none(),
    st.integers(-1, 3),
    st.lists(st.integers(0, 2), min_size=0, max_size=3),
    st.sampled_from(["tensor", "column", "2x2", "float"]),
)
baselines = st.one_of(
    st.none(),
    st.floats(-2, 2),
    st.sampled_from(["like", "batch1", "wrong", "nan", "tuple"]),
)
masks = st.one_of(st.none(), st.sampled_from(["groups", "gap", "negative", "float", "wrong"]))
extras = st.one_of(st.none(), st.floats(0.5, 2), st.sampled_from(["tuple", "list-with-tensor"]))


def _target(kind: object, batch: int) -> object:
    if kind == "tensor":
        return torch.zeros(batch, dtype=torch.long)
    if kind == "column":
        return torch.zeros(batch, 1, dtype=torch.long)
    if kind == "2x2":
        return torch.zeros(2, 2, dtype=torch.long)
    if kind == "float":
        return 0.5
    return kind


def _baseline(kind: object, x: torch.Tensor) -> object:
    return {
        "like": torch.zeros_like(x),
        "batch1": torch.zeros_like(x[:1]),
        "wrong": torch.zeros(x.shape[0], x.shape[1] + 1, dtype=x.dtype),
        "nan": torch.full_like(x, float("nan")),
        "tuple": (0.0, 0.0),
    }.get(kind, kind)


def _mask(kind: object, features: int) -> object:
    if kind is None:
        return None
    groups = torch.arange(features) // 2
    return {
        "groups": groups[None],
        "gap": (groups * 2)[None],
        "negative": -groups[None] - 1,
        "float": groups[None].double(),
        "wrong": torch.zeros(1, features + 1, dtype=torch.long),
    }[kind]


def _extra(kind: object) -> object:
    return {"tuple": (1.5,), "list-with-tensor": ([torch.ones(1), 0.5],)}.get(kind, kind)


@FAST
@given(
    batch=st.integers(1, 3),
    features=st.integers(1, 4),
    outputs=st.integers(1, 3),
    order=st.integers(1, 4),
    target=targets,
    baseline=baselines,
    mask=masks,
    extra=extras,
    method=st.sampled_from(["exact", "diagonal", "continuation"]),
)
def test_attribute(batch, features, outputs, order, target, baseline, mask, extra, method) -> None:
    torch.manual_seed(0)
    model = Quadratic(features, outputs).double().eval()
    x = torch.rand(batch, features, dtype=torch.float64)
    kwargs = dict(
        baselines=_baseline(baseline, x),
        target=_target(target, batch),
        feature_mask=_mask(mask, features),
        additional_forward_args=_extra(extra),
    )
    try:
        attribution = hope_attr.HOPEAttribution(model, order=order, method=method)
        result = attribution.attribute(x, **kwargs)
    except CLEAR as error:
        _clear(error)
        return
    assert result.shape == x.shape and torch.isfinite(result).all()
    assert result.grad_fn is None
    if method != "diagonal" and order >= 2:
        expected = FeatureAblation(model).attribute(x, **kwargs)
        torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-8)


@FAST
@given(
    points=st.integers(0, 3),
    features=st.integers(1, 3),
    order=orders,
    dtype=dtypes,
)
def test_mixed_derivatives_and_expand(points, features, order, dtype) -> None:
    model = Quadratic(features, 2).double().eval()
    x = torch.rand(points, features, dtype=torch.float64).to(dtype)
    own_error = _model_error(model, x) if points else None
    tensors = _call(lambda: hope_attr.mixed_derivatives(model, x, order), own_error)
    if tensors is not _REFUSED:
        assert len(tensors) == order and all(torch.isfinite(t).all() for t in tensors)
        assert tensors[0].shape == (points, 2, features)
    polynomial = _call(lambda: hope_attr.expand(model, x[0] if points else x, order), own_error)
    if polynomial is _REFUSED:
        return
    probe = torch.rand(4, features, dtype=torch.float64)
    if isinstance(order, int) and order >= 2:
        torch.testing.assert_close(polynomial(probe), model(probe), rtol=1e-8, atol=1e-8)
