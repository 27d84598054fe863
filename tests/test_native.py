"""The compiled Riccati kernel (hope_attr/engine/native.py): references, agreement with the eager
loops, where it declines, and the fallback when it cannot be built."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jvp

from hope_attr import HOPEAttribution
from hope_attr.engine import native as _native
from hope_attr.engine.series import riccati_series

# (name, g, g', linear, quadratic): g' = a + linear g + quadratic g^2.
FUNCTIONS = [
    ("tanh", torch.tanh, lambda y: 1 - y * y, 0.0, -1.0),
    ("sigmoid", torch.sigmoid, lambda y: y - y * y, 1.0, -1.0),
    ("exp", torch.exp, lambda y: y, 1.0, 0.0),
]


def _compiler_present() -> bool:
    return _native.find_compiler() is not None


def _eager(y0, slope0, u, order, linear, quadratic, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as patched:
        patched.setenv("HOPE_ATTR_NATIVE", "0")
        return riccati_series(y0, slope0, u, order, linear, quadratic).clone()


def _series_reference(g, x0: torch.Tensor, u: torch.Tensor, order: int) -> torch.Tensor:
    """Coefficients ``1..order`` of ``g(x0 + sum_j u_j t^j)`` by nested ``jvp`` in ``t``
    (float64; nothing of hope_attr). Nesting costs ``2^order``: order 8 takes 25 s."""

    def along(t: torch.Tensor) -> torch.Tensor:
        return g(x0 + sum(u[j] * t ** (j + 1) for j in range(u.shape[0])))

    def derivative(k: int):
        if k == 0:
            return along
        inner = derivative(k - 1)
        return lambda t: jvp(inner, (t,), (torch.ones_like(t),))[1]

    t0 = torch.zeros((), dtype=x0.dtype)
    return torch.stack([derivative(k)(t0) / math.factorial(k) for k in range(1, order + 1)])


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler on this machine")
def test_kernel_builds_where_a_compiler_exists() -> None:
    # Where CI has a compiler, every engine test below and elsewhere runs the compiled kernel.
    assert _native.available(), _native.unavailable_reason()


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler on this machine")
@pytest.mark.parametrize("name, g, slope, linear, quadratic", FUNCTIONS)
@pytest.mark.parametrize("order, stored", [(1, 1), (4, 4), (6, 6), (6, 2)])
def test_kernel_matches_nested_jvp(name, g, slope, linear, quadratic, order, stored) -> None:
    generator = torch.Generator().manual_seed(order)
    x0 = torch.randn(3, 67, dtype=torch.float64, generator=generator)  # 201: not whole blocks
    u = 0.5 * torch.randn(stored, 3, 67, dtype=torch.float64, generator=generator)
    y0 = g(x0)
    out = torch.empty(order, 3, 67, dtype=torch.float64)
    assert _native.riccati(y0, slope(y0), u, out, linear, quadratic)
    expected = _series_reference(g, x0, u, order)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler on this machine")
@pytest.mark.parametrize("order", [12, 32])
def test_kernel_high_orders_in_closed_form(order) -> None:
    # exp(x0 + u1 t) has coefficients exp(x0) u1^k / k!: the highest orders the kernel takes.
    x0 = torch.linspace(-2, 2, 130, dtype=torch.float64)
    u1 = torch.linspace(-1.5, 1.5, 130, dtype=torch.float64)
    out = torch.empty(order, 130, dtype=torch.float64)
    assert _native.riccati(x0.exp(), x0.exp(), u1[None], out, 1.0, 0.0)
    k = torch.arange(1, order + 1, dtype=torch.float64)[:, None]
    expected = x0.exp() * u1**k / torch.exp(torch.lgamma(k + 1))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-300)


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler on this machine")
def test_kernel_tanh_is_twice_sigmoid_of_twice_the_argument() -> None:
    # tanh(z) = 2 sigmoid(2z) - 1 at order 12: two runs with different recurrence constants.
    generator = torch.Generator().manual_seed(12)
    x0 = torch.randn(4, 70, dtype=torch.float64, generator=generator)
    u = 0.3 * torch.randn(12, 4, 70, dtype=torch.float64, generator=generator)
    y, s = torch.tanh(x0), torch.sigmoid(2 * x0)
    tanh_series, sigmoid_series = torch.empty_like(u), torch.empty_like(u)
    assert _native.riccati(y, 1 - y * y, u, tanh_series, 0.0, -1.0)
    assert _native.riccati(s, s - s * s, 2 * u, sigmoid_series, 1.0, -1.0)
    torch.testing.assert_close(tanh_series, 2 * sigmoid_series, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name, g, slope, linear, quadratic", FUNCTIONS)
@pytest.mark.parametrize("order", [2, 6])
def test_eager_loops_match_nested_jvp(name, g, slope, linear, quadratic, order, monkeypatch):
    # The path taken without a compiler (or with HOPE_ATTR_NATIVE=0) has its own reference.
    generator = torch.Generator().manual_seed(order)
    x0 = torch.randn(2, 9, dtype=torch.float64, generator=generator)
    u = 0.5 * torch.randn(order, 2, 9, dtype=torch.float64, generator=generator)
    y0 = g(x0)
    got = _eager(y0, slope(y0), u, order, linear, quadratic, monkeypatch)
    torch.testing.assert_close(got, _series_reference(g, x0, u, order), rtol=1e-10, atol=1e-12)


# (series shape, primal shape): the primal broadcast over leading axes (passed with a period),
# matching elementwise, and broadcast over an inner axis (expanded before the kernel).
SHAPES = [
    ((16, 4, 8, 7, 7), (4, 8, 7, 7)),
    ((16, 4, 8, 7, 7), (16, 4, 8, 7, 7)),
    ((300, 1, 64), (1, 64)),
    ((5, 3, 11), (5, 1, 11)),
    ((7,), ()),
]


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("shape, primal_shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_agrees_with_eager_loops(shape, primal_shape, dtype, rtol, threads, monkeypatch):
    generator = torch.Generator().manual_seed(len(shape))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, g, slope, linear, quadratic in FUNCTIONS:
            x0 = torch.randn(primal_shape, generator=generator).to(dtype)
            u = (0.4 * torch.randn(10, *shape, generator=generator)).to(dtype)
            y0 = g(x0)
            got = riccati_series(y0, slope(y0), u, 10, linear, quadratic)
            expected = _eager(y0, slope(y0), u, 10, linear, quadratic, monkeypatch)
            # Per order, relative to that order's largest coefficient (the orders shrink fast).
            scale = expected.flatten(1).abs().amax(1).clamp_min(1e-30)
            error = (got - expected).flatten(1).abs().amax(1) / scale
            assert error.max() < rtol, (name, error)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler on this machine")
def test_kernel_propagates_nan_and_inf_like_the_eager_loops(monkeypatch) -> None:
    y0 = torch.tanh(torch.randn(4, 50))
    u = torch.randn(6, 4, 50)
    u[2, 1, 3] = float("nan")
    u[0, 2, 7] = float("inf")
    got = riccati_series(y0, 1 - y0 * y0, u, 6, 0.0, -1.0)
    expected = _eager(y0, 1 - y0 * y0, u, 6, 0.0, -1.0, monkeypatch)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.isinf(), expected.isinf())
    finite = expected.isfinite()
    torch.testing.assert_close(got[finite], expected[finite])


def test_kernel_declines_what_it_does_not_cover(monkeypatch) -> None:
    y0 = torch.tanh(torch.randn(3, 5))
    u = torch.randn(4, 3, 5)
    out = torch.empty(4, 3, 5)
    # Orders above 32, integer and half precision, series broadcast over an axis, gradients.
    assert not _native.riccati(y0, 1 - y0 * y0, u, torch.empty(33, 3, 5), 0.0, -1.0)
    assert not _native.riccati(y0.half(), y0.half(), u.half(), out.half(), 0.0, -1.0)
    assert not _native.riccati(y0, y0, u[:, :1], out, 0.0, -1.0)
    leaf = u.clone().requires_grad_()
    assert not _native.riccati(y0, 1 - y0 * y0, leaf, out, 0.0, -1.0)
    monkeypatch.setenv("HOPE_ATTR_NATIVE", "0")
    assert not _native.riccati(y0, 1 - y0 * y0, u, out, 0.0, -1.0)


def test_without_a_compiler_the_eager_loops_give_the_same_attributions(tmp_path, monkeypatch):
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4), torch.nn.Sigmoid()
    ).eval()
    x = torch.randn(2, 6)
    expected = HOPEAttribution(model, order=8).attribute_all_targets(x)
    monkeypatch.setattr(_native, "_state", {})  # forget the loaded kernel for this test
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("HOPE_ATTR_CACHE_DIR", str(tmp_path / "cache"))
    assert not _native.available()
    assert "no-such-compiler" in (_native.unavailable_reason() or "")
    got = HOPEAttribution(model, order=8).attribute_all_targets(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler on this machine")
def test_compiled_kernel_is_cached_per_machine(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(_native, "_state", {})
    monkeypatch.setenv("HOPE_ATTR_CACHE_DIR", str(tmp_path))
    assert _native.available(), _native.unavailable_reason()
    (built,) = tmp_path.glob("series-*.so")
    stamp = built.stat().st_mtime_ns
    monkeypatch.setattr(_native, "_state", {})  # a new process: load, do not compile again
    assert _native.available()
    assert built.stat().st_mtime_ns == stamp
    assert list(tmp_path.iterdir()) == [built]  # no partial files left behind


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_kernel_thread_pool_works_in_a_forked_child() -> None:
    # A forked child inherits the pool object but not its threads; hope_attr forgets the pool at
    # fork. (Torch itself needs one intra-op thread in such a child; the pool serves the kernel.)
    import multiprocessing

    assert _native._thread_pool(1).submit(int, "7").result() == 7  # the parent's pool runs
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_use_pool_in_child).get(timeout=60) == 7


def _use_pool_in_child() -> int:
    return _native._thread_pool(1).submit(int, "7").result(timeout=30)


@pytest.mark.skipif(not _compiler_present(), reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_an_elements_result_does_not_depend_on_where_it_sits(dtype) -> None:
    # Chunks of directions put an element at another position of the kernel's blocks: its bits
    # must not change (internal_batch_size leaves results bit-identical).
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, dtype=dtype, generator=generator)
    u = torch.randn(10, 1, 5, dtype=dtype, generator=generator).expand(10, 70, 5).contiguous()
    y0 = torch.tanh(x0)
    out = torch.empty(10, 70, 5, dtype=dtype)
    assert _native.riccati(y0, 1 - y0 * y0, u, out, 0.0, -1.0)
    assert torch.equal(out, out[:, :1].expand_as(out))
