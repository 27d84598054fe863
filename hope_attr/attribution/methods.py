"""The three ``method=`` values of :class:`~hope_attr.HOPEAttribution`, as one table.

Every method expands the model at the inputs (:mod:`hope_attr.attribution.computation`); they
differ in three places only, which :class:`Method` names:

* where the coefficients of a feature's series come from (the exact jets, or the HOPE paper's
  one-sweep rule of :mod:`hope_attr.attribution.diagonal`), and whether groups can move at once;
* what is done where the series does not reach the baseline: warn (``"exact"``,
  ``"diagonal"``), or evaluate the model there (``"continuation"``,
  :mod:`hope_attr.attribution.continuation`);
* whether the target is expanded alone (``"exact"``: a locally affine model then needs one
  backward pass, :mod:`hope_attr.engine.reverse`) or every output (the others keep them all).

Adding a method is adding a row to :data:`METHODS`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hope_attr.attribution import groups as _groups
from hope_attr.attribution.continuation import continue_paths
from hope_attr.attribution.convergence import ConvergenceWarning
from hope_attr.attribution.diagonal import diagonal_coefficients
from hope_attr.engine.expansion import Expansion
from hope_attr.engine.stacklevel import user_stacklevel

__all__ = ["METHODS", "Method", "Series", "method_named"]


@dataclass(frozen=True)
class Series:
    """What the expansion at the inputs says about every feature's (group's) move, ``G`` of them.

    Attributes:
        forward_func: the model.
        inputs: the expansion points, one tensor per model input ``(B, *I)``.
        baselines: the baselines, shaped like the inputs.
        groups: per input, every feature's group id ``(B, *I)``.
        expansion: the expansion at ``inputs``.
        order: the Taylor order.
        per_group: ``(B, *O, G)``: the ablation as the series at ``inputs`` predicts it.
        radius: ``(B, G)``: the estimated radius of convergence, in units of the move.
        error: ``(B, G)``: the estimated truncation error at the baseline.
        tolerance: ``(B,)``: the error allowed, ``rtol`` times the largest output.
        piecewise_rule_ran: whether a rule with a kink (ReLU, max pooling...) ran.
        directions_per_chunk: directions propagated at once (``None``: the engine decides).
    """

    forward_func: Callable[..., Tensor]
    inputs: tuple[Tensor, ...]
    baselines: tuple[Tensor, ...]
    groups: tuple[Tensor, ...]
    expansion: Expansion
    order: int
    per_group: Tensor
    radius: Tensor
    error: Tensor
    tolerance: Tensor
    piecewise_rule_ran: bool
    directions_per_chunk: int | None


Coefficients = Callable[[Expansion, Callable[[int], None]], list[Tensor]]
Finish = Callable[[Series], tuple[Tensor, "Tensor | None"]]


@dataclass(frozen=True)
class Method:
    """One row of the method table.

    Attributes:
        name: the ``method=`` value.
        coefficients: per input, the normalized coefficients ``(n, B, *O, *I)`` of every
            feature's series along its unit direction (called with a progress callback).
        finish: ``Series -> (per_group, steps)``: the attributions per group ``(B, *O, G)``
            and, where paths were continued, the steps each took ``(B, G)``.
        sums_series: the attributions are the series' sums (kept per feature without a mask;
            a piecewise-linear model then warns, since every order ``>= 2`` is zero).
        expands_target_alone: ``attribute`` with a target expands that output alone.
        min_order: the lowest order the method works at, and why (empty at order 1).
        groups_refused: why ``feature_mask`` groups cannot move at once (``None``: they can).
    """

    name: str
    coefficients: Coefficients
    finish: Finish
    sums_series: bool = True
    expands_target_alone: bool = False
    min_order: tuple[int, str] = (1, "")
    groups_refused: str | None = None

    def check(self, order: int) -> None:
        """Raise ``ValueError`` if the method cannot work at ``order``."""
        lowest, why = self.min_order
        if order < lowest:
            raise ValueError(f"method={self.name!r} needs order >= {lowest} ({why})")

    def check_groups(self, feature_mask: Any) -> None:
        """Raise ``ValueError`` if the method cannot move ``feature_mask`` groups."""
        if feature_mask is not None and self.groups_refused is not None:
            raise ValueError(self.groups_refused)


def _unmixed(expansion: Expansion, on_chunk: Callable[[int], None]) -> list[Tensor]:
    return expansion.unmixed_coefficients(on_chunk)


def _diagonal(expansion: Expansion, on_chunk: Callable[[int], None]) -> list[Tensor]:
    return diagonal_coefficients(expansion)  # one sweep: nothing to count


def _warn_if_diverging(series: Series) -> tuple[Tensor, None]:
    diverging = int((series.radius <= 1).sum())
    if diverging:
        warnings.warn(
            f"{diverging} of {series.radius.numel()} features (or groups, over the batch) move "
            "to a baseline outside the estimated radius of convergence of their Taylor series at "
            f"order {series.order}: their attributions are unreliable, and more orders make them "
            "worse. Use method='continuation' for FeatureAblation's values, or "
            "attribute_with_details() for the estimate per feature (its diagnostics).",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
    return series.per_group, None


def _continue_unsettled(series: Series) -> tuple[Tensor, Tensor]:
    """Keep the series where it converges to the tolerance; elsewhere ``f`` at the baseline."""
    radius, error = series.radius, series.error
    steps = torch.zeros(radius.shape, dtype=torch.long, device=radius.device)
    moved = _groups.moved(series.baselines, series.inputs, series.groups)  # (B, G)
    # A kink may lie on any path: no series is trusted where a piecewise rule ran.
    settled = (radius > 2) & (error <= series.tolerance[:, None]) & (not series.piecewise_rule_ran)
    example, group = torch.nonzero(moved & ~settled, as_tuple=True)
    if not example.numel():
        return series.per_group, steps
    moves = _groups.path_moves(series.inputs, series.baselines, series.groups, example, group)
    ends, taken = continue_paths(
        series.forward_func,
        series.inputs,
        moves,
        example,
        series.expansion.extra,
        series.order,
        series.tolerance[example],
        series.directions_per_chunk,
    )
    change = ends - series.expansion.output[example]  # (P, *O)
    per_group = series.per_group.movedim(-1, 1).clone()  # (B, G, *O)
    per_group[example, group] = change
    steps[example, group] = taken
    return per_group.movedim(1, -1), steps


METHODS: dict[str, Method] = {
    "exact": Method("exact", _unmixed, _warn_if_diverging, expands_target_alone=True),
    "diagonal": Method(
        "diagonal",
        _diagonal,
        _warn_if_diverging,
        groups_refused=(
            "method='diagonal' propagates one feature per direction; it cannot move a "
            "feature_mask group together. Use method='exact' with feature_mask."
        ),
    ),
    "continuation": Method(
        "continuation",
        _unmixed,
        _continue_unsettled,
        sums_series=False,
        min_order=(2, "its step control compares the last two orders; order=4 is a good default"),
    ),
}


def method_named(name: str) -> Method:
    """The table's row for ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).

    Example:
        >>> method_named("continuation").sums_series
        False
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}")
    return METHODS[name]
