"""HOPEAttribution: Captum's FeatureAblation, predicted by exact high-order Taylor expansions.

For each feature ``i`` (or ``feature_mask`` group), Captum's FeatureAblation measures
``f_t(x) - f_t(x with the feature set to its baseline)``. Moving the feature from ``x`` to ``b``
is the direction ``v = (b - x) e_i``, so with the Taylor coefficients ``c_k`` of
``t -> f_t(x + t v)`` the ablation is ``-(c_1 + ... + c_n)`` up to the remainder of order
``n + 1``: the HOPE paper's ``sum_k d^k y / k! dx^k`` with ``dx = b - x``, in FeatureAblation's
sign. One jet per feature (or group) serves every output class at once.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from captum._utils.progress import NullProgress, progress
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from hope_attr.attribution import convergence as _convergence
from hope_attr.attribution.continuation import continue_paths
from hope_attr.attribution.convergence import (
    ConvergenceWarning,
    Diagnostics,
    PiecewiseLinearWarning,
)
from hope_attr.engine import kinks as _kinks
from hope_attr.engine import threads as _threads
from hope_attr.engine.expansion import Expansion
from hope_attr.engine.stacklevel import user_stacklevel

TargetType = Any  # Captum's: None, int, tuple, list of int/tuple, or tensor
_METHODS = ("exact", "diagonal", "continuation")


class HOPEAttribution(Attribution):
    """High-order Taylor attribution that predicts Captum's ``FeatureAblation``.

    Which ``method`` to choose (details and measured costs: ``docs/concepts.md``):

    * ``"exact"`` sums the order-``n`` Taylor series of each feature's move to its baseline.
      Cheapest, and it also gives the per-order terms; right when the baseline lies inside the
      series' radius of convergence. Where the estimate says it does not, the call warns with
      :class:`~hope_attr.ConvergenceWarning` (``return_diagnostics`` has the estimate per
      feature).
    * ``"continuation"`` keeps the series where it converges to ``rtol`` and gives every other
      feature (every feature, where a branch decision such as a ReLU or a ``torch.where`` on a
      comparison lies on its path) ``f`` at its baseline by one forward pass: FeatureAblation's
      values for every output at once.
    * ``"diagonal"`` is the HOPE paper's one-sweep backward rule: exact only at order 1 or for
      networks with one hidden layer (see :mod:`hope_attr.attribution.diagonal`).

    On piecewise-linear networks (ReLU, max pooling, clamp, abs) every order ``>= 2`` is zero,
    so ``"exact"``/``"diagonal"`` at any order equal order 1, i.e. Captum's ``InputXGradient``
    times ``(x - baseline)``, exact only up to the first kink on each path: the call warns once
    per object with :class:`~hope_attr.PiecewiseLinearWarning` and sets
    :attr:`higher_orders_vanish`. Use ``method="continuation"`` to get the ablation itself.
    On such networks, ``attribute`` with a target costs one backward pass
    (:mod:`hope_attr.engine.reverse`).

    Example:
        >>> import torch, hope_attr
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).eval()
        >>> x = torch.rand(4, 3)
        >>> attribution = hope_attr.HOPEAttribution(model, order=4).attribute(x, target=1)
        >>> attribution.shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        order: int = 4,
        method: str = "exact",
        rtol: float = 1e-6,
    ) -> None:
        """Set up the attribution of ``forward_func``.

        Args:
            forward_func: the model or function to explain, ``(B, *I) -> (B, *O)``; see
                :func:`hope_attr.unmixed_derivatives` for what it may contain.
            order: the Taylor order ``n >= 1`` (``>= 2`` for ``"continuation"``, whose step
                control compares the last two orders). Order 1 is ``(x - b) * gradient``.
            method: ``"exact"``, ``"continuation"`` or ``"diagonal"`` (see the class docs).
            rtol: tolerance of the truncation error relative to the largest output
                ``|f(x)|`` of the example: the accuracy ``"continuation"`` aims at, and the
                threshold of ``converged`` in the diagnostics.

        Raises:
            ValueError: a bad ``order``, ``method`` or ``rtol``.

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).eval()
            >>> hope_attr.HOPEAttribution(model, order=6, method="continuation").method
            'continuation'
        """
        super().__init__(forward_func)
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        if method == "continuation" and order < 2:
            raise ValueError(
                "method='continuation' needs order >= 2 (its step control compares the last two "
                "orders); order=4 is a good default"
            )
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
            raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
        self.order = order
        self.method = method
        self.rtol = float(rtol)
        # Results of the last call, not configuration: private, so that the configuration is
        # exactly the public attributes (hope_attr.audit records and compares them).
        self._higher_orders_vanish: bool | None = None
        self._warned_piecewise_linear = False

    @property
    def higher_orders_vanish(self) -> bool | None:
        """After each call: whether every order ``>= 2`` was zero for all features
        (piecewise-linear model around the inputs); ``None`` before the first call or at
        ``order=1``."""
        return self._higher_orders_vanish

    @classmethod
    def get_name(cls) -> str:
        # Captum splits CamelCase ("H O P E Attribution"); progress bars show this name.
        return "HOPE"

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    @_threads.on_free_cores
    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: Any = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        return_orders: bool = False,
        internal_batch_size: int | None = None,
        show_progress: bool = False,
        return_convergence_delta: bool = False,
        return_diagnostics: bool = False,
    ) -> Any:
        """Predict FeatureAblation's attributions from the order-``n`` expansion at ``inputs``.

        Args:
            inputs: a tensor ``(B, *I)`` or a tuple of them; the expansion point.
            baselines: what a feature is set to, as in Captum: ``None`` (zero), a number, a
                tensor shaped like the input or with batch 1, or a tuple of those per input.
            target: the output to explain, as in Captum (int, tuple for outputs with more
                than 2 axes, or a list/1-d tensor with one per example); ``None`` for scalar
                outputs. For every output at once use :meth:`attribute_all_targets`.
            additional_forward_args: passed to ``forward_func`` after the inputs: a value or
                a tuple of values; tensors must be entries of the tuple (not inside lists).
            feature_mask: integer group ids ``0..G-1`` broadcastable to each input (a tuple
                for tuple inputs; ids shared across inputs form one group). A group is moved
                to its baseline as one direction, exactly as FeatureAblation ablates it.
            return_orders: also return the per-order terms ``(order, *input.shape)`` (one per
                input) of the series at ``inputs``; they sum to the attributions except where
                ``"continuation"`` evaluated the baseline instead.
            internal_batch_size: directions propagated at once (memory).
            show_progress: a progress bar over the feature directions (advanced chunk by chunk).
            return_convergence_delta: also return Captum's completeness delta per example,
                ``sum over features/groups of attributions - (f(x) - f(baselines))``: what the
                unmixed expansion leaves out (interactions plus truncation).
            return_diagnostics: also return a :class:`hope_attr.Diagnostics` with, per feature,
                the estimated radius of convergence, truncation error and steps taken.

        Returns:
            ``attributions`` shaped like ``inputs``; with ``return_orders`` then
            ``(attributions, orders)``; the delta and then the diagnostics follow, if asked.

        Warns:
            ConvergenceWarning: ``method="exact"`` and some features' baselines lie outside the
                estimated radius of convergence (the message says how many).
            PiecewiseLinearWarning: every order ``>= 2`` is zero (once per object).
        """
        is_tuple = isinstance(inputs, tuple)
        inputs_tuple = _detached(inputs)
        # "exact" expands the target outputs alone: the jets carry every output anyway, but a
        # locally affine model's reverse mode then needs one backward pass instead of one per
        # output (hope_attr.engine.reverse). Continuation and the paper's rule keep every output.
        preselect = target is not None and self.method == "exact"
        result = self._checked_compute(
            inputs_tuple, baselines, feature_mask, additional_forward_args, internal_batch_size,
            show_progress, target if preselect else None,
        )  # fmt: skip
        remaining_target = None if preselect else target
        attributions = result.target_attributions(remaining_target)
        results: list[Any] = [attributions if is_tuple else attributions[0]]
        if return_orders:
            selected = tuple(
                _select_target(t, remaining_target, result.output_shape) for t in result.terms()
            )
            results.append(selected if is_tuple else selected[0])
        if return_convergence_delta:
            results.append(
                self.compute_convergence_delta(
                    attributions,
                    result.baselines,
                    inputs_tuple,
                    target,
                    additional_forward_args,
                    result.masks,
                )
            )
        if return_diagnostics:
            results.append(result.diagnostics(is_tuple))
        return results[0] if len(results) == 1 else tuple(results)

    @_threads.on_free_cores
    def attribute_all_targets(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        return_orders: bool = False,
        internal_batch_size: int | None = None,
        show_progress: bool = False,
        return_diagnostics: bool = False,
    ) -> Any:
        """The attributions of every output at the cost of one call: ``(B, *O, *I)``.

        ``result[:, c]`` equals ``attribute(inputs, target=c, ...)`` (the jets carry every
        output anyway, and so do continuation's steps). With ``return_orders`` also the terms
        ``(order, B, *O, *I)``; with ``return_diagnostics`` a :class:`hope_attr.Diagnostics`.

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh()).eval()
            >>> hope_attr.HOPEAttribution(model).attribute_all_targets(torch.rand(2, 3)).shape
            torch.Size([2, 5, 3])
        """
        is_tuple = isinstance(inputs, tuple)
        result = self._checked_compute(
            inputs, baselines, feature_mask, additional_forward_args, internal_batch_size,
            show_progress,
        )  # fmt: skip
        attributions = result.attributions()
        results: list[Any] = [attributions if is_tuple else attributions[0]]
        if return_orders:
            terms = result.terms()
            results.append(terms if is_tuple else terms[0])
        if return_diagnostics:
            results.append(result.diagnostics(is_tuple))
        return results[0] if len(results) == 1 else tuple(results)

    def paper_heat_map(
        self,
        inputs: Tensor,
        dx: float | Tensor = 1.0,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_orders: bool = False,
    ) -> Any:
        """The HOPE paper's heat map (its Eq. 77): ``sum_k d^k y / dx_i^k / k! * dx^k``.

        The predicted change of the output when each pixel alone moves by ``dx`` (the paper
        uses ``dx = 1``): ``-attribute(inputs, baselines=inputs + dx)``.

        Args:
            inputs: a tensor ``(B, *I)``; the expansion point.
            dx: the step of each feature, a number or a tensor that broadcasts to ``inputs``.
            target: the output to explain, as in :meth:`attribute`.
            additional_forward_args: passed to ``forward_func`` after the inputs.
            return_orders: also return the per-order terms ``(order, *inputs.shape)``.

        Returns:
            The map, shaped like ``inputs``; with ``return_orders`` then ``(map, orders)``.

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).eval()
            >>> hope = hope_attr.HOPEAttribution(model, order=3)
            >>> hope.paper_heat_map(torch.zeros(1, 3), dx=1.0, target=0).shape
            torch.Size([1, 3])
        """
        out = self.attribute(
            inputs,
            baselines=inputs + dx,
            target=target,
            additional_forward_args=additional_forward_args,
            return_orders=return_orders,
        )
        if return_orders:
            return -out[0], -out[1]
        return -out

    def compute_convergence_delta(
        self,
        attributions: Tensor | tuple[Tensor, ...],
        start_point: Any,
        end_point: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
    ) -> Tensor:
        """``sum(attributions) - (f(end_point) - f(start_point))`` per example.

        Attributions of a ``feature_mask`` group are counted once per group (FeatureAblation
        repeats the group's value on each of its features).

        Args:
            attributions: what :meth:`attribute` returned (a tensor or a tuple).
            start_point: the baselines, in any form :meth:`attribute` accepts.
            end_point: the inputs.
            target: the output the attributions explain.
            additional_forward_args: passed to ``forward_func`` after the inputs.
            feature_mask: the mask the attributions were computed with, if any.

        Returns:
            One delta per example, ``(B,)``.
        """
        ends = end_point if isinstance(end_point, tuple) else (end_point,)
        attributions = attributions if isinstance(attributions, tuple) else (attributions,)
        starts = _format_baselines(start_point, ends)
        masks = _format_feature_mask(feature_mask, ends)
        extra = additional_forward_args
        extra = () if extra is None else (extra if isinstance(extra, tuple) else (extra,))
        with torch.no_grad():
            f_end = _select_value(self.forward_func(*ends, *extra), target)
            f_start = _select_value(self.forward_func(*starts, *extra), target)
        total = torch.zeros_like(f_end)
        if masks is None:
            for attribution in attributions:
                total = total + attribution.reshape(attribution.shape[0], -1).sum(1)
        else:
            total = total + _sum_once_per_group(attributions, masks)
        return total - (f_end - f_start)

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: raises ``NotImplementedError``, as Captum's non-perturbation methods do.

        Captum's asynchronous variant suits forward functions that return
        ``torch.futures.Future``; HOPE interprets the forward function op by op and needs its
        tensors, so there is nothing to wait on. Call :meth:`attribute`.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("attribute_future is not implemented for HOPEAttribution")

    # ------------------------------------------------------------------ internals
    def _checked_compute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: Any,
        feature_mask: Any,
        additional_forward_args: Any,
        internal_batch_size: int | None,
        show_progress: bool,
        target: TargetType = None,
    ) -> Any:
        """Validate the Captum-style arguments, then :meth:`_compute` on detached inputs.

        With a ``target``, only that output of each example is expanded (the result's outputs
        are then scalars, ``output_shape == ()``).
        """
        inputs_tuple = _detached(inputs)
        _check_additional_args(additional_forward_args)
        return self._compute(
            inputs_tuple,
            _format_baselines(baselines, inputs_tuple),
            _format_feature_mask(feature_mask, inputs_tuple),
            additional_forward_args,
            internal_batch_size,
            show_progress,
            target,
        )

    def _compute(
        self,
        inputs: tuple[Tensor, ...],
        baselines: tuple[Tensor, ...],
        masks: tuple[Tensor, ...] | None,
        additional_forward_args: Any,
        chunk: int | None,
        show_progress: bool,
        target: TargetType = None,
    ) -> _Result:
        select = None if target is None else functools.partial(_select_outputs, target)
        with _kinks.watch(measure=False) as piecewise:
            expansion = Expansion(
                self.forward_func, inputs, self.order, additional_forward_args, chunk, select
            )
            feature_terms, group_terms = self._terms(expansion, baselines, masks, show_progress)
        output_shape = expansion.output.shape[1:]
        groups = masks if masks is not None else _feature_ids(inputs)
        # The series of each feature's (group's) move, in the layout (n, B, *O, G). With a
        # feature mask the terms are per group: spreading them (and the attributions)
        # to every feature is left to the caller who asks for them, since for many outputs and
        # large inputs that spread is the largest tensor of the call (resnet18 at 224 px, all
        # 1000 classes: 600 MB per order).
        # The terms carry FeatureAblation's sign, the series the opposite one: norms do not see
        # the sign, so the terms serve as they are (a negated copy would be one more tensor of
        # that size).
        if masks is None:
            flat = [t.reshape(*t.shape[: 2 + len(output_shape)], -1) for t in feature_terms]
            terms = flat[0] if len(flat) == 1 else torch.cat(flat, -1)
        else:
            terms = group_terms
        norms = _convergence.coefficient_norms(terms, len(output_shape))  # (n, B, G)
        radius = _convergence.radius(norms)
        error = _convergence.truncation_error(norms)
        # rtol is relative to the largest output, also where only the target was expanded.
        scale = expansion.model_output.abs().reshape(expansion.model_output.shape[0], -1).amax(1)
        tolerance = self.rtol * scale.clamp_min(torch.finfo(scale.dtype).tiny)  # (B,)
        self._flag_piecewise_linear(norms, piecewise.seen)

        per_group = -terms.sum(0)  # (B, *O, G): the ablation as the series at x predicts it
        del terms
        steps = None
        if self.method == "continuation":
            steps = torch.zeros(norms.shape[1:], dtype=torch.long, device=norms.device)
            moved = _moved(baselines, inputs, groups)  # (B, G)
            settled = (radius > 2) & (error <= tolerance[:, None]) & (not piecewise.seen)
            example, group = torch.nonzero(moved & ~settled, as_tuple=True)
            if example.numel():
                moves = tuple(
                    (mask[example] == group.reshape(-1, *([1] * (mask.dim() - 1)))).to(x.dtype)
                    * (b - x)[example]
                    for x, b, mask in zip(inputs, baselines, groups, strict=True)
                )
                ends, taken = continue_paths(
                    self.forward_func,
                    inputs,
                    moves,
                    example,
                    expansion.extra,
                    self.order,
                    tolerance[example],
                    chunk,
                )
                change = ends - expansion.output[example]  # (P, *O)
                per_group = per_group.movedim(-1, 1).clone()  # (B, G, *O)
                per_group[example, group] = change
                per_group = per_group.movedim(1, -1)
                steps[example, group] = taken
        else:
            diverging = int((radius <= 1).sum())
            if diverging:
                warnings.warn(
                    f"{diverging} of {radius.numel()} features (or groups, over the batch) move "
                    "to a baseline outside the estimated radius of convergence of their Taylor "
                    f"series at order {self.order}: their attributions are unreliable, and more "
                    "orders make them worse. Use method='continuation' for FeatureAblation's "
                    "values, or return_diagnostics=True for the estimate per feature.",
                    ConvergenceWarning,
                    stacklevel=user_stacklevel(),
                )
        per_feature = masks is None and self.method != "continuation"
        return _Result(
            feature_terms=feature_terms,
            group_terms=group_terms,
            feature_attributions=tuple(t.sum(0) for t in feature_terms) if per_feature else None,
            group_attributions=None if per_feature else -per_group,
            output_shape=output_shape,
            baselines=baselines,
            masks=masks,
            groups=groups,
            radius=radius,
            error=error,
            converged=(radius > 1) & (error <= tolerance[:, None]),
            steps=steps,
        )

    def _flag_piecewise_linear(self, norms: Tensor, piecewise_rule_ran: bool) -> None:
        if self.order < 2:
            self._higher_orders_vanish = None
            return
        self._higher_orders_vanish = bool((norms[1:] == 0).all()) and bool((norms[0] > 0).any())
        # A bilinear model (x1 * x2) has zero unmixed orders >= 2 too, without any kink: warn
        # only where a piecewise-linear rule ran.
        if self.higher_orders_vanish and piecewise_rule_ran and self.method != "continuation":
            if not self._warned_piecewise_linear:
                self._warned_piecewise_linear = True
                warnings.warn(
                    f"every order >= 2 is zero: the model is piecewise linear (ReLU, max "
                    f"pooling...) around these inputs, so order {self.order} equals order 1, "
                    "i.e. InputXGradient times (x - baseline), exact only up to the first kink "
                    "on each path. method='continuation' gives the ablations themselves. "
                    "(Warned once per HOPEAttribution object.)",
                    PiecewiseLinearWarning,
                    stacklevel=user_stacklevel(),
                )

    def _terms(
        self,
        expansion: Expansion,
        baselines: tuple[Tensor, ...],
        masks: tuple[Tensor, ...] | None,
        show_progress: bool,
    ) -> tuple[tuple[Tensor, ...] | None, Tensor | None]:
        """The signed order-k terms in FeatureAblation's sign: per input ``(n, B, *O, *I)``
        without a feature mask, else per group ``(n, B, *O, G)``; the other one is ``None``."""
        steps = [b - x for x, b in zip(expansion.inputs, baselines, strict=True)]
        bar = _progress_bar(show_progress, self, expansion, steps, masks)
        try:
            if masks is None:
                if self.method == "diagonal":
                    from hope_attr.attribution.diagonal import diagonal_coefficients

                    coefficients = diagonal_coefficients(expansion)
                else:
                    coefficients = expansion.unmixed_coefficients(bar.update)
                terms = tuple(
                    _times_powers(c, step, self.order)
                    for c, step in zip(coefficients, steps, strict=True)
                )
                return terms, None
            if self.method == "diagonal":
                raise ValueError(
                    "method='diagonal' propagates one feature per direction; it cannot move a "
                    "feature_mask group together. Use method='exact' with feature_mask."
                )
            return None, _group_terms(expansion, steps, masks, bar.update)
        finally:
            bar.close()


class _Result:
    """What one computation produced, before target selection.

    Terms and attributions are kept per feature (no feature mask) or per group, and spread to
    the inputs' layout only when asked for (:meth:`terms`, :meth:`attributions`), after the
    target is selected where there is one (:meth:`target_attributions`).
    """

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def terms(self) -> tuple[Tensor, ...]:
        """Per input, the signed order-k terms ``(n, B, *O, *I)``."""
        if self.feature_terms is not None:
            return self.feature_terms
        return _spread(self.group_terms, self.groups, 1)

    def attributions(self) -> tuple[Tensor, ...]:
        """Per input, the attributions of every output ``(B, *O, *I)``."""
        if self.feature_attributions is not None:
            return self.feature_attributions
        return _spread(self.group_attributions, self.groups, 0)

    def target_attributions(self, target: TargetType) -> tuple[Tensor, ...]:
        """Per input, the attributions of ``target`` ``(B, *I)``."""
        if self.feature_attributions is not None:
            return tuple(
                _select_target(a.unsqueeze(0), target, self.output_shape)[0]
                for a in self.feature_attributions
            )
        selected = _select_target(self.group_attributions.unsqueeze(0), target, self.output_shape)
        return tuple(part[0] for part in _spread(selected, self.groups, 1))

    def diagnostics(self, is_tuple: bool) -> Diagnostics:
        def spread(values: Tensor | None) -> Any:
            if values is None:
                return None
            parts = _spread(values, self.groups, 0)
            return parts if is_tuple else parts[0]

        return Diagnostics(
            radius=spread(self.radius),
            error=spread(self.error),
            converged=spread(self.converged),
            steps=spread(self.steps),
        )


def _detached(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    # Attributions are values, not part of the caller's graph: without this, an input with
    # requires_grad would hand back a result holding a grad_fn.
    inputs_tuple = inputs if isinstance(inputs, tuple) else (inputs,)
    return tuple(x.detach() if isinstance(x, Tensor) else x for x in inputs_tuple)


def _check_additional_args(additional_forward_args: Any) -> None:
    extra = additional_forward_args
    extra = () if extra is None else (extra if isinstance(extra, tuple) else (extra,))
    for index, value in enumerate(extra):
        if isinstance(value, (list, dict, tuple, set)) and _holds_tensor(value):
            raise TypeError(
                f"additional_forward_args[{index}] is a {type(value).__name__} holding tensors; "
                "the traced model takes tensors only as arguments of their own: pass them as "
                "separate entries, e.g. additional_forward_args=(t, 0.5) with forward(x, t, s)"
            )


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_holds_tensor(v) for v in value)
    return False


def _feature_ids(inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Every feature its own group: ids numbered across the inputs, ``(B, *I)`` each."""
    ids, offset = [], 0
    for x in inputs:
        count = x[0].numel()
        flat = torch.arange(offset, offset + count, device=x.device)
        ids.append(flat.reshape(1, *x.shape[1:]).expand_as(x))
        offset += count
    return tuple(ids)


def _moved(
    baselines: tuple[Tensor, ...], inputs: tuple[Tensor, ...], groups: tuple[Tensor, ...]
) -> Tensor:
    """``(B, G)``: whether the group's move to its baseline is not zero."""
    num_groups = int(max(g.max().item() for g in groups)) + 1
    moved = torch.zeros(inputs[0].shape[0], num_groups, device=inputs[0].device)
    for x, b, g in zip(inputs, baselines, groups, strict=True):
        size = (b - x).abs().reshape(x.shape[0], -1).to(moved.dtype)
        moved.scatter_add_(1, g.reshape(x.shape[0], -1), size)
    return moved > 0


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


def _group_terms(
    expansion: Expansion,
    steps: list[Tensor],
    masks: tuple[Tensor, ...],
    on_chunk: Callable[[int], None],
) -> tuple[Tensor, ...]:
    num_groups = int(max(m.max().item() for m in masks)) + 1
    directions = tuple(
        (mask == _group_ids(num_groups, mask)).to(step.dtype) * step
        for mask, step in zip(masks, steps, strict=True)
    )  # (G, B, *I) each: group g moves all its features to their baselines at once
    coefficients = expansion.directional_coefficients(directions, on_chunk)  # (n, G, B, *O)
    return -coefficients.movedim(1, -1)  # (n, B, *O, G)


def _group_ids(num_groups: int, mask: Tensor) -> Tensor:
    """``(G, 1, ...)``: the ids, to compare with a mask ``(B, *I)`` (a boolean per group, where
    ``one_hot`` would make int64 ones eight times the size)."""
    ids = torch.arange(num_groups, device=mask.device)
    return ids.reshape(num_groups, *([1] * mask.dim()))


def _spread(per_group: Tensor, masks: tuple[Tensor, ...], batch_axis: int) -> tuple[Tensor, ...]:
    """``(*L, B, *X, G)`` values per group -> per input ``(*L, B, *X, *I)``, by each mask."""
    results = []
    for mask in masks:
        trailing = per_group.dim() - batch_axis - 2  # the axes X between batch and groups
        index = mask.reshape(mask.shape[0], *([1] * trailing), -1)
        index = index.expand(*per_group.shape[:-1], index.shape[-1])
        gathered = per_group.gather(-1, index)
        results.append(gathered.reshape(*per_group.shape[:-1], *mask.shape[1:]))
    return tuple(results)


def _progress_bar(
    show: bool,
    method: Attribution,
    expansion: Expansion,
    steps: list[Tensor],
    masks: tuple[Tensor, ...] | None,
) -> Any:
    if not show:
        return NullProgress()
    # Counted in directions (features or groups): chunk sizes are only known once running.
    if masks is not None:
        total = int(max(m.max().item() for m in masks)) + 1
    else:
        total = sum(s[0].numel() for s in steps)
    return progress(desc=f"{method.get_name()} attribution", total=total)


def _format_baselines(baselines: Any, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    if baselines is None:
        baselines = tuple(0.0 for _ in inputs)
    elif not isinstance(baselines, tuple):
        baselines = (baselines,)
    if len(baselines) != len(inputs):
        raise ValueError(
            f"got {len(baselines)} baselines for {len(inputs)} inputs; pass one per input"
        )
    formatted = []
    for index, (baseline, x) in enumerate(zip(baselines, inputs, strict=True)):
        if isinstance(baseline, (int, float)):
            formatted.append(torch.full_like(x, float(baseline)))
            continue
        if not isinstance(baseline, Tensor):
            raise TypeError(
                f"baselines[{index}] must be a number or a tensor, got {type(baseline).__name__}"
            )
        try:
            formatted.append(baseline.to(x.dtype).expand_as(x))
        except RuntimeError as error:
            raise ValueError(
                f"baselines[{index}] has shape {tuple(baseline.shape)}, which does not broadcast "
                f"to the input's {tuple(x.shape)}: use the input's shape, batch size 1, or a "
                "number"
            ) from error
    for index, baseline in enumerate(formatted):
        if not torch.isfinite(baseline).all():
            raise ValueError(
                f"baselines[{index}] contains NaN or Inf; the attribution of a move to it is "
                "undefined: use finite baselines"
            )
    return tuple(formatted)


def _format_feature_mask(
    feature_mask: Any, inputs: tuple[Tensor, ...]
) -> tuple[Tensor, ...] | None:
    if feature_mask is None:
        return None
    masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if len(masks) != len(inputs):
        raise ValueError(f"got {len(masks)} feature masks for {len(inputs)} inputs")
    formatted = []
    for index, (mask, x) in enumerate(zip(masks, inputs, strict=True)):
        if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"feature_mask[{index}] must be an integer tensor of group ids")
        try:
            formatted.append(mask.to(torch.long).expand_as(x))
        except RuntimeError as error:
            raise ValueError(
                f"feature_mask[{index}] has shape {tuple(mask.shape)}, which does not broadcast "
                f"to the input's {tuple(x.shape)}"
            ) from error
    ids = torch.unique(torch.cat([m.reshape(-1) for m in formatted]))
    if ids.min() < 0 or not torch.equal(ids, torch.arange(len(ids), device=ids.device)):
        missing = sorted(set(range(int(ids.max()) + 1)) - set(ids.tolist()))[:5]
        raise ValueError(
            "feature_mask ids must be exactly 0..G-1 with every id used "
            f"(found {len(ids)} ids up to {int(ids.max())}; missing e.g. {missing}). "
            "Renumber the groups, e.g. with torch.unique(mask, return_inverse=True)."
        )
    return tuple(formatted)


def _select_target(values: Tensor, target: TargetType, output_shape: torch.Size) -> Tensor:
    """``(L, B, *O, *rest) -> (L, B, *rest)``, picking each example's target output."""
    batch = values.shape[1]
    rest = values.shape[2 + len(output_shape) :]
    if target is None:
        if math.prod(output_shape) != 1:
            raise ValueError(
                f"forward_func returns {tuple(output_shape)} outputs per example: pass target= "
                "(an index, or one per example), or use attribute_all_targets"
            )
        return values.reshape(values.shape[0], batch, *rest)
    per_example = _targets_per_example(target, batch, len(output_shape))
    for entry in per_example:
        for axis, (index, size) in enumerate(zip(entry, output_shape, strict=True)):
            if not -size <= index < size:
                raise ValueError(
                    f"target {target!r} is out of range: output axis {axis + 1} has {size} entries"
                )
    index = torch.tensor(per_example, device=values.device)  # (B, len(O))
    batch_index = torch.arange(batch, device=values.device)
    return values[(slice(None), batch_index, *index.unbind(1))]


def _targets_per_example(target: TargetType, batch: int, output_dims: int) -> list[tuple]:
    if isinstance(target, Tensor):
        if target.dim() > 1 and target.numel() > 1:
            raise ValueError(
                f"a target tensor must be a number or 1-d (one index per example), got shape "
                f"{tuple(target.shape)}; flatten it with target.reshape(-1), or pass a list of "
                "tuples for outputs with more than 2 axes"
            )
        if target.is_floating_point() or target.is_complex():
            raise TypeError(f"a target tensor must hold integers, got dtype {target.dtype}")
        target = target.item() if target.numel() == 1 else target.tolist()
    if isinstance(target, int):
        entries = [(target,)] * batch
    elif isinstance(target, tuple):
        entries = [target] * batch
    elif isinstance(target, list):
        if len(target) != batch:
            raise ValueError(f"target has {len(target)} entries for a batch of {batch}")
        entries = [t if isinstance(t, tuple) else (t,) for t in target]
    else:
        raise TypeError(f"target must be an int, tuple, list or tensor, got {type(target)}")
    for entry in entries:
        if len(entry) != output_dims:
            raise ValueError(
                f"target {entry} indexes {len(entry)} output axes, but the output has "
                f"{output_dims} besides the batch axis"
            )
    return [tuple(int(i) for i in entry) for entry in entries]


def _select_outputs(target: TargetType, values: Tensor) -> Tensor:
    """``(L, B, *O) -> (L, B)``: each example's target output (an expansion's ``select``)."""
    return _select_target(values, target, values.shape[2:])


def _select_value(output: Tensor, target: TargetType) -> Tensor:
    return _select_target(output.unsqueeze(0), target, output.shape[1:])[0].reshape(-1)


def _sum_once_per_group(attributions: tuple[Tensor, ...], masks: tuple[Tensor, ...]) -> Tensor:
    """Sum each group's (repeated) attribution once per example."""
    batch = attributions[0].shape[0]
    num_groups = int(max(m.max().item() for m in masks)) + 1
    values = attributions[0].new_zeros(batch, num_groups)
    for attribution, mask in zip(attributions, masks, strict=True):
        # Every feature of a group holds the group's value: scatter (not add) it.
        values.scatter_(1, mask.reshape(batch, -1), attribution.reshape(batch, -1))
    return values.sum(1)
