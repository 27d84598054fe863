"""One attribution call's computation: expand at the inputs, estimate, finish by the method's rule.

:func:`compute` returns a :class:`Computation`, the per-group (or per-feature) values of every
output expanded, before a target is selected. Its methods select and spread them on request, so
that the largest tensors of a call (the terms of every output on every feature) are built only
when asked for.

The terms carry FeatureAblation's sign: ``-c_k`` for the coefficient ``c_k`` of the move to the
baseline, so that they sum to the attribution.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from captum._utils.progress import NullProgress, progress
from captum._utils.typing import TargetType
from torch import Tensor

from hope_attr.attribution import convergence as _convergence
from hope_attr.attribution import groups as _groups
from hope_attr.attribution.arguments import select_outputs, select_target
from hope_attr.attribution.convergence import Diagnostics
from hope_attr.attribution.methods import Method, Series
from hope_attr.engine import kinks as _kinks
from hope_attr.engine.expansion import Expansion

__all__ = ["Call", "Computation", "compute"]


@dataclass(frozen=True)
class Call:
    """One call's formatted arguments (:mod:`hope_attr.attribution.arguments`).

    Attributes:
        inputs: per model input ``(B, *I)``, detached.
        baselines: shaped like the inputs.
        masks: per input the group id of every feature ``(B, *I)``; ``None`` without a mask.
        extra: the additional forward arguments.
        target: the output expanded alone, or ``None`` for every output.
        directions_per_chunk: directions propagated at once (``None``: the engine decides).
        progress_label: the title of a progress bar over the directions (``None``: no bar).
    """

    inputs: tuple[Tensor, ...]
    baselines: tuple[Tensor, ...]
    masks: tuple[Tensor, ...] | None
    extra: tuple[Any, ...]
    target: TargetType = None
    directions_per_chunk: int | None = None
    progress_label: str | None = None


@dataclass(frozen=True)
class Computation:
    """What one expansion produced, before a target is selected.

    Without a feature mask and where the attributions are the series' sums, everything is kept
    per feature (``feature_*``); otherwise per group (``group_*``, groups last), and spread to
    the inputs' layout only when asked for, after the target is selected where there is one.

    Attributes:
        feature_terms: per input the signed terms ``(n, B, *O, *I)``, or ``None``.
        group_terms: the signed terms per group ``(n, B, *O, G)``, or ``None``.
        feature_attributions: per input ``(B, *O, *I)``, or ``None``.
        group_attributions: ``(B, *O, G)``, or ``None``.
        output_shape: ``O``, the outputs expanded per example (``()`` for a target alone).
        groups: per input, every feature's group id ``(B, *I)``.
        radius, error, converged, steps: per group ``(B, G)``, see :class:`~hope_attr.Diagnostics`.
        higher_orders_vanish: every order ``>= 2`` is zero (``None`` at order 1).
        piecewise_rule_ran: a rule with a kink ran (ReLU, max pooling, clamp, abs...).
    """

    feature_terms: tuple[Tensor, ...] | None
    group_terms: Tensor | None
    feature_attributions: tuple[Tensor, ...] | None
    group_attributions: Tensor | None
    output_shape: torch.Size
    groups: tuple[Tensor, ...]
    radius: Tensor
    error: Tensor
    converged: Tensor
    steps: Tensor | None
    higher_orders_vanish: bool | None
    piecewise_rule_ran: bool

    def terms(self) -> tuple[Tensor, ...]:
        """Per input, the signed order-k terms of every output ``(n, B, *O, *I)``."""
        if self.feature_terms is not None:
            return self.feature_terms
        assert self.group_terms is not None
        return _groups.spread(self.group_terms, self.groups, 1)

    def attributions(self) -> tuple[Tensor, ...]:
        """Per input, the attributions of every output ``(B, *O, *I)``."""
        if self.feature_attributions is not None:
            return self.feature_attributions
        assert self.group_attributions is not None
        return _groups.spread(self.group_attributions, self.groups, 0)

    def target_terms(self, target: TargetType) -> tuple[Tensor, ...]:
        """Per input, the signed order-k terms of ``target`` ``(n, B, *I)``."""
        if self.feature_terms is not None:
            return tuple(select_target(t, target, self.output_shape) for t in self.feature_terms)
        assert self.group_terms is not None
        # Select, then spread: the spread of every output is the call's largest tensor.
        selected = select_target(self.group_terms, target, self.output_shape)
        return _groups.spread(selected, self.groups, 1)

    def target_attributions(self, target: TargetType) -> tuple[Tensor, ...]:
        """Per input, the attributions of ``target`` ``(B, *I)``."""
        if self.feature_attributions is not None:
            return tuple(
                select_target(a.unsqueeze(0), target, self.output_shape)[0]
                for a in self.feature_attributions
            )
        assert self.group_attributions is not None
        selected = select_target(self.group_attributions.unsqueeze(0), target, self.output_shape)
        return tuple(part[0] for part in _groups.spread(selected, self.groups, 1))

    def diagnostics(self, is_tuple: bool) -> Diagnostics:
        """The estimates per feature, in the inputs' form (a tensor, or a tuple)."""

        def spread(values: Tensor | None) -> Any:
            if values is None:
                return None
            parts = _groups.spread(values, self.groups, 0)
            return parts if is_tuple else parts[0]

        return Diagnostics(
            radius=spread(self.radius),
            error=spread(self.error),
            converged=spread(self.converged),
            steps=spread(self.steps),
        )


def compute(forward_func: Any, method: Method, order: int, rtol: float, call: Call) -> Computation:
    """Expand ``forward_func`` at the call's inputs and finish by ``method``'s rule.

    With ``call.target`` only that output of each example is expanded (the computation's
    outputs are then scalars, ``output_shape == ()``).
    """
    select = None if call.target is None else functools.partial(select_outputs, call.target)
    with _kinks.watch(measure=False) as piecewise:
        expansion = Expansion(
            forward_func, call.inputs, order, call.extra, call.directions_per_chunk, select
        )
        feature_terms, group_terms = _signed_terms(method, expansion, call, order)
    output_shape = expansion.output.shape[1:]
    groups = call.masks if call.masks is not None else _groups.feature_ids(call.inputs)
    # The series of each feature's (group's) move, in the layout (n, B, *O, G). The terms carry
    # FeatureAblation's sign, the series the opposite one: norms do not see the sign, so the
    # terms serve as they are (a negated copy would be one more tensor of that size).
    if group_terms is None:
        assert feature_terms is not None
        flat = [t.reshape(*t.shape[: 2 + len(output_shape)], -1) for t in feature_terms]
        terms = flat[0] if len(flat) == 1 else torch.cat(flat, -1)
    else:
        terms = group_terms
    norms = _convergence.coefficient_norms(terms, len(output_shape))  # (n, B, G)
    radius = _convergence.radius(norms)
    error = _convergence.truncation_error(norms)
    # rtol is relative to the largest output, also where only the target was expanded.
    scale = expansion.model_output.abs().reshape(expansion.model_output.shape[0], -1).amax(1)
    tolerance = rtol * scale.clamp_min(torch.finfo(scale.dtype).tiny)  # (B,)
    series = Series(
        forward_func, call.inputs, call.baselines, groups, expansion, order,
        -terms.sum(0), radius, error, tolerance, piecewise.seen, call.directions_per_chunk,
    )  # fmt: skip
    del terms
    per_group, steps = method.finish(series)
    per_feature = call.masks is None and method.sums_series
    return Computation(
        feature_terms=feature_terms,
        group_terms=group_terms,
        feature_attributions=tuple(t.sum(0) for t in feature_terms) if per_feature else None,
        group_attributions=None if per_feature else -per_group,
        output_shape=output_shape,
        groups=groups,
        radius=radius,
        error=error,
        converged=(radius > 1) & (error <= tolerance[:, None]),
        steps=steps,
        higher_orders_vanish=_orders_vanish(norms),
        piecewise_rule_ran=piecewise.seen,
    )


def _orders_vanish(norms: Tensor) -> bool | None:
    """Every order ``>= 2`` is zero while order 1 is not (``None`` at order 1)."""
    if norms.shape[0] < 2:
        return None
    return bool((norms[1:] == 0).all()) and bool((norms[0] > 0).any())


def _signed_terms(
    method: Method, expansion: Expansion, call: Call, order: int
) -> tuple[tuple[Tensor, ...] | None, Tensor | None]:
    """The signed order-k terms: per input ``(n, B, *O, *I)`` without a feature mask, else per
    group ``(n, B, *O, G)``; the other one is ``None``."""
    steps = tuple(b - x for x, b in zip(expansion.inputs, call.baselines, strict=True))
    bar = _progress_bar(call.progress_label, steps, call.masks)
    try:
        if call.masks is None:
            coefficients = method.coefficients(expansion, bar.update)
            terms = tuple(
                _times_powers(c, step, order) for c, step in zip(coefficients, steps, strict=True)
            )
            return terms, None
        directions = _groups.directions(call.masks, steps)  # (G, B, *I) each
        coefficients = expansion.directional_coefficients(directions, bar.update)  # (n, G, B, *O)
        return None, -coefficients.movedim(1, -1)  # (n, B, *O, G)
    finally:
        bar.close()


def _times_powers(coefficients: Tensor, step: Tensor, order: int) -> Tensor:
    """``-coefficients * step^k``: the signed terms ``(n, B, *O, *I)``, in place where the dtype
    allows (the coefficients are the call's own, and as large as the terms: resnet18 at 224 px,
    every class, 2.2 GB at order 4)."""
    powers = _powers(step, order, coefficients.dim() - step.dim() - 1)
    if torch.result_type(coefficients, powers) != coefficients.dtype:
        return -coefficients * powers
    return coefficients.mul_(powers).neg_()


def _powers(step: Tensor, order: int, output_dims: int) -> Tensor:
    """``(n, B, 1.., *I)``: ``step^k`` for ``k = 1..n``, aligned with ``(n, B, *O, *I)``."""
    powers = torch.stack([step**k for k in range(1, order + 1)])
    return powers.reshape(order, step.shape[0], *([1] * output_dims), *step.shape[1:])


def _progress_bar(
    label: str | None, steps: tuple[Tensor, ...], masks: tuple[Tensor, ...] | None
) -> Any:
    if label is None:
        return NullProgress()
    # Counted in directions (features or groups): chunk sizes are only known once running.
    total = _groups.count(masks) if masks is not None else sum(s[0].numel() for s in steps)
    return progress(desc=label, total=total)
