"""NeuronHOPEAttribution: Captum's neuron family, the Taylor series of an internal unit.

Captum's ``NeuronFeatureAblation`` sets each input feature (or ``feature_mask`` group) to its
baseline and measures the change of one neuron of a layer instead of the model's output. That
neuron is a function of the inputs, ``n(x) = select(layer activation while model(x) runs)``, and
its ablations are what :class:`~hope_attr.HOPEAttribution` predicts for ``n``. The forward pass
stops right after the layer (:func:`~hope_attr.attribution.layer_hooks.reading`): what comes
later is neither computed nor needs Taylor rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from captum._utils.common import _verify_select_neuron
from captum._utils.typing import BaselineType
from captum.attr import NeuronAttribution
from captum.log import log_usage
from torch import Tensor, nn

from hope_attr.attribution import layer_hooks as _hooks
from hope_attr.attribution.hope import HOPEAttribution

__all__ = ["NeuronHOPEAttribution"]

NeuronSelector = int | tuple[int | slice, ...] | Callable[[Any], Tensor]
FeatureMaskType = Tensor | tuple[Tensor, ...] | None


class NeuronHOPEAttribution(NeuronAttribution):
    """High-order Taylor attribution of one internal neuron: predicts ``NeuronFeatureAblation``.

    ``method`` is :class:`~hope_attr.HOPEAttribution`'s: ``"continuation"`` equals Captum's
    ``NeuronFeatureAblation`` with the same ``baselines`` and ``feature_mask`` (to rounding),
    ``"exact"`` sums the order-``n`` series of the neuron along each feature's move to its
    baseline. Neurons are chosen as in Captum (``neuron_selector``: an index, a tuple with
    slices, which sum the neurons they cover, or a function of the layer's activation). The
    layer must run once per forward pass, with the batch axis first; nothing is left on the model.
    The jets carry every neuron of the layer, so :meth:`attribute_all_neurons` gives all of
    them at the cost of one call. An ``nn.DataParallel`` model is run as its wrapped module
    (the same function, on one device; see ``device_ids``).

    Example:
        >>> import torch, hope_attr
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
        >>> neuron_hope = hope_attr.NeuronHOPEAttribution(model, model[1], order=4)
        >>> neuron_hope.attribute(torch.rand(5, 3), neuron_selector=2).shape  # like the input
        torch.Size([5, 3])
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
        """Set up the attribution of ``layer``'s neurons in ``forward_func``.

        Args:
            forward_func: the model; its inputs are the features (floating point).
            layer: a module that ``forward_func`` calls once per forward pass.
            order: the Taylor order ``n >= 1`` (``>= 2`` for ``"continuation"``).
            method: ``"exact"``, ``"continuation"`` or ``"diagonal"``
                (see :class:`~hope_attr.HOPEAttribution`).
            rtol: :class:`~hope_attr.HOPEAttribution`'s tolerance, relative to the neuron.
            device_ids: Captum's (``NeuronFeatureAblation``'s): the devices of an
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
            >>> hope_attr.NeuronHOPEAttribution(model, model[1], order=6).order
            6
        """
        if not isinstance(layer, nn.Module):
            raise TypeError(
                f"layer must be a torch.nn.Module of the model, got {type(layer).__name__}"
            )
        _hooks.check_device_ids(forward_func, device_ids)
        super().__init__(forward_func, layer, device_ids)
        HOPEAttribution(forward_func, order, method, rtol)  # checks the configuration now
        self.order, self.method, self.rtol = order, method, float(rtol)
        self._higher_orders_vanish: bool | None = None

    @property
    def higher_orders_vanish(self) -> bool | None:
        """After each call: every order ``>= 2`` of the neuron was zero (piecewise linear up
        to the layer around the inputs); see :class:`~hope_attr.HOPEAttribution`."""
        return self._higher_orders_vanish

    @classmethod
    def get_name(cls) -> str:
        return "Neuron HOPE"

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        neuron_selector: NeuronSelector,
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        feature_mask: FeatureMaskType = None,
        attribute_to_neuron_input: bool = False,
        perturbations_per_eval: int = 1,
        directions_per_chunk: int | None = None,
        show_progress: bool = False,
    ) -> Tensor | tuple[Tensor, ...]:
        """Predict ``NeuronFeatureAblation``'s attributions from the neuron's series.

        The arguments up to ``perturbations_per_eval`` are Captum's
        ``NeuronFeatureAblation.attribute``.

        Args:
            inputs: the model's inputs (floating point), a tensor or a tuple.
            neuron_selector: the neuron: an int (for a 2-d activation), a tuple of ints and
                slices indexing the activation without its batch axis (a slice sums the
                neurons it covers), or a function of the activation (a tuple of tensors for
                a layer with several) returning one value per example ``(B,)``.
            baselines: what each input feature is set to, in Captum's forms.
            additional_forward_args: passed to the model after the inputs.
            feature_mask: integer group ids ``0..G-1`` broadcastable to each input.
            attribute_to_neuron_input: select the neuron from the layer's positional inputs.
            perturbations_per_eval: accepted so that code written for
                ``NeuronFeatureAblation`` runs unchanged; no effect.
            directions_per_chunk: features (or groups) propagated at once; ``None``: the
                engine decides.
            show_progress: a progress bar over the directions.

        Returns:
            Attributions shaped like ``inputs`` (a tensor, or a tuple for tuple inputs).

        Raises:
            TypeError: a selector of another type, or an activation that is not
                floating-point tensors.
            ValueError: a selector that does not fit the layer, a layer that does not run
                exactly once per forward or lacks the batch axis.
        """
        _hooks.check_perturbations_per_eval(perturbations_per_eval)
        hope = self._of_inputs(
            inputs, additional_forward_args, attribute_to_neuron_input, neuron_selector
        )
        return _hooks.delegated(
            self,
            hope,
            "attribute",
            inputs,
            baselines=baselines,
            additional_forward_args=additional_forward_args,
            feature_mask=feature_mask,
            directions_per_chunk=directions_per_chunk,
            show_progress=show_progress,
        )

    def attribute_all_neurons(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: BaselineType = None,
        additional_forward_args: Any = None,
        feature_mask: FeatureMaskType = None,
        attribute_to_neuron_input: bool = False,
        directions_per_chunk: int | None = None,
        show_progress: bool = False,
    ) -> Tensor | tuple[Tensor, ...]:
        """Every neuron of the layer at the cost of one call: ``(B, *L, *I)``.

        ``result[:, j, k]`` equals ``attribute(inputs, neuron_selector=(j, k), ...)``, where
        ``L`` is the layer's activation shape without the batch axis and ``I`` the input's
        (a tuple, one per input, for tuple inputs): the jets carry every neuron of the layer
        anyway, as they carry every class in :meth:`LayerHOPEAttribution.attribute_all_targets
        <hope_attr.LayerHOPEAttribution.attribute_all_targets>`. The batch axis stays first,
        as in every Captum result. With ``method="continuation"``, ``rtol`` is relative to the
        largest neuron of the example rather than to the one selected. The other arguments
        are :meth:`attribute`'s.

        Raises:
            ValueError: the layer's activation has several tensors (choose one with a function
                in :meth:`attribute`, or a submodule that computes one tensor); and as
                :meth:`attribute`.

        Example:
            >>> import torch, hope_attr
            >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
            ...                             torch.nn.Linear(4, 2)).eval()
            >>> neuron_hope = hope_attr.NeuronHOPEAttribution(model, model[1])
            >>> neuron_hope.attribute_all_neurons(torch.rand(5, 3)).shape  # (B, 4 neurons, 3)
            torch.Size([5, 4, 3])
        """
        hope = self._of_inputs(inputs, additional_forward_args, attribute_to_neuron_input, None)
        return _hooks.delegated(
            self,
            hope,
            "attribute_all_targets",
            inputs,
            baselines=baselines,
            additional_forward_args=additional_forward_args,
            feature_mask=feature_mask,
            directions_per_chunk=directions_per_chunk,
            show_progress=show_progress,
        )

    def _of_inputs(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        additional_forward_args: Any,
        to_input: bool,
        selector: NeuronSelector | None,
    ) -> HOPEAttribution:
        """The primary attribution of the selected neuron (``None``: every neuron of the
        layer, ``(B, *L)``) as a function of the model's inputs."""
        args = _hooks.model_arguments(inputs, additional_forward_args)
        _check_floating(args[: len(inputs) if isinstance(inputs, tuple) else 1])
        model = _hooks.eager(self.forward_func)
        activation = _hooks.capture(model, self.layer, args, to_input)
        if selector is None:
            _check_one_tensor(activation.values)
        else:
            _check_selector(selector, activation.values)
        layer = self.layer

        def neuron(*arguments: Any) -> Tensor:
            with _hooks.reading(layer, to_input) as read:
                model(*arguments)
            if read.values is None:  # a forward whose path depends on the values
                raise ValueError(
                    f"the layer ({type(layer).__name__}) did not run in this forward pass"
                )
            if selector is None:
                return read.values[0]
            return _verify_select_neuron(read.values, selector)

        return HOPEAttribution(
            _hooks.as_model_method(neuron, model), self.order, self.method, self.rtol
        )


def _check_one_tensor(values: tuple[Tensor, ...]) -> None:
    if len(values) > 1:
        raise ValueError(
            f"the layer's activation has {len(values)} tensors; attribute_all_neurons needs "
            "one: choose a submodule that computes one tensor, or pick neurons from any of "
            "them with attribute(..., neuron_selector=lambda out: out[0][:, 3])"
        )


def _check_floating(inputs: tuple[Tensor, ...]) -> None:
    for position, x in enumerate(inputs):
        if not x.is_floating_point():
            raise TypeError(
                f"inputs[{position}] has dtype {x.dtype}: the neuron is expanded in the model's "
                "inputs, which must be floating point. For token ids, explain the neuron in the "
                "model called on its embeddings (inputs_embeds), or attribute the model's output "
                "to the embedding layer with LayerHOPEAttribution"
            )


def _check_selector(selector: object, values: tuple[Tensor, ...]) -> None:
    """A selector that picks one value per example from ``values`` (Captum asserts this)."""
    if callable(selector):
        picked = _verify_select_neuron(values, selector)
        if not isinstance(picked, Tensor) or picked.reshape(-1).shape[0] != values[0].shape[0]:
            raise ValueError(
                "neuron_selector must return one value per example, a tensor (B,) with "
                f"B = {values[0].shape[0]}; got {getattr(picked, 'shape', type(picked))}"
            )
        return
    entries = (selector,) if isinstance(selector, int) else selector
    if not isinstance(entries, tuple) or not all(
        isinstance(e, slice) or (isinstance(e, int) and not isinstance(e, bool)) for e in entries
    ):
        raise TypeError(
            "neuron_selector must be an int, a tuple of ints and slices, or a function of the "
            f"layer's activation, got {selector!r}"
        )
    if len(values) > 1:
        raise ValueError(
            f"the layer's activation has {len(values)} tensors, which an index cannot choose "
            "between: pass a function, e.g. neuron_selector=lambda out: out[0][:, 3]"
        )
    shape = tuple(values[0].shape[1:])
    # Fewer indices than axes leave a block of neurons, which Captum sums where a slice says so.
    sums = any(isinstance(e, slice) for e in entries)
    if len(entries) > len(shape) or (len(entries) < len(shape) and not sums):
        raise ValueError(
            f"neuron_selector {selector!r} has {len(entries)} indices, but the layer's "
            f"activation has {len(shape)} axes besides the batch, shape {shape}: give one "
            "index (or slice) per axis"
        )
    for axis, (index, size) in enumerate(zip(entries, shape, strict=True)):
        if isinstance(index, int) and not -size <= index < size:
            raise ValueError(
                f"neuron_selector {selector!r} is out of range on axis {axis + 1} ({size} entries)"
            )
