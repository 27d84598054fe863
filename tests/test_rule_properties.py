"""Every registered Taylor rule, and every operation that reaches a decomposition, driven with
random shapes and random input series: exact against nested ``torch.func.jvp`` in float64, or a
clear :class:`~hope_attr.UnsupportedOperationError`, never another exception (issue 29).

For each operation, Hypothesis draws an input shape, whether the other floating arguments are
jets too, whether a series holds every order or only the first, and whether it broadcasts over
the batch axis. :func:`tests._op_calls.find_call` finds arguments the operation accepts on plain
tensors; the same call then runs on jets whose series are random polynomial curves
``x(t) = x0 + s_1 t + s_2 t^2 + ...``, and the result's series must equal the Taylor
coefficients of ``t -> op(x(t))``, which nested ``jvp`` computes in the scalar ``t`` without
hope_attr (tests/oracle.py). Where PyTorch's own forward-mode formula is missing or wrong, the
reference computes the same function from elementary operations (:data:`COMPOSED`), checked to
agree with the operation on the plain call; where nested ``jvp`` cannot run at all, orders 1-2
are checked against central differences.

``HYPOTHESIS_PROFILE=explore python -m pytest tests/test_rule_properties.py`` draws fresh shapes.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

import hope_attr
from hope_attr.engine import dispatch as _dispatch
from hope_attr.engine import registry as _registry
from tests._op_calls import Call, find_call, flatten
from tests.oracle import ComposedReference, _directional

pytestmark = pytest.mark.usefixtures("single_thread")
ORDER = 3
DIRECTIONS = 2
TOLERANCE = 1e-8
REFUSED = (hope_attr.UnsupportedOperationError, hope_attr.TrainingModeError)

# Not operations on values: no jet ever reaches them through a model, or they only report
# metadata that needs no test beyond the queries below.
NOT_OPERATIONS = {
    "backward", "register_hook", "register_post_accumulate_grad_hook", "storage",
    "storage_type", "share_memory_", "is_shared", "module_load", "dim_order", "__repr__",
    "__format__", "__dir__", "__deepcopy__", "__reduce_ex__", "__setstate__", "__array__",
    "__array_wrap__", "__dlpack__", "__dlpack_device__", "__contains__", "__reversed__",
    "numpy", "tolist", "new_tensor", "new_empty_strided", "requires_grad_", "detach_",
    "resize", "resize_as", "resize_", "set_", "record_stream", "pin_memory", "cuda",
    "index", "sym_sum", "sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite",
}  # fmt: skip
# Random operations: two calls differ, so nothing can be compared; a jet must still get a result
# or a clear refusal.
RANDOM = {
    "gumbel_softmax", "rrelu_", "bernoulli", "bernoulli_", "multinomial", "normal", "normal_",
    "poisson", "uniform_", "exponential_", "cauchy_", "geometric_", "log_normal_", "random_",
}  # fmt: skip


def _name(target: object) -> str:
    return _registry._describe(target)


def _homes() -> list[object]:
    return [torch, torch.Tensor, F, torch.special, torch.linalg, torch.fft]


def _decomposition_paths() -> list[object]:
    """Public callables without a rule of their own that the engine runs through a fallback
    (a decomposition, a composite body, an in-place form)."""
    fallback = getattr(_dispatch, "_fallback", None)
    found = []
    for home in _homes():
        for name in sorted(dir(home)):
            if name.startswith("_") and not name.startswith("__") or name in NOT_OPERATIONS:
                continue
            target = getattr(home, name, None)
            if not callable(target) or isinstance(target, type) or target in found:
                continue
            if getattr(target, "__module__", "") and target.__module__.startswith("functorch"):
                continue  # functorch.dim's patches of torch.Tensor, not operations
            if _registry.function_rule(target) is not None:
                continue
            try:
                if fallback is None or fallback(target) is not None:
                    found.append(target)
            except Exception:  # noqa: BLE001, S112 - not a callable the engine can look up
                continue
    return found


# Rules whose operation takes integer tensors only: a jet (floating) never reaches them.
INTEGER_ONLY = {"bincount", "__index__"}
# Results with unspecified values: only their shape is checked.
UNINITIALIZED = {"empty_like", "new_empty"}

RULES = [
    t for t in _registry._FUNCTION_RULES
    if getattr(t, "__name__", "") not in NOT_OPERATIONS | INTEGER_ONLY
    and "quantized" not in _name(t)  # packed integer weights: test_ops_functions checks them
]  # fmt: skip
DECOMPOSITIONS = _decomposition_paths()


def _composed_instance_norm(x: Tensor, *args: object, eps: float = 1e-5, **kwargs) -> Tensor:
    dims = tuple(range(2, x.dim()))
    centered = x - x.mean(dims, keepdim=True)
    return centered * torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)


def _composed_prefix(reduce: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    def running(x: Tensor, dim: int, *args: object, **kwargs: object) -> Tensor:
        pieces = [reduce(x.narrow(dim, 0, i + 1), dim) for i in range(x.shape[dim])]
        return torch.stack(pieces, dim)

    return running


# PyTorch's forward-mode formula is wrong (instance_norm from order 2), missing (glu, cdist,
# grid_sample) or imprecise (cumprod, logcumsumexp, sinc: 1e-12) for these: the reference
# differentiates the same function written with elementary operations.
COMPOSED: dict[object, Callable[..., object]] = {
    F.instance_norm: _composed_instance_norm,
    torch.instance_norm: _composed_instance_norm,
    F.glu: lambda x, dim=-1: x.chunk(2, dim)[0] * torch.sigmoid(x.chunk(2, dim)[1]),
    torch.cdist: lambda a, b, p=2.0: torch.linalg.vector_norm(
        a.unsqueeze(-2) - b.unsqueeze(-3), p, -1
    ),
    torch.cumprod: _composed_prefix(lambda x, d: x.prod(d)),
    torch.Tensor.cumprod: _composed_prefix(lambda x, d: x.prod(d)),
    torch.logcumsumexp: _composed_prefix(lambda x, d: torch.log(torch.exp(x).sum(d))),
    torch.Tensor.logcumsumexp: _composed_prefix(lambda x, d: torch.log(torch.exp(x).sum(d))),
    torch.sinc: lambda x: torch.sin(math.pi * x) / (math.pi * x),
    torch.Tensor.sinc: lambda x: torch.sin(math.pi * x) / (math.pi * x),
}


# In place, PyTorch's forward AD leaves the input's tangent on what logical_and_ & co. write (0s
# and 1s, a step: derivative 0): the reference computes them out of place.
def _out_of_place(op: Callable[..., Tensor]) -> Callable[..., Tensor]:
    return lambda x, *args: op(x, *args).to(x.dtype)


for _op in (torch.logical_and, torch.logical_or, torch.logical_xor, torch.logical_not):
    COMPOSED[getattr(torch.Tensor, f"{_op.__name__}_")] = _out_of_place(_op)


# --------------------------------------------------------------------------- jets and curves
def _series(leaf: Tensor, full: bool, broadcast: bool, generator: torch.Generator) -> Tensor:
    stored = ORDER if full else 1
    shape = list(leaf.shape)
    if broadcast and shape:
        shape[0] = 1
    return 0.1 * torch.randn(stored, DIRECTIONS, *shape, dtype=leaf.dtype, generator=generator)


def _replace(value: object, fn: Callable[[Tensor], object]) -> object:
    if isinstance(value, Tensor) and value.is_floating_point():
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_replace(v, fn) for v in value)
    return value


def _curve(leaf: Tensor, series: Tensor, direction: int, t: Tensor) -> Tensor:
    """``x0 + sum_k s_k t^k`` for one direction (the batch axis broadcast)."""
    powers = [t ** (k + 1) for k in range(series.shape[0])]
    return leaf + sum(p * s[direction] for p, s in zip(powers, series, strict=True))


def _outputs(value: object) -> list[Tensor]:
    """The floating and complex tensors of a result, flattened, complex as real pairs."""
    leaves = []
    for leaf in flatten(value):
        if isinstance(leaf, hope_attr.Jet):
            leaf = leaf.primal
        if isinstance(leaf, Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            leaves.append(torch.view_as_real(leaf.resolve_conj()) if leaf.is_complex() else leaf)
    return leaves


def _hope_series(value: object) -> list[Tensor]:
    """``(n, D, *shape)`` per output leaf: a jet's series, zeros for a constant."""
    series = []
    for leaf in flatten(value):
        if isinstance(leaf, hope_attr.Jet):
            full = leaf.full_series().to(leaf.primal.dtype)
            series.append(torch.view_as_real(full.resolve_conj()) if full.is_complex() else full)
        elif isinstance(leaf, Tensor) and (leaf.is_floating_point() or leaf.is_complex()):
            shape = torch.view_as_real(leaf).shape if leaf.is_complex() else leaf.shape
            series.append(torch.zeros(ORDER, DIRECTIONS, *shape, dtype=torch.float64))
    return series


def _reference(target, call: Call, curves: dict[int, Tensor], direction: int) -> Tensor:
    """``(n, N)``: Taylor coefficients of the flattened outputs along one direction."""
    function = COMPOSED.get(target, target)

    def along(t: Tensor) -> Tensor:
        counter = iter(range(10**6))

        def moved(leaf: Tensor) -> Tensor:
            index = next(counter)
            series = curves.get(index)
            return leaf.clone() if series is None else _curve(leaf, series, direction, t)

        args = _replace(call.args, moved)
        return torch.cat([o.reshape(-1) for o in _outputs(function(*args, **call.kwargs))])

    t0, one = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    try:
        with ComposedReference(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.stack(
                [_directional(along, k)(t0, one) / math.factorial(k) for k in range(1, ORDER + 1)]
            )
    except (NotImplementedError, RuntimeError):  # no forward-mode formula: differences
        return _differences(along)


def _differences(along: Callable[[Tensor], Tensor]) -> Tensor:
    """Orders 1-2 by fourth-order central differences; later orders NaN (not compared)."""
    h = 1e-3
    values = {j: along(torch.tensor(j * h, dtype=torch.float64)) for j in (-2, -1, 0, 1, 2)}
    first = (values[-2] - 8 * values[-1] + 8 * values[1] - values[2]) / (12 * h)
    second = (-values[-2] + 16 * values[-1] - 30 * values[0] + 16 * values[1] - values[2]) / (
        12 * h * h
    )
    rest = [torch.full_like(first, math.nan)] * (ORDER - 2)
    return torch.stack([first, second / 2, *rest])


# --------------------------------------------------------------------------- the property
def _invoke(target: object, args: tuple, kwargs: dict) -> object:
    """``target(*args, **kwargs)`` as a model calls it: a tensor method through the jet
    (``x.tanh()`` reaches the engine by the jet's attribute lookup), anything else as is."""
    if getattr(target, "__objclass__", None) is not None and isinstance(args[0], hope_attr.Jet):
        return _registry.engine().dispatch(target, args, kwargs)
    return target(*args, **kwargs)


def _check(target: object, shape: list[int], seed: int, all_jets: bool, full: bool, broadcast):
    if getattr(target, "__name__", "") in UNINITIALIZED:
        x = torch.randn(shape, dtype=torch.float64)
        size = () if target is torch.empty_like else ((2, 3),)
        result = _invoke(target, (hope_attr.Jet(x, torch.ones(1, 1, *shape), ORDER), *size), {})
        assert not isinstance(result, hope_attr.Jet)
        return
    # A shape the operation cannot take (a transpose of a 3-d tensor): the next one that it can.
    call = None
    for candidate in (shape, [2, 3], [2, 3, 2], [2, 4]):
        call = call or find_call(target, tuple(candidate), seed)
    assert call is not None or target not in RULES, (
        f"no call of {_name(target)} found: give it arguments in tests/_op_calls.SPECIAL"
    )
    if call is None:
        return
    generator = torch.Generator().manual_seed(seed)
    curves: dict[int, Tensor] = {}
    counter = iter(range(10**6))

    def as_jet(leaf: Tensor) -> object:
        index = next(counter)
        if index > 0 and not all_jets:
            return leaf.clone()
        curves[index] = _series(leaf, full or index > 0, broadcast and index == 0, generator)
        return hope_attr.Jet(leaf.clone(), curves[index], ORDER)

    jet_args = _replace(call.args, as_jet)
    plain = target(*_replace(call.args, torch.clone), **call.kwargs)
    if getattr(target, "__name__", "") in RANDOM:
        try:
            _invoke(target, jet_args, call.kwargs)
        except REFUSED:
            pass
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = _invoke(target, jet_args, call.kwargs)
    except REFUSED as error:
        assert _name(target).split(".")[-1] in str(error) or len(str(error)) > 40, error
        return
    if call.query:
        assert type(result) is type(plain) and repr(result) == repr(plain)
        return
    _compare(target, call, curves, plain, result)


def _compare(target, call: Call, curves: dict, plain: object, result: object) -> None:
    primals = _outputs(result)
    expected_primals = _outputs(plain)
    assert len(primals) == len(expected_primals)
    for got, want in zip(primals, expected_primals, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    series = _hope_series(result)
    actual = torch.cat([s.reshape(ORDER, DIRECTIONS, -1) for s in series], 2)  # (n, D, N)
    # A result in a lower precision (x.float()) is exact to that precision only.
    precision = max((torch.finfo(p.dtype).eps for p in primals), default=2.0**-52)
    for d in range(DIRECTIONS):
        expected = _reference(target, call, curves, d)
        for k in range(ORDER):
            if torch.isnan(expected[k]).all():
                continue
            scale = max(expected[k].abs().max().item(), 1e-3)
            tolerance = max(TOLERANCE, 100 * precision)
            if torch.isnan(expected[-1]).all():  # central differences
                tolerance = max(tolerance, 1e-6)
            error = (actual[k, d] - expected[k]).abs().max().item()
            assert error <= tolerance * scale, f"order {k + 1}: error {error:.2e} (scale {scale})"


SHAPES = st.lists(st.integers(1, 3), min_size=0, max_size=3)
EXAMPLES = settings(
    max_examples=1, deadline=None, suppress_health_check=list(HealthCheck), database=None,
    print_blob=False, report_multiple_bugs=False,
)  # fmt: skip


@pytest.mark.parametrize("target", RULES, ids=_name)
@EXAMPLES
@given(
    shape=SHAPES, seed=st.integers(0, 2**16), all_jets=st.booleans(), full=st.booleans(),
    broadcast=st.booleans(),
)  # fmt: skip
def test_every_rule_is_exact_or_refused(target, shape, seed, all_jets, full, broadcast) -> None:
    _check(target, [2, *shape][:3], seed, all_jets, full, broadcast)


@pytest.mark.parametrize("target", DECOMPOSITIONS, ids=_name)
@EXAMPLES
@given(shape=SHAPES, seed=st.integers(0, 2**16), all_jets=st.booleans(), full=st.booleans())
def test_every_decomposition_path_is_exact_or_refused(target, shape, seed, all_jets, full):
    _check(target, [2, *shape][:3], seed, all_jets, full, False)


@pytest.mark.parametrize("compare", [operator.eq, operator.ne], ids=["==", "!="])
def test_comparing_a_jet_with_a_number_gives_a_mask(compare) -> None:
    """``h == 0.5`` and ``h == g`` must give the mask that ``torch.eq`` gives. Python used to
    fall back to an identity test (a bool), silently wrong in ``mask = h == h.max()``."""
    x = torch.randn(2, 3, dtype=torch.float64)
    jet = hope_attr.Jet(x, torch.ones(1, 1, 2, 3, dtype=torch.float64), 2)
    for other, plain in ((0.5, 0.5), (jet, x)):
        result = compare(jet, other)
        assert isinstance(result, Tensor) and torch.equal(result, compare(x, plain))


def test_the_sweep_reaches_every_rule_and_the_decompositions() -> None:
    """A test that finds no operation would pass vacuously."""
    assert len(RULES) > 400 and len(DECOMPOSITIONS) > 100


@pytest.mark.parametrize("convert", [float, int], ids=["float", "int"])
def test_python_number_conversions_of_a_jet(convert) -> None:
    """``float(h.max())`` in a forward: the value at the expansion point, with the warning that
    the dependence is dropped (the rules exist; Python's conversion does not reach them)."""
    x = torch.tensor(1.5, dtype=torch.float64)
    with pytest.warns(hope_attr.DroppedDependenceWarning):
        assert convert(hope_attr.Jet(x, torch.ones(1, 1, dtype=torch.float64), 2)) == convert(x)
