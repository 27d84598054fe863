"""Taylor rules of structural operations (reshapes, permutations, selections, concatenation,
sums), of metadata queries and of piecewise-constant functions.

A structural op is linear and applies per example: it acts on every coefficient through
``torch.vmap`` (:func:`hope_attr.engine.arithmetic.map_per_sample`). Queries and piecewise-constant
results (shapes, indices, signs, truth values) are read off the primal: constants.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine import registry as _registry
from hope_attr.engine.arithmetic import expanded_series as _expanded
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import (
    DroppedDependenceWarning,
    register_rule,
)
from hope_attr.engine.series import cauchy_product
from hope_attr.engine.stacklevel import user_stacklevel
from hope_attr.rules import spectral as _spectral
from hope_attr.rules.checks import refusal


def _structural(fn: Callable[..., Tensor]) -> Callable[..., object]:
    """Rule for an op that only moves, selects or sums entries: linear, applied per sample.

    Keyword arguments travel with the positional ones, so that a constant given by keyword
    (``torch.diff(x, prepend=c)``) enters the series as zeros too.
    """

    def rule(*args, **kwargs) -> object:
        return ar.map_per_sample(lambda *a: fn(*a[:-1], **a[-1]), *args, kwargs)

    return rule


def _selecting(fn: Callable[..., Tensor]) -> Callable[..., object]:
    """Like :func:`_structural`, for ops whose tensor constants are indices or factors."""

    def rule(*args, **kwargs) -> object:
        return ar.map_per_sample(fn, *args, keep_constants=True, **kwargs)

    return rule


def _reshaping(fn: Callable[..., Tensor]) -> Callable[..., Jet]:
    """Like :func:`_structural`, but a reshape of a seed that keeps the batch axis stays a seed."""
    structural = _structural(fn)

    def rule(x: Jet, *args, **kwargs) -> Jet:
        if x.seed is not None and x._series is None:
            primal = fn(x.primal, *args, **kwargs)
            if primal.shape[0] == x.primal.shape[0]:  # row-major order, hence direction order, kept
                return Jet(primal, None, x.order, x.seed)
        return structural(x, *args, **kwargs)

    return rule


for _targets, _fn in [
    ((torch.Tensor.view,), torch.Tensor.view),
    # The method accepts both call forms: x.reshape(2, 3) and torch.reshape(x, (2, 3)).
    ((torch.reshape, torch.Tensor.reshape), torch.Tensor.reshape),
    ((torch.flatten, torch.Tensor.flatten), torch.flatten),
    ((torch.Tensor.unflatten, torch.unflatten), torch.unflatten),
    ((torch.Tensor.contiguous,), torch.Tensor.contiguous),
]:
    register_rule(*_targets)(_reshaping(_fn))

for _targets, _fn in [
    ((torch.permute, torch.Tensor.permute), torch.Tensor.permute),
    ((torch.transpose, torch.Tensor.transpose), torch.Tensor.transpose),
    ((torch.squeeze, torch.Tensor.squeeze), torch.Tensor.squeeze),
    ((torch.unsqueeze, torch.Tensor.unsqueeze), torch.Tensor.unsqueeze),
    # Tensor methods accept both call forms: x.permute(0, 2, 1) and torch.permute(x, (0, 2, 1)).
    ((torch.Tensor.expand,), torch.Tensor.expand),
    ((torch.Tensor.repeat,), torch.Tensor.repeat),
    ((torch.flip, torch.Tensor.flip), torch.Tensor.flip),
    ((torch.roll, torch.Tensor.roll), torch.Tensor.roll),
    ((torch.narrow, torch.Tensor.narrow), torch.Tensor.narrow),
    ((operator.getitem, torch.Tensor.__getitem__), operator.getitem),
]:
    register_rule(*_targets)(_selecting(_fn))

# Concatenating jets with constant blocks: a constant block has a zero series (so has a constant
# prepended or appended to a difference).
register_rule(torch.cat, torch.concat, torch.concatenate)(_structural(torch.cat))
register_rule(torch.stack)(_structural(torch.stack))
for _targets, _fn in [
    ((torch.hstack,), torch.hstack),
    ((torch.vstack, torch.row_stack), torch.vstack),
    ((torch.dstack,), torch.dstack),
    ((torch.diff, torch.Tensor.diff), torch.diff),
]:
    register_rule(*_targets)(_structural(_fn))


@register_rule(torch.column_stack)
def _column_stack(tensors: Sequence[object]) -> Jet:
    # vmap has no batching rule for column_stack: it is cat along dim 1, vectors as columns.
    return torch.cat([t.reshape(-1, 1) if t.dim() < 2 else t for t in tensors], 1)


# More ops that only move, select, repeat or sum entries (each linear, applied per sample). Their
# tensor arguments are indices or counts, never added to the result: passed unchanged.
for _targets, _fn in [
    ((torch.gather, torch.Tensor.gather), torch.gather),
    ((torch.index_select, torch.Tensor.index_select), torch.index_select),
    ((torch.take_along_dim, torch.Tensor.take_along_dim), torch.take_along_dim),
    ((torch.select, torch.Tensor.select), torch.select),
    ((torch.tril, torch.Tensor.tril), torch.tril),
    ((torch.triu, torch.Tensor.triu), torch.triu),
    ((torch.repeat_interleave, torch.Tensor.repeat_interleave), torch.repeat_interleave),
    ((torch.diagonal, torch.Tensor.diagonal), torch.diagonal),
    ((torch.movedim, torch.Tensor.movedim, torch.moveaxis), torch.movedim),
    ((torch.swapaxes, torch.Tensor.swapaxes, torch.swapdims), torch.swapaxes),
    ((torch.t, torch.Tensor.t), torch.t),
    ((torch.tile,), torch.tile),
    ((torch.Tensor.tile,), torch.Tensor.tile),  # x.tile(2, 1) as well as x.tile((2, 1))
    ((torch.Tensor.unfold,), torch.Tensor.unfold),
    ((torch.Tensor.expand_as,), lambda x, other: x.expand(other.shape)),
    ((torch.Tensor.view_as,), lambda x, other: x.view(other.shape)),
    ((torch.Tensor.reshape_as,), lambda x, other: x.reshape(other.shape)),
    ((F.unfold,), F.unfold),
    ((F.fold,), F.fold),
    ((F.pixel_shuffle,), F.pixel_shuffle),
    ((F.pixel_unshuffle,), F.pixel_unshuffle),
]:
    register_rule(*_targets)(_selecting(_fn))


_LINEAR_RESAMPLING = (
    "nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area", "lanczos",
)  # fmt: skip


@register_rule(torch.einsum)
def _einsum(equation: str, *operands: object) -> Jet:
    """Linear in one jet operand; two jet operands form a product (a Cauchy product of their
    series, with the order and direction axes carried by an ellipsis)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    jets = [o for o in operands if ar.is_jet(o)]
    if len(jets) == 1:  # the other operands are factors: kept, not zeroed
        return ar.map_per_sample(
            lambda *ops: torch.einsum(equation, *ops), *operands, keep_constants=True
        )
    compact = equation.replace(" ", "")
    if len(operands) != 2 or "->" not in compact or "..." in compact:
        raise refusal(
            f"torch.einsum({equation!r}) of {len(jets)} tensors that depend on the input",
            "hope_attr multiplies two such operands with an explicit '->' output and no '...'",
            "Write it as two einsums, or spell out the output and the batch letters.",
        )
    inputs, output = compact.split("->")
    first, second = inputs.split(",")
    lifted = f"...{first},...{second}->...{output}"
    a, b = operands
    primal = torch.einsum(compact, a.primal, b.primal)
    series = cauchy_product(
        a.primal, _expanded(a), b.primal, _expanded(b), a.order,
        op=lambda x, y: torch.einsum(lifted, x, y),
    )  # fmt: skip
    return Jet(primal, series, a.order)


@register_rule(F.interpolate, F.upsample)
def _interpolate(x: Jet, *args, **kwargs) -> Jet:
    # Nearest, (bi/tri)linear, bicubic and area resampling are linear maps of the input.
    mode = kwargs.get("mode", args[2] if len(args) > 2 else "nearest")
    if mode not in _LINEAR_RESAMPLING:
        raise refusal(
            f"F.interpolate(mode={mode!r})",
            "only the linear resampling modes are linear maps of the input",
            f"Use one of {', '.join(_LINEAR_RESAMPLING)}.",
        )
    return ar.map_batchwise(
        x, lambda s: F.interpolate(s, *args, **kwargs), F.interpolate(x.primal, *args, **kwargs)
    )


@register_rule(torch.masked_fill, torch.Tensor.masked_fill)
def _masked_fill(x: Jet, mask: Tensor, value: object) -> Jet:
    if ar.is_jet(value):
        return torch.where(mask, value, x)
    primal = x.primal.masked_fill(mask, value)
    series = ar.lifted_series(x, primal.dim()).masked_fill(mask, 0.0)
    return Jet(primal, series.expand(*series.shape[:2], *primal.shape), x.order)


def _splitting(fn: Callable[..., tuple[Tensor, ...]]) -> Callable[..., tuple[Jet, ...]]:
    def rule(x: Jet, *args, **kwargs) -> tuple[Jet, ...]:
        pieces = len(fn(x.primal, *args, **kwargs))
        return tuple(
            ar.map_per_sample(lambda t, i=i: fn(t, *args, **kwargs)[i], x) for i in range(pieces)
        )

    return rule


for _targets, _fn in [
    ((torch.Tensor.chunk, torch.chunk), torch.chunk),
    ((torch.Tensor.split, torch.split), torch.split),
    ((torch.Tensor.unbind, torch.unbind), torch.unbind),
    # The methods parse their arguments as the functions do, and accept x.hsplit(2, 1) too.
    ((torch.Tensor.tensor_split, torch.tensor_split), torch.Tensor.tensor_split),
    ((torch.Tensor.hsplit, torch.hsplit), torch.Tensor.hsplit),
    ((torch.Tensor.vsplit, torch.vsplit), torch.Tensor.vsplit),
    ((torch.Tensor.dsplit, torch.dsplit), torch.Tensor.dsplit),
    ((torch.Tensor.split_with_sizes, torch.split_with_sizes), torch.split_with_sizes),
    ((torch.Tensor.unsafe_split, torch.unsafe_split), torch.unsafe_split),
]:
    register_rule(*_targets)(_splitting(_fn))


def _primal_query(method: Callable[..., object]) -> Callable[..., object]:
    return lambda x, *args, **kwargs: method(x.primal, *args, **kwargs)


for _method in (
    torch.Tensor.size,
    torch.Tensor.dim,
    torch.Tensor.numel,
    torch.ones_like,
    torch.zeros_like,
    torch.full_like,
    torch.empty_like,
    torch.Tensor.new_zeros,
    torch.Tensor.new_ones,
    torch.Tensor.new_full,
    torch.Tensor.new_empty,
):
    # Shapes, and tensors built from a shape, do not depend on the input's values: constants.
    register_rule(_method)(_primal_query(_method))


# Piecewise-constant results (indices, signs, truth values, integers): read off the primal, they
# are constants with no series, like the branch of a ReLU. Python's `if` on them, `.item()` and
# `.tolist()` therefore see the values at the expansion point.
# Taylor continuation must not step past a change of these values (hope_attr.engine.kinks): each
# reports where its value changes, or that it cannot say (then continuation stops there).
def _integer_steps(x: object, *args: object, **kwargs: object) -> None:
    if ar.is_jet(x):
        _kinks.report(x, torch.floor(x.primal), torch.ceil(x.primal))


def _rounding_steps(x: object, *args: object, **kwargs: object) -> None:
    if ar.is_jet(x):
        nearest = torch.round(x.primal)
        _kinks.report(x, nearest - 0.5, nearest + 0.5)


_CHANGES_AT: dict[str, Callable[..., None] | None] = {
    "sign": lambda x, *a, **k: _kinks.report(x, 0.0),
    "signbit": lambda x, *a, **k: _kinks.report(x, 0.0),
    "floor": _integer_steps, "ceil": _integer_steps, "trunc": _integer_steps, "fix": _integer_steps,
    "round": _rounding_steps,
    # Never change along a finite path:
    "isnan": None, "isinf": None, "isfinite": None, "isneginf": None, "isposinf": None,
}  # fmt: skip


def _piecewise_constant(target: Callable[..., object], name: str) -> Callable[..., object]:
    report = _CHANGES_AT.get(name, lambda *a, **k: _kinks.report_unlocated(*a))

    def rule(*args: object, **kwargs: object) -> object:
        if report is not None:
            report(*args, **kwargs)
        return target(*ar.replace_jets(args), **kwargs)

    return rule


for _name in (
    "any", "all", "argmax", "argmin", "argsort", "isnan", "isinf", "isfinite", "isneginf",
    "isposinf", "sign", "signbit", "nonzero", "count_nonzero", "equal", "allclose", "isclose",
    "bucketize", "searchsorted", "floor", "ceil", "round", "trunc", "fix", "logical_not",
    "logical_and", "logical_or", "logical_xor", "bincount", "histc",
):  # fmt: skip
    for _home in (torch, torch.Tensor):
        _target = getattr(_home, _name, None)
        if _target is not None:
            register_rule(_target)(_piecewise_constant(_target, _name))


def _value_query(method: Callable[..., object], *, as_number: bool) -> Callable[..., object]:
    """A value leaving the jet (``.item()``, ``int(x)``...): where it changes is unknown.

    ``as_number``: the value may flow on as a number (``.item()``, ``float(x)``), which drops
    its dependence on the input: warn. Integer and truth values are steps (zero derivative).
    """

    def rule(x: Jet, *args: object, **kwargs: object) -> object:
        _kinks.report_unlocated(x)
        if as_number and x.primal.is_floating_point():
            _warn_dropped(_AS_WRITTEN.get(method.__name__, f"{method.__name__}()"))
        return method(x.primal, *args, **kwargs)

    return rule


def _warn_dropped(what: str) -> None:
    warnings.warn(
        f"hope_attr: {what} turns a value that depends on the input into a constant. A branch "
        "on it is fine (it is taken at the expansion point), but if it is used as a number the "
        "expansion misses that dependence, as autograd would. Keep it a tensor (no .item(), "
        "float(), .detach()) to expand through it.",
        DroppedDependenceWarning,
        stacklevel=user_stacklevel(),
    )


# How the user wrote the conversions that Python spells with a dunder.
_AS_WRITTEN = {"__float__": "float()", "__int__": "int()"}
# int(x), like float(x) and .item(), hands the value to Python, where the rule cannot see whether
# it becomes a branch or a factor: they warn alike. .long() and the other casts stay tensors.
for _method, _as_number in (
    (torch.Tensor.item, True), (torch.Tensor.tolist, True), (torch.Tensor.numpy, True),
    (torch.Tensor.__float__, True), (torch.Tensor.__int__, True), (torch.Tensor.long, False),
    (torch.Tensor.int, False), (torch.Tensor.bool, False), (torch.Tensor.short, False),
    (torch.Tensor.byte, False), (torch.Tensor.__bool__, False), (torch.Tensor.__index__, False),
):  # fmt: skip
    register_rule(_method)(_value_query(_method, as_number=_as_number))
register_rule(torch.Tensor.__len__)(_primal_query(torch.Tensor.__len__))


@register_rule(getattr)
def _getattr(x: Jet, name: str) -> object:
    if name in ("shape", "dtype", "device", "ndim", "is_cuda", "layout"):
        return getattr(x.primal, name)
    # A transpose is linear over the reals for complex jets too; the conjugating H and mH are
    # supported for real jets only (where they are transposes).
    if name in ("T", "mT") or (name in ("H", "mH") and not x.primal.is_complex()):
        return ar.map_per_sample(lambda t: getattr(t, name.upper() if name == "H" else name), x)
    if name in ("real", "imag"):
        return _spectral.part(x, name)
    if name == "data":  # the tensor outside autograd: a constant, as .detach() gives
        return _detach(x)
    if name == "grad":
        return None
    raise AttributeError(
        f"hope_attr: attribute '{name}' of a tensor that depends on the input is "
        "not supported on jets; read it from a tensor that does not depend on the input"
    )


def _conversion(method: Callable[..., Tensor]) -> Callable[..., Jet | Tensor]:
    """dtype/device conversions and copies act on primal and series alike; a conversion to an
    integer or boolean dtype is a step function, constant between its jumps (as ``.long()``)."""

    def rule(x: object, *args, **kwargs) -> Jet | Tensor | str:
        # `x.type_as(jet)`, `x.to(jet)`: the other tensor only names a dtype and device (and a
        # constant `mask.type_as(jet)` stays a constant).
        args = ar.replace_jets(args)
        if not ar.is_jet(x):
            return method(x, *args, **kwargs)
        primal = method(x.primal, *args, **kwargs)
        if isinstance(primal, str):  # x.type(): the type's name
            return primal
        if not (primal.is_floating_point() or primal.is_complex()):
            _kinks.report_unlocated(x)
            return primal
        return Jet(primal, method(x.series, *args, **kwargs), x.order)

    return rule


for _method in (
    torch.Tensor.to,
    torch.Tensor.type_as,
    torch.Tensor.type,
    torch.Tensor.float,
    torch.Tensor.double,
    torch.Tensor.half,
    torch.Tensor.bfloat16,
    torch.Tensor.cpu,
    torch.Tensor.cuda,
    torch.Tensor.clone,
    torch.clone,
):
    register_rule(_method)(_conversion(_method))


@register_rule(torch.Tensor.detach, torch.detach)
def _detach(x: Jet) -> Tensor:
    # Autograd treats a detached tensor as a constant; so do we, and say so.
    _warn_dropped("detach()")
    return x.primal.detach()


@register_rule(F.pad, torch.constant_pad_nd)
def _pad(x: Jet, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> Jet:
    """Padding is linear in the input, plus a constant fill: the fill value enters the primal
    only, and a padded entry's series is zero (reflect/replicate/circular copy entries, series
    and all)."""
    if mode == "constant" or isinstance(mode, (int, float)):  # constant_pad_nd(x, pad, value)
        fill = mode if isinstance(mode, (int, float)) else value
        primal = F.pad(x.primal, pad, "constant", fill)
        return ar.map_batchwise(x, lambda s: F.pad(s, pad, "constant", 0.0), primal)
    primal = F.pad(x.primal, pad, mode)
    return ar.map_batchwise(x, lambda s: F.pad(s, pad, mode), primal)


# The `*_copy` forms of views (torch.squeeze_copy...) compute what the views compute: the same
# rules. (Their decompositions are not all the same function: squeeze_copy's kept unit axes.)
for _name in dir(torch):
    # (detach_copy is a copy that forward-mode AD differentiates, unlike detach: not aliased.)
    if _name.endswith("_copy") and not _name.startswith(("_", "detach")):
        _view = getattr(torch, _name[: -len("_copy")], None) or getattr(
            torch.Tensor, _name[: -len("_copy")], None
        )
        _rule = _registry.function_rule(_view) if _view is not None else None
        if _rule is not None and _registry.function_rule(getattr(torch, _name)) is None:
            register_rule(getattr(torch, _name))(_rule)
