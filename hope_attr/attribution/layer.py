"""LayerHOPEAttribution: Captum's layer family, predicted by Taylor series seeded at the layer.

Captum's ``LayerFeatureAblation`` sets each neuron (or ``layer_mask`` group) of a layer's output
to its baseline and measures the change of the model's output. Seen from the layer, the model is
a function ``g(z) = model(inputs with the layer's output replaced by z)``; its ablations are
exactly what :class:`~hope_attr.HOPEAttribution` predicts for ``g`` at ``z = layer(inputs)``.
So this class reads the layer's activation by one forward pass, seeds the jets there (a forward
hook hands them on in place of the layer's output, :mod:`hope_attr.attribution.layer_hooks`),
and runs the rest of the model's own forward on them. A text model called as
``model(input_ids)`` is explained at its embedding layer without being rewritten around
``inputs_embeds``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from captum._utils.typing import BaselineType, TargetType
from captum.attr import LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from hope_attr.attribution import layer_hooks as _hooks
from hope_attr.attribution.hope import HOPEAttribution

__all__ = ["LayerHOPEAttribution"]

LayerMaskType = Tensor | tuple[Tensor, ...] | None


class LayerHOPEAttribution(LayerAttribution):
    """High-order Taylor attribution to a layer's neurons: predicts ``LayerFeatureAblation``.

    ``method`` is :class:`~hope_attr.HOPEAttribution`'s: ``"continuation"`` equals Captum's
    ``LayerFeatureAblation`` with the same ``layer_baselines`` and ``layer_mask`` (to rounding),
    ``"exact"`` sums the order-``n`` series of each neuron's move to its baseline, ``"diagonal"``
    is the HOPE paper's one-sweep rule.

    Every layer kind Captum's layer methods take: a tensor output, a tuple or list of tensors
    (one attribution per entry), or the layer's positional inputs
    (``attribute_to_layer_input=True``). The layer must run once per forward pass, with the
    batch axis first. One jet per neuron or group serves every class:
    :meth:`attribute_all_targets`. Nothing is left on the model: the hooks exist only while
    a forward pass runs. An ``nn.DataParallel`` model is run as its wrapped module (the same
    function, on one device; see ``device_ids``).

    Example:
        >>> import torch, hope_attr
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
        >>> layer_hope = hope_attr.LayerHOPEAttribution(model, model[1], order=4)
        >>> layer_hope.attribute(torch.rand(5, 3), target=1).shape  # like model[1]'s output
        torch.Size([5, 4])
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: nn.Module,
        order: int = 4,
        method: str = "exact",
        rtol: float = 1e-6,
        device_ids: list[int] | None = None,
    ) -> None:
        """Set up the attribution of ``forward_func`` to ``layer``.

        Args:
            forward_func: the model or function to explain; its inputs may be anything the
                model takes (token ids, too): the series start at the layer.
            layer: a module that ``forward_func`` calls once per forward pass.
            order: the Taylor order ``n >= 1`` (``>= 2`` for ``"continuation"``).
            method: ``"exact"``, ``"continuation"`` or ``"diagonal"``
                (see :class:`~hope_attr.HOPEAttribution`).
            rtol: :class:`~hope_attr.HOPEAttribution`'s tolerance.
            device_ids: Captum's (``LayerFeatureAblation``'s): the devices of an
                ``nn.DataParallel`` model that ``forward_func`` applies. Not needed here: an
                ``nn.DataParallel`` (or ``DistributedDataParallel``) ``forward_func`` is run as
                its wrapped ``.module``, the same function, on that module's device (where
                ``DataParallel`` keeps it, ``device_ids[0]``; put the inputs there), because
                the jets cannot be scattered over replicas. Several devices for a function
                that applies such a model are refused: pass the model itself.

        Raises:
            TypeError: ``layer`` is not a module, or ``device_ids`` is not a list of ids.
            ValueError: a bad ``order``, ``method`` or ``rtol``; several ``device_ids`` for a
                ``forward_func`` that is not the parallel model.

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
            >>> hope_attr.LayerHOPEAttribution(model, model[0], method="continuation").method
            'continuation'
        """
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"layer must be a torch.nn.Module of the model, got {type(layer).__name__}"
            )
        _hooks.check_device_ids(forward_func, device_ids)
        super().__init__(forward_func, layer, device_ids)
        # Checks order, method and rtol now, as HOPEAttribution does, not at the first call.
        HOPEAttribution(forward_func, order, method, rtol)
        self.order, self.method, self.rtol = order, method, float(rtol)
        self._higher_orders_vanish: bool | None = None

    @property
    def higher_orders_vanish(self) -> bool | None:
        """After each call: every order ``>= 2`` was zero (the rest of the model is piecewise
        linear around the layer's activation); see :class:`~hope_attr.HOPEAttribution`."""
        return self._higher_orders_vanish

    @classmethod
    def get_name(cls) -> str:
        return "Layer HOPE"

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        layer_baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        layer_mask: LayerMaskType = None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 1,
        directions_per_chunk: int | None = None,
        show_progress: bool = False,
    ) -> Tensor | tuple[Tensor, ...]:
        """Predict ``LayerFeatureAblation``'s attributions from the series at the layer.

        The arguments up to ``perturbations_per_eval`` are Captum's
        ``LayerFeatureAblation.attribute`` (targets, baselines and masks in Captum's forms:
        ``docs/captum.md``).

        Args:
            inputs: the model's inputs, a tensor or a tuple (token ids, too).
            layer_baselines: what each neuron of the layer is set to: ``None`` (zero), a
                number, a tensor shaped like (or broadcastable to) the layer's activation, or
                a tuple of those for a layer with several tensors.
            target: the model output to explain, as in Captum.
            additional_forward_args: passed to the model after the inputs.
            layer_mask: integer group ids ``0..G-1`` broadcastable to the layer's activation
                (a tuple for several tensors); a group moves to its baseline as one direction,
                as ``LayerFeatureAblation`` ablates it. For a text model's embedding layer
                ``(B, T, H)``, ids of shape ``(1, T, 1)`` attribute to whole tokens.
            attribute_to_layer_input: attribute to the layer's positional inputs instead.
            perturbations_per_eval: accepted so that code written for
                ``LayerFeatureAblation`` runs unchanged; no effect (the expansion is chunked by
                ``directions_per_chunk``).
            directions_per_chunk: neurons (or groups) propagated at once; ``None``: the engine
                decides.
            show_progress: a progress bar over the directions.

        Returns:
            Attributions shaped like the layer's output (or input): a tensor, or a tuple for a
            layer with several tensors. FeatureAblation's sign: ``f(x) - f(neuron ablated)``.

        Raises:
            ValueError: the layer does not run exactly once per forward, or its activation
                lacks the batch axis; bad baselines, masks or targets.
            TypeError: the layer's activation is not floating-point tensors.
        """
        _hooks.check_perturbations_per_eval(perturbations_per_eval)
        hope, values, args = self._at_layer(
            inputs, additional_forward_args, attribute_to_layer_input
        )
        return _hooks.delegated(
            self,
            hope,
            "attribute",
            values,
            baselines=layer_baselines,
            target=target,
            additional_forward_args=args,
            feature_mask=layer_mask,
            directions_per_chunk=directions_per_chunk,
            show_progress=show_progress,
        )

    def attribute_all_targets(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        layer_baselines: BaselineType = None,
        additional_forward_args: Any = None,
        layer_mask: LayerMaskType = None,
        attribute_to_layer_input: bool = False,
        directions_per_chunk: int | None = None,
        show_progress: bool = False,
    ) -> Tensor | tuple[Tensor, ...]:
        """Every output's attributions at the cost of one call: ``(B, *O, *L)``.

        ``result[:, c]`` equals ``attribute(inputs, target=c, ...)``; ``L`` is the layer's
        activation shape without the batch axis. The arguments are :meth:`attribute`'s.

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
            ...                             torch.nn.Linear(4, 5)).eval()
            >>> layer_hope = hope_attr.LayerHOPEAttribution(model, model[1])
            >>> layer_hope.attribute_all_targets(torch.rand(2, 3)).shape
            torch.Size([2, 5, 4])
        """
        hope, values, args = self._at_layer(
            inputs, additional_forward_args, attribute_to_layer_input
        )
        return _hooks.delegated(
            self,
            hope,
            "attribute_all_targets",
            values,
            baselines=layer_baselines,
            additional_forward_args=args,
            feature_mask=layer_mask,
            directions_per_chunk=directions_per_chunk,
            show_progress=show_progress,
        )

    def _at_layer(
        self, inputs: Tensor | tuple[Tensor, ...], additional_forward_args: Any, to_input: bool
    ) -> tuple[HOPEAttribution, Tensor | tuple[Tensor, ...], tuple[Any, ...]]:
        """The primary attribution of the model seen from the layer, the layer's activation
        (its inputs), and the model's arguments (its additional arguments)."""
        args = _hooks.model_arguments(inputs, additional_forward_args)
        model = _hooks.eager(self.forward_func)
        activation = _hooks.capture(model, self.layer, args, to_input)
        seen_from_layer = _hooks.rerouted(model, self.layer, activation, to_input)
        hope = HOPEAttribution(seen_from_layer, self.order, self.method, self.rtol)
        values = activation.values
        return hope, values if len(values) > 1 else values[0], args
