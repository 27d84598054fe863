"""Taylor rules of Fourier transforms and complex values: ``torch.fft.*``, ``view_as_complex``,
``view_as_real``, ``torch.complex``, ``.real``/``.imag``, ``conj``, ``resolve_conj``,
``resolve_neg`` and ``abs`` of a complex jet.

Every discrete Fourier transform is linear over the reals, so it acts on every coefficient, and
is cheap: one transform of the stacked series (through ``torch.vmap``, so ``dim`` keeps its
meaning in the model's layout). A complex jet holds complex coefficients of a real parameter
``t``: products with complex weights (a global filter, rotary embeddings) are the usual Cauchy
products. ``abs`` of a complex value is ``sqrt(re^2 + im^2)``, with the cone at 0 treated as
:func:`torch.linalg.vector_norm` treats it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import kinks as _kinks
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import register_rule
from hope_attr.rules.checks import warn_if_batch_coupled

# The axes each kind of transform runs over when its call names none (None: every axis).
_SHIFTS = {"fftshift", "ifftshift"}  # (input, dim=None)
_ALL_AXES = {"fftn", "ifftn", "rfftn", "irfftn", "hfftn", "ihfftn"}  # (input, s, dim=None)
_LAST_TWO = {"fft2", "ifft2", "rfft2", "irfft2", "hfft2", "ihfft2"}  # (input, s, dim=(-2, -1))
_TRANSFORMS = (
    "fft", "ifft", "rfft", "irfft", "hfft", "ihfft", *sorted(_LAST_TWO), *sorted(_ALL_AXES),
    *sorted(_SHIFTS),
)  # fmt: skip


def _transformed_axes(name: str, args: tuple, kwargs: dict) -> object:
    """The ``dim`` that ``torch.fft.<name>(x, *args, **kwargs)`` transforms (``None``: all)."""
    if name in _SHIFTS:
        return kwargs.get("dim", args[0] if args else None)
    if "dim" in kwargs or len(args) > 1:
        return kwargs.get("dim", args[1] if len(args) > 1 else None)
    if name in _LAST_TWO:
        return (-2, -1)
    if name in _ALL_AXES:  # fftn(x, s): the last len(s) axes
        shape = kwargs.get("s", args[0] if args else None)
        return None if shape is None else tuple(range(-len(shape), 0))
    return -1


def _transform(name: str) -> Callable[..., Jet]:
    function = getattr(torch.fft, name)

    def rule(x: Jet, *args: object, **kwargs: object) -> Jet:
        # A transform (or shift) over axis 0 mixes the examples: fft(x, dim=0), fft2 of a
        # (B, N) tensor, fftshift(x) without dim.
        warn_if_batch_coupled(x, _transformed_axes(name, args, kwargs), f"torch.fft.{name}")
        return ar.map_per_sample(lambda t: function(t, *args, **kwargs), x)

    return rule


for _name in _TRANSFORMS:
    register_rule(getattr(torch.fft, _name))(_transform(_name))


def _both(fn: Callable[[Tensor], Tensor]) -> Callable[[Jet], Jet]:
    """An op that acts on the trailing axes alike in the model's layout and in the series
    (which only prepends the order and direction axes): applied to both directly."""

    def rule(x: Jet) -> Jet:
        series = ar.expanded_series(x).contiguous()
        return Jet(fn(x.primal.contiguous()), fn(series), x.order)

    return rule


register_rule(torch.view_as_complex)(_both(torch.view_as_complex))
register_rule(torch.view_as_real)(_both(torch.view_as_real))
register_rule(torch.real)(_both(torch.real))
register_rule(torch.imag)(_both(torch.imag))
register_rule(torch.conj, torch.Tensor.conj, torch.conj_physical, torch.Tensor.conj_physical)(
    _both(torch.conj_physical)
)


def _resolved(resolve: Callable[[Tensor], Tensor]) -> Callable[[Jet], Jet]:
    """``resolve_conj``/``resolve_neg``: ``ifft`` of a real input returns a lazy conjugate (and
    its ``.imag`` a lazy negation), on the primal and on every coefficient alike; resolving only
    one of them would leave ``view_as_real`` refusing the other."""

    def rule(x: Jet) -> Jet:
        return Jet(resolve(x.primal), resolve(x.series), x.order)

    return rule


register_rule(torch.resolve_conj, torch.Tensor.resolve_conj)(_resolved(torch.resolve_conj))
register_rule(torch.resolve_neg, torch.Tensor.resolve_neg)(_resolved(torch.resolve_neg))


@register_rule(torch.complex)
def _complex(real: object, imag: object) -> Jet:
    out = real + imag * 1j
    # A real jet plus a complex constant keeps real coefficients: make them complex too.
    return Jet(out.primal, out.series.to(out.primal.dtype), out.order)


def part(x: Jet, name: str) -> Jet:
    """``x.real`` or ``x.imag`` of a jet (complex or real).

    Example:
        >>> import torch
        >>> from hope_attr import Jet
        >>> from hope_attr.rules.spectral import part
        >>> z = Jet(torch.tensor([1 + 2j]), torch.tensor([[[3 + 4j]]]), order=1)
        >>> part(z, "imag").primal.tolist(), part(z, "imag").series.flatten().tolist()
        ([2.0], [4.0])
    """
    if not x.primal.is_complex():
        return x if name == "real" else x * 0.0
    return _both(torch.real if name == "real" else torch.imag)(x)


def complex_abs(x: Jet) -> Jet:
    """``|z| = sqrt(re^2 + im^2)``; at 0 the slope PyTorch takes there (0), not the cone's NaN.

    Example:
        >>> import torch
        >>> from hope_attr import Jet
        >>> from hope_attr.rules.spectral import complex_abs
        >>> z = Jet(torch.tensor([3 + 4j], dtype=torch.complex128),
        ...         torch.tensor([[[3 + 4j]]], dtype=torch.complex128), order=2)
        >>> series = complex_abs(z).full_series().flatten()  # |(3 + 4i)(1 + t)| = 5 (1 + t)
        >>> torch.allclose(series, torch.tensor([5.0, 0.0], dtype=torch.float64))
        True
    """
    real, imag = part(x, "real"), part(x, "imag")
    modulus = torch.linalg.vector_norm(torch.stack([real, imag], -1), dim=-1)
    _kinks.report(modulus, 0.0)
    return Jet(torch.abs(x.primal), modulus.series, x.order)
