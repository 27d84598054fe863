"""HOPEAttribution: Captum's FeatureAblation, predicted by exact high-order Taylor expansions.

For each feature ``i`` (or ``feature_mask`` group), Captum's FeatureAblation measures
``f_t(x) - f_t(x with the feature set to its baseline)``. Moving the feature from ``x`` to ``b``
is the direction ``v = (b - x) e_i``, so with the Taylor coefficients ``c_k`` of
``t -> f_t(x + t v)`` the ablation is ``-(c_1 + ... + c_n)`` up to the remainder of order
``n + 1``: the HOPE paper's ``sum_k d^k y / k! dx^k`` with ``dx = b - x``, in FeatureAblation's
sign. One jet per feature (or group) serves every output class at once.

This module holds Captum's contract alone; the arguments are formatted by
:mod:`~hope_attr.attribution.arguments`, the call is computed by
:mod:`~hope_attr.attribution.computation`, and what differs between ``method`` values is one
row of :mod:`~hope_attr.attribution.methods`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch
from captum._utils.typing import BaselineType, TargetType
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from hope_attr.attribution import arguments as _arguments
from hope_attr.attribution import groups as _groups
from hope_attr.attribution.arguments import FeatureMaskType
from hope_attr.attribution.computation import Call, Computation, compute
from hope_attr.attribution.convergence import PiecewiseLinearWarning
from hope_attr.attribution.methods import Method, method_named
from hope_attr.attribution.result import HOPEResult
from hope_attr.engine.expansion import directions_argument
from hope_attr.engine.stacklevel import user_stacklevel


class HOPEAttribution(Attribution):
    """High-order Taylor attribution that predicts Captum's ``FeatureAblation``.

    Which ``method`` to choose (details and measured costs: ``docs/concepts.md``):

    * ``"exact"`` sums the order-``n`` Taylor series of each feature's move to its baseline.
      Cheapest, and it also gives the per-order terms; right when the baseline lies inside the
      series' radius of convergence. Where the estimate says it does not, the call warns with
      :class:`~hope_attr.ConvergenceWarning` (:meth:`attribute_with_details` has the estimate
      per feature).
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
        method_named(method).check(order)
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

    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: FeatureMaskType = None,
        return_orders: bool = False,
        directions_per_chunk: int | None = None,
        show_progress: bool = False,
        return_convergence_delta: bool = False,
        return_diagnostics: bool = False,
        *,
        internal_batch_size: int | None = None,
    ) -> Any:
        """Predict FeatureAblation's attributions from the order-``n`` expansion at ``inputs``.

        Captum's contract: the attributions, or ``(attributions, delta)`` with
        ``return_convergence_delta``. For several outputs by name (terms, diagnostics, delta)
        use :meth:`attribute_with_details`; ``return_orders`` and ``return_diagnostics`` add
        them to the tuple instead (kept for existing code).

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
                input); :attr:`HOPEResult.terms <hope_attr.HOPEResult.terms>` names them.
            directions_per_chunk: feature directions propagated at once (memory); ``None``
                lets the engine size the chunks. Not Captum's ``internal_batch_size``, which
                counts examples times steps.
            show_progress: a progress bar over the feature directions (advanced chunk by chunk).
            return_convergence_delta: also return Captum's completeness delta per example,
                ``sum over features/groups of attributions - (f(x) - f(baselines))``: what the
                unmixed expansion leaves out (interactions plus truncation).
            return_diagnostics: also return a :class:`hope_attr.Diagnostics`;
                :attr:`HOPEResult.diagnostics <hope_attr.HOPEResult.diagnostics>` names it.
            internal_batch_size: the old name of ``directions_per_chunk`` (FutureWarning).

        Returns:
            ``attributions`` shaped like ``inputs``; with ``return_orders`` then
            ``(attributions, orders)``; the delta and then the diagnostics follow, if asked.

        Warns:
            ConvergenceWarning: ``method="exact"`` and some features' baselines lie outside the
                estimated radius of convergence (the message says how many).
            PiecewiseLinearWarning: every order ``>= 2`` is zero (once per object).
        """
        chunk = directions_argument(directions_per_chunk, internal_batch_size)
        call = self._call(
            inputs, baselines, feature_mask, additional_forward_args, chunk, show_progress
        )
        computation, remaining = self._compute_for(call, target)
        is_tuple = isinstance(inputs, tuple)
        attributions = computation.target_attributions(remaining)
        results: list[Any] = [_arguments.as_input_form(is_tuple, attributions)]
        if return_orders:
            results.append(_arguments.as_input_form(is_tuple, computation.target_terms(remaining)))
        if return_convergence_delta:
            results.append(self._delta(attributions, call, target, additional_forward_args))
        if return_diagnostics:
            results.append(computation.diagnostics(is_tuple))
        return results[0] if len(results) == 1 else tuple(results)

    def attribute_with_details(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: FeatureMaskType = None,
        directions_per_chunk: int | None = None,
        show_progress: bool = False,
    ) -> HOPEResult:
        """:meth:`attribute` with its terms, diagnostics and convergence delta, by name.

        Takes the arguments of :meth:`attribute` (see there). The delta costs two forward
        passes, at the inputs and at the baselines; the rest comes with the expansion.

        Returns:
            A :class:`hope_attr.HOPEResult`: ``attributions``, ``terms`` (per order),
            ``diagnostics`` and ``convergence_delta``.

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).eval()
            >>> result = hope_attr.HOPEAttribution(model, order=3).attribute_with_details(
            ...     torch.rand(4, 3), baselines=0.0, target=0
            ... )
            >>> torch.allclose(result.terms.sum(0), result.attributions)
            True
        """
        call = self._call(
            inputs, baselines, feature_mask, additional_forward_args, directions_per_chunk,
            show_progress,
        )  # fmt: skip
        computation, remaining = self._compute_for(call, target)
        is_tuple = isinstance(inputs, tuple)
        attributions = computation.target_attributions(remaining)
        return HOPEResult(
            attributions=_arguments.as_input_form(is_tuple, attributions),
            terms=_arguments.as_input_form(is_tuple, computation.target_terms(remaining)),
            diagnostics=computation.diagnostics(is_tuple),
            convergence_delta=self._delta(attributions, call, target, additional_forward_args),
        )

    def attribute_all_targets(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        feature_mask: FeatureMaskType = None,
        return_orders: bool = False,
        directions_per_chunk: int | None = None,
        show_progress: bool = False,
        return_diagnostics: bool = False,
        *,
        internal_batch_size: int | None = None,
    ) -> Any:
        """The attributions of every output at the cost of one call: ``(B, *O, *I)``.

        ``result[:, c]`` equals ``attribute(inputs, target=c, ...)`` (the jets carry every
        output anyway, and so do continuation's steps). With ``return_orders`` also the terms
        ``(order, B, *O, *I)``; with ``return_diagnostics`` a :class:`hope_attr.Diagnostics`.
        The other arguments are :meth:`attribute`'s.

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh()).eval()
            >>> hope_attr.HOPEAttribution(model).attribute_all_targets(torch.rand(2, 3)).shape
            torch.Size([2, 5, 3])
        """
        chunk = directions_argument(directions_per_chunk, internal_batch_size)
        call = self._call(
            inputs, baselines, feature_mask, additional_forward_args, chunk, show_progress
        )
        computation = self._run(call)
        is_tuple = isinstance(inputs, tuple)
        results: list[Any] = [_arguments.as_input_form(is_tuple, computation.attributions())]
        if return_orders:
            results.append(_arguments.as_input_form(is_tuple, computation.terms()))
        if return_diagnostics:
            results.append(computation.diagnostics(is_tuple))
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
        start_point: BaselineType,
        end_point: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: FeatureMaskType = None,
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

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Linear(3, 1).eval()  # additive: completeness holds
            >>> hope = hope_attr.HOPEAttribution(model, order=1)
            >>> x = torch.rand(2, 3)
            >>> delta = hope.compute_convergence_delta(hope.attribute(x), 0.0, x)
            >>> bool(delta.abs().max() < 1e-5)
            True
        """
        ends = _arguments.format_inputs(end_point)
        attributions = attributions if isinstance(attributions, tuple) else (attributions,)
        starts = _arguments.format_baselines(start_point, ends)
        masks = _arguments.format_feature_mask(feature_mask, ends)
        extra = _arguments.format_additional_args(additional_forward_args)
        with torch.no_grad():
            f_end = _arguments.select_value(self.forward_func(*ends, *extra), target)
            f_start = _arguments.select_value(self.forward_func(*starts, *extra), target)
        if masks is None:
            total = sum(a.reshape(a.shape[0], -1).sum(1) for a in attributions)
        else:
            total = _groups.sum_once_per_group(attributions, masks)
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
    @property
    def _method(self) -> Method:
        # Looked up per call: the configuration is the public attribute ``method``.
        return method_named(self.method)

    def _call(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType,
        feature_mask: FeatureMaskType,
        additional_forward_args: Any,
        directions_per_chunk: int | None,
        show_progress: bool,
    ) -> Call:
        """Captum's arguments, formatted and checked before anything is computed."""
        self._method.check_groups(feature_mask)
        formatted = _arguments.format_inputs(inputs)
        extra = _arguments.format_additional_args(additional_forward_args)
        return Call(
            inputs=formatted,
            baselines=_arguments.format_baselines(baselines, formatted),
            masks=_arguments.format_feature_mask(feature_mask, formatted),
            extra=extra,
            directions_per_chunk=directions_per_chunk,
            progress_label=f"{self.get_name()} attribution" if show_progress else None,
        )

    def _compute_for(self, call: Call, target: TargetType) -> tuple[Computation, TargetType]:
        """The computation for ``target``, and the target still to select from it."""
        if target is not None and self._method.expands_target_alone:
            # The jets carry every output anyway, but a locally affine model's reverse mode then
            # needs one backward pass instead of one per output (hope_attr.engine.reverse).
            return self._run(dataclasses.replace(call, target=target)), None
        return self._run(call), target

    def _run(self, call: Call) -> Computation:
        computation = compute(self.forward_func, self._method, self.order, self.rtol, call)
        self._flag_piecewise_linear(computation)
        return computation

    def _delta(
        self,
        attributions: tuple[Tensor, ...],
        call: Call,
        target: TargetType,
        additional_forward_args: Any,
    ) -> Tensor:
        return self.compute_convergence_delta(
            attributions, call.baselines, call.inputs, target, additional_forward_args, call.masks
        )

    def _flag_piecewise_linear(self, computation: Computation) -> None:
        self._higher_orders_vanish = computation.higher_orders_vanish
        # A bilinear model (x1 * x2) has zero unmixed orders >= 2 too, without any kink: warn
        # only where a piecewise-linear rule ran; continuation evaluates the kinks' far side.
        if not (
            computation.higher_orders_vanish
            and computation.piecewise_rule_ran
            and self._method.sums_series
            and not self._warned_piecewise_linear
        ):
            return
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
