"""Taylor rules of reductions and running operations: ``sum``, ``mean``, ``nansum``, ``nanmean``,
``prod``, ``cumsum``, ``cumprod``, ``logsumexp``, ``logcumsumexp``, ``var``, ``std``,
``var_mean``, ``std_mean``.

Sums are linear: they act on every coefficient. A product is a tree of Cauchy products
(``log2 n`` of them), a running product a Hillis-Steele scan of them. ``logsumexp`` is
``log(sum(exp(x - c))) + c`` with ``c`` the primal's maximum, a constant that changes no
derivative; the variance is the mean of squared deviations, scaled by ``n / (n - correction)``.
Every rule warns when it reduces the batch axis (:func:`hope_attr.rules.checks.
warn_if_batch_coupled`); the selections (``max``, ``sort``...) are in
:mod:`hope_attr.rules.selections`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import register_rule
from hope_attr.rules.checks import reduced_dims, warn_if_batch_coupled
from hope_attr.rules.compositions import reduce_over
from hope_attr.rules.selections import drop_reduced


def _dim_argument(args: tuple, kwargs: dict) -> object:
    """The ``dim`` of ``sum(x, dim, keepdim, dtype=)`` (``None``: all), also given as ``axis``."""
    if "dim" in kwargs or "axis" in kwargs:
        return kwargs.get("dim", kwargs.get("axis"))
    if args and not isinstance(args[0], torch.dtype):
        return args[0]
    return None


def _linear_reduction(fn: Callable[..., Tensor], name: str) -> Callable[..., Jet]:
    """A sum, mean or running sum: linear, applied to every coefficient."""

    def rule(x: Jet, *args: object, **kwargs: object) -> Jet:
        warn_if_batch_coupled(x, _dim_argument(args, kwargs), name)
        return ar.map_per_sample(fn, x, *args, keep_constants=True, **kwargs)

    return rule


register_rule(torch.sum, torch.Tensor.sum)(_linear_reduction(torch.sum, "torch.sum"))
register_rule(torch.mean, torch.Tensor.mean)(_linear_reduction(torch.mean, "torch.mean"))
register_rule(torch.cumsum, torch.Tensor.cumsum)(_linear_reduction(torch.cumsum, "torch.cumsum"))


def _nan_reduction(mean: bool) -> Callable[..., Jet]:
    """``nansum``/``nanmean``: a NaN entry counts as absent, so its series does too."""
    name = "torch.nanmean" if mean else "torch.nansum"

    def rule(x: Jet, dim: object = None, keepdim: bool = False, *, dtype=None) -> Jet:  # noqa: ANN001
        warn_if_batch_coupled(x, dim, name)
        present = ~torch.isnan(x.primal)
        kept = torch.where(present, x, 0.0)
        total = ar.map_per_sample(
            lambda t: torch.sum(t, dim=dim, keepdim=keepdim, dtype=dtype), kept
        )
        if not mean:
            return total
        return total / present.sum(dim=dim, keepdim=keepdim).to(total.primal.dtype)

    return rule


register_rule(torch.nansum, torch.Tensor.nansum)(_nan_reduction(mean=False))
register_rule(torch.nanmean, torch.Tensor.nanmean)(_nan_reduction(mean=True))


# --------------------------------------------------------------------------- products
def _tree_product(x: Jet, dim: int) -> Jet:
    """The product over ``dim`` (kept, size 1) as ``log2 n`` rounds of pairwise products."""
    size = x.primal.shape[dim]
    if size == 0:
        shape = (*x.primal.shape[:dim], 1, *x.primal.shape[dim + 1 :])
        primal = x.primal.new_ones(shape)
        return Jet(primal, x.series.new_zeros((1, x.num_directions, *shape)), x.order)
    while size > 1:
        half = size // 2
        pairs = torch.narrow(x, dim, 0, half) * torch.narrow(x, dim, half, half)
        if size % 2:
            pairs = torch.cat([pairs, torch.narrow(x, dim, 2 * half, 1)], dim)
        x, size = pairs, pairs.primal.shape[dim]
    return x


@register_rule(torch.prod, torch.Tensor.prod)
def _prod(x: Jet, dim: object = None, keepdim: bool = False, *, dtype=None) -> Jet:  # noqa: ANN001
    if isinstance(dim, torch.dtype):  # torch.prod(x, torch.float64)
        dim, dtype = None, dim
    if dtype is not None:
        x = x.to(dtype)
    warn_if_batch_coupled(x, dim, "torch.prod")
    if x.primal.dim() == 0:
        return x
    if dim is None:
        product = _tree_product(torch.reshape(x, (-1,)), 0)
        series = product.series.reshape(*product.series.shape[:2])
        return Jet(torch.prod(x.primal), series, x.order)
    (dim,) = reduced_dims(x.primal.dim(), dim)
    product = _tree_product(x, dim)
    product = Jet(torch.prod(x.primal, dim, keepdim=True), product.series, x.order)
    return drop_reduced(product, (dim,), keepdim)


@register_rule(torch.cumprod, torch.Tensor.cumprod)
def _cumprod(x: Jet, dim: int, *, dtype=None) -> Jet:  # noqa: ANN001
    """A running product by the Hillis-Steele scan: ``y_i *= y_(i - s)`` for ``s = 1, 2, 4...``"""
    if dtype is not None:
        x = x.to(dtype)
    if x.primal.dim() == 0:
        return x
    (dim,) = reduced_dims(x.primal.dim(), dim)
    warn_if_batch_coupled(x, (dim,), "torch.cumprod")
    size, shift, running = x.primal.shape[dim], 1, x
    while shift < size:
        head = torch.narrow(running, dim, 0, shift)
        tail = torch.narrow(running, dim, shift, size - shift)
        running = torch.cat([head, tail * torch.narrow(running, dim, 0, size - shift)], dim)
        shift *= 2
    return Jet(torch.cumprod(x.primal, dim), running.series, x.order)


# --------------------------------------------------------------------------- log-sum-exp
def _shift(primal: Tensor, dims: tuple[int, ...]) -> Tensor:
    """The primal's maximum over ``dims`` (a constant), 0 where that is not finite."""
    top = torch.amax(primal, dims, keepdim=True)
    return torch.where(torch.isfinite(top), top, 0.0)


@register_rule(torch.logsumexp, torch.Tensor.logsumexp, torch.special.logsumexp)
def _logsumexp(x: Jet, dim: object = None, keepdim: bool = False) -> Jet:
    if x.primal.dim() == 0:
        return x
    dims = reduced_dims(x.primal.dim(), dim)
    warn_if_batch_coupled(x, dims, "torch.logsumexp")
    shift = _shift(x.primal, dims)
    total = ar.log(reduce_over(ar.exp(x - shift), dims, mean=False)) + shift
    primal = torch.logsumexp(x.primal, dims, keepdim=True)
    return drop_reduced(Jet(primal, total.series, x.order), dims, keepdim)


@register_rule(torch.logcumsumexp, torch.Tensor.logcumsumexp)
def _logcumsumexp(x: Jet, dim: int) -> Jet:
    # One shift per slice (its maximum): a prefix whose entries all lie more than ~700 below it
    # would underflow, far outside what a network computes.
    if x.primal.dim() == 0:
        return x
    dims = reduced_dims(x.primal.dim(), dim)
    warn_if_batch_coupled(x, dims, "torch.logcumsumexp")
    shift = _shift(x.primal, dims)
    running = ar.map_per_sample(lambda t: torch.cumsum(t, dims[0]), ar.exp(x - shift))
    total = ar.log(running) + shift
    primal = torch.logcumsumexp(x.primal, dims[0])
    # After a prefix of -inf entries (a mask) the output is -inf and stays there: series 0,
    # autograd's slope, where log of the running sum 0 would give inf * 0.
    return Jet(primal, torch.where(torch.isneginf(primal), 0.0, total.series), x.order)


# --------------------------------------------------------------------------- moments
def _variance_arguments(args: tuple, kwargs: dict) -> tuple[object, float, bool]:
    """``(dim, correction, keepdim)`` from any of ``var``'s call forms: ``var(x, unbiased)``,
    ``var(x, dim, unbiased, keepdim)``, ``var(x, dim, *, correction, keepdim)``."""
    rest = list(args)
    dim, unbiased = kwargs.get("dim"), kwargs.get("unbiased")
    correction, keepdim = kwargs.get("correction"), kwargs.get("keepdim", False)
    if rest and isinstance(rest[0], bool):
        unbiased = rest.pop(0)
    elif rest:
        dim = rest.pop(0)
    if rest:
        unbiased = rest.pop(0)
    if rest:
        keepdim = rest.pop(0)
    if correction is None:
        correction = 0 if unbiased is False else 1
    return dim, float(correction), keepdim


def _moments(x: Jet, args: tuple, kwargs: dict, op: str) -> tuple[Jet, Jet, tuple, bool]:
    """``(variance, mean, dims, keepdim)``, both kept over the reduced axes."""
    dim, correction, keepdim = _variance_arguments(args, kwargs)
    dims = reduced_dims(x.primal.dim(), dim)
    warn_if_batch_coupled(x, dims, op)
    count = math.prod(x.primal.shape[d] for d in dims) if x.primal.dim() else 1
    mean = reduce_over(x, dims, mean=True) if x.primal.dim() else x
    centered = x - mean
    squares = reduce_over(centered * centered, dims, mean=False) if x.primal.dim() else centered
    divisor = count - correction
    variance = squares * (1.0 / divisor if divisor > 0 else math.inf)
    primal = torch.var(x.primal, dims if x.primal.dim() else None, correction=correction,
                       keepdim=bool(x.primal.dim()))  # fmt: skip
    return Jet(primal, variance.series, x.order), mean, dims, keepdim


def _root(variance: Jet) -> Jet:
    """The standard deviation. At zero variance (a constant slice) it is a cone, whose series
    would be inf * 0; autograd's std takes slope 0 there, and so does this (as vector_norm at 0)."""
    primal = variance.primal.sqrt()
    series = ar.power(variance, 0.5).series
    return Jet(primal, torch.where(primal == 0, 0.0, series), variance.order)


def _moment_rule(root: bool, with_mean: bool) -> Callable[..., object]:
    name = ("torch.std" if root else "torch.var") + ("_mean" if with_mean else "")

    def rule(x: Jet, *args: object, **kwargs: object) -> object:
        variance, mean, dims, keepdim = _moments(x, args, kwargs, name)
        spread = _root(variance) if root else variance
        spread = drop_reduced(spread, dims, keepdim)
        return (spread, drop_reduced(mean, dims, keepdim)) if with_mean else spread

    return rule


register_rule(torch.var, torch.Tensor.var)(_moment_rule(root=False, with_mean=False))
register_rule(torch.std, torch.Tensor.std)(_moment_rule(root=True, with_mean=False))
register_rule(torch.var_mean)(_moment_rule(root=False, with_mean=True))
register_rule(torch.std_mean)(_moment_rule(root=True, with_mean=True))
