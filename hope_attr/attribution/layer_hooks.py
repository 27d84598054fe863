"""One layer's activation, read or replaced for the duration of one forward pass.

The layer and neuron front ends (:class:`~hope_attr.LayerHOPEAttribution`,
:class:`~hope_attr.NeuronHOPEAttribution`) see a model through one of its modules:

* :func:`capture` runs the model once and returns what the layer produced (or received, with
  ``to_input``), checked to be something a Taylor series can start from;
* :func:`rerouted` turns the model into a function of that activation, ``g(*values, *args)``:
  the model's own forward on ``args``, with the layer handing on ``values`` instead of what it
  computed (a forward hook; a forward pre-hook for its input). The engine seeds ``values`` as
  jets, so everything after the layer runs on them;
* :func:`reading` holds the activation of the forward that runs inside it, and may stop that
  forward right after the layer, where nothing else is needed;
* :func:`eager` is the module all of these run: the one inside a ``torch.compile``-d or
  ``nn.DataParallel`` model (:func:`check_device_ids` takes Captum's ``device_ids``).

This is what Captum's layer and neuron methods do (``LayerFeatureAblation`` replaces the layer's
output by a forward hook, ``_forward_layer_eval`` reads it), with two differences: every hook lives
inside one ``with`` block and is removed in its ``finally`` (an error or Ctrl-C mid-forward leaves
the user's module as it was), and a layer that runs more than once per forward is refused instead
of silently standing for its last call. While one of these forward passes runs, its hook is on
the user's module: another thread calling the same model at that moment would meet it too, as
with Captum's layer methods.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from captum._utils.common import _format_additional_forward_args, _format_tensor_into_tuples
from torch import Tensor, nn

from hope_attr.engine import dispatch as _dispatch

__all__ = [
    "Activation",
    "Reading",
    "as_model_method",
    "capture",
    "check_device_ids",
    "check_perturbations_per_eval",
    "delegated",
    "eager",
    "model_arguments",
    "reading",
    "rerouted",
]


@dataclass(frozen=True)
class Activation:
    """What a layer produced (or received) in one forward pass.

    Attributes:
        values: the tensors, detached: one for a layer that returns a tensor, one per entry of
            a tuple or list output, one per positional argument of the layer's input.
        kind: how the layer hands them on: ``Tensor``, ``tuple`` or ``list``.
    """

    values: tuple[Tensor, ...]
    kind: type

    def handed_on(self, values: tuple[Any, ...]) -> Any:
        """``values`` in the layer's own form (what its forward hook returns)."""
        return values[0] if self.kind is Tensor else self.kind(values)


def _name(layer: nn.Module) -> str:
    return f"the layer ({type(layer).__name__})"


def _entries(layer: nn.Module, value: object, to_input: bool) -> tuple[tuple[Any, ...], type]:
    """The tensors a hook saw, and the form they came in."""
    if to_input:  # a forward pre-hook sees the positional arguments, always a tuple
        if not value:
            raise ValueError(
                f"{_name(layer)} receives no positional argument (keyword arguments only): "
                "attribute_to_layer_input reads the positional arguments, as in Captum; "
                "attribute to the output of the module that computes its input instead"
            )
        return tuple(value), tuple
    if isinstance(value, Tensor):
        return (value,), Tensor
    if isinstance(value, (tuple, list)) and value and type(value) in (tuple, list):
        return tuple(value), type(value)
    raise TypeError(
        f"{_name(layer)} returns a {type(value).__name__}; a layer attribution needs a tensor or "
        "a tuple/list of tensors: choose the submodule that computes the tensor you mean "
        "(a Hugging Face block returns a model-output object: use one of its submodules)"
    )


def _check_entries(layer: nn.Module, entries: tuple[Any, ...], batch: int, to_input: bool) -> None:
    where = "input" if to_input else "output"
    for position, entry in enumerate(entries):
        name = f"{_name(layer)}'s {where}" + (f"[{position}]" if len(entries) > 1 else "")
        if not isinstance(entry, Tensor):
            raise TypeError(
                f"{name} is a {type(entry).__name__}, not a tensor: a layer attribution needs "
                "every entry to be a tensor; choose a submodule whose "
                f"{where} is a tensor or a tuple of tensors"
            )
        if not entry.is_floating_point():
            raise TypeError(
                f"{name} has dtype {entry.dtype}: a Taylor series needs floating-point values. "
                "For token ids, attribute to the embedding layer's output instead of its input"
            )
        if entry.dim() == 0 or entry.shape[0] != batch:
            raise ValueError(
                f"{name} has shape {tuple(entry.shape)}, whose first axis is not the batch "
                f"(B = {batch}): layer attributions need the batch axis first, as in Captum "
                "(for a sequence-first module, attribute to a batch-first layer around it)"
            )


def capture(
    forward_func: Callable[..., Any], layer: nn.Module, args: tuple[Any, ...], to_input: bool
) -> Activation:
    """The layer's activation when ``forward_func(*args)`` runs, by one plain forward pass.

    Args:
        forward_func: the model.
        layer: the module whose output (or input) to read.
        args: the model's inputs followed by its additional arguments; ``args[0]`` is a tensor
            whose first axis is the batch.
        to_input: read the layer's positional arguments instead of its output.

    Raises:
        ValueError: the layer does not run exactly once, or its activation lacks the batch axis.
        TypeError: an activation that is not floating-point tensors.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> capture(model, model[1], (torch.zeros(2, 3),), to_input=False).values[0].shape
        torch.Size([2, 4])
    """
    seen: list[object] = []

    def hook(module: nn.Module, inputs: tuple, output: object = None) -> None:
        seen.append(inputs if to_input else output)

    with _hooked(layer, hook, to_input), torch.no_grad():
        forward_func(*args)
    if len(seen) != 1:
        raise ValueError(
            f"{_name(layer)} was not called by forward_func: pass a module that the model's "
            "forward calls"
            if not seen
            else f"{_name(layer)} runs {len(seen)} times in one forward pass (a module reused, "
            "e.g. one activation module applied twice; or the replicas of an nn.DataParallel "
            "model that forward_func applies: pass that model itself), so it has no single "
            "activation: give each use its own module, or choose a layer that runs once"
        )
    entries, kind = _entries(layer, seen[0], to_input)
    _check_entries(layer, entries, args[0].shape[0], to_input)
    return Activation(tuple(entry.detach() for entry in entries), kind)


def rerouted(
    forward_func: Callable[..., Any], layer: nn.Module, activation: Activation, to_input: bool
) -> Callable[..., Any]:
    """``g(*values, *args)``: ``forward_func(*args)`` with the layer handing on ``values``.

    ``values`` replace the layer's output (or, with ``to_input``, the positional arguments it
    receives) during each call of ``g``, in the form of ``activation``. Where ``forward_func``
    is a module (or a module's method), ``g`` is a method of that module, so that the engine names
    the modules of an error and checks their training mode as for the model itself.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
        >>> x = torch.zeros(2, 3)
        >>> g = rerouted(model, model[1], capture(model, model[1], (x,), False), False)
        >>> torch.equal(g(torch.zeros(2, 4), x), model[2](torch.zeros(2, 4)))
        True
    """
    count = len(activation.values)

    def function(*arguments: Any) -> Any:
        values, args = arguments[:count], arguments[count:]
        calls = [0]

        def hook(module: nn.Module, inputs: tuple, output: object = None) -> Any:
            calls[0] += 1
            if calls[0] > 1:  # capture() saw one call; a data-dependent forward may differ
                raise ValueError(
                    f"{_name(layer)} ran again in the same forward pass; a layer attribution "
                    "needs a layer that runs once per forward"
                )
            return tuple(values) if to_input else activation.handed_on(values)

        with _hooked(layer, hook, to_input):
            return forward_func(*args)

    return as_model_method(function, forward_func)


def eager(forward_func: Callable[..., Any]) -> Callable[..., Any]:
    """The module that computes ``forward_func`` on one device, eagerly.

    A ``torch.compile``-d model would hand the jets to its tracer, and an ``nn.DataParallel``
    (or ``DistributedDataParallel``) model would scatter its inputs over replicas, which jets
    (one batch of series, not tensors) cannot be: both wrap a module that computes the same
    function, which the engine runs instead (:func:`hope_attr.engine.dispatch.unwrap`). The
    layer's hooks then fire once, on the user's own module, not once per replica.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(2, 1)
        >>> eager(model) is model and eager(nn.DataParallel(model)) is model
        True
    """
    return _dispatch.unwrap(forward_func)


def check_device_ids(forward_func: object, device_ids: object) -> None:
    """Captum's ``device_ids`` (``InternalAttribution``'s): accepted where HOPE can honour it.

    Captum needs the devices of an ``nn.DataParallel`` model that ``forward_func`` *applies*
    (a function around it) to reassemble the layer's activation from the replicas. HOPE runs
    one function on one device: a parallel model given as ``forward_func`` itself is run as
    its wrapped module (:func:`eager`), so ``device_ids`` changes nothing; a function around
    one cannot be unwrapped, and over several devices each replica would receive the jets.

    Raises:
        TypeError: ``device_ids`` is not ``None`` or a list of device ids.
        ValueError: several devices for a ``forward_func`` that is not the parallel model.

    Example:
        >>> from torch import nn
        >>> model = nn.DataParallel(nn.Linear(2, 1))
        >>> check_device_ids(model, [0, 1])  # the model itself: its .module is run
        >>> check_device_ids(lambda x: model(x), [0, 1])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: device_ids=[0, 1] says that forward_func applies an nn.DataParallel model ...
    """
    if device_ids is None:
        return
    if not isinstance(device_ids, (list, tuple)) or not all(
        isinstance(d, (int, torch.device)) and not isinstance(d, bool) for d in device_ids
    ):
        raise TypeError(
            f"device_ids must be None or a list of device ids (ints), as in Captum, got "
            f"{device_ids!r}"
        )
    if len(device_ids) > 1 and eager(forward_func) is forward_func:
        raise ValueError(
            f"device_ids={list(device_ids)!r} says that forward_func applies an nn.DataParallel "
            f"model over {len(device_ids)} devices, but a Taylor expansion runs the model on one "
            "device (its jets cannot be scattered over replicas): pass the DataParallel model "
            "itself as forward_func (its .module, the same function, is run), or call "
            "model.module inside forward_func, and leave device_ids out"
        )


def as_model_method(function: Callable[..., Any], forward_func: object) -> Callable[..., Any]:
    """``function`` as a method of ``forward_func``'s module, where it has one.

    The engine names the modules of an error, and checks their training mode up front, from
    the ``__self__`` of the function it expands; a wrapper around the model keeps that.

    Example:
        >>> from torch import nn
        >>> model = nn.Linear(2, 1)
        >>> as_model_method(lambda x: model(x), model).__self__ is model
        True
    """
    owner = forward_func if isinstance(forward_func, nn.Module) else None
    owner = owner or getattr(forward_func, "__self__", None)
    if isinstance(owner, nn.Module):
        return types.MethodType(lambda _owner, *arguments: function(*arguments), owner)
    return function


class _Reached(Exception):  # noqa: N818 - not an error: the forward has done what was needed
    """Ends a forward pass right after the layer that :func:`reading` watches."""


class Reading:
    """The activation of the forward pass run inside :func:`reading` (``values`` once seen)."""

    def __init__(self) -> None:
        self.values: tuple[Any, ...] | None = None


@contextlib.contextmanager
def reading(layer: nn.Module, to_input: bool, stop: bool = True) -> Iterator[Reading]:
    """Hold the layer's activation (output, or positional inputs) of the forward run inside.

    With ``stop`` the forward ends right after the layer (the rest of the model is not needed to
    read it): the ``with`` block absorbs that ending, so the model call inside it simply returns
    early. Values are whatever the layer saw: jets inside an expansion.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> with reading(model[1], to_input=False) as read:
        ...     model(torch.zeros(2, 3))
        >>> read.values[0].shape
        torch.Size([2, 4])
    """
    read = Reading()

    def hook(module: nn.Module, inputs: tuple, output: object = None) -> None:
        if read.values is not None:
            raise ValueError(
                f"{_name(layer)} ran again in the same forward pass; a neuron attribution needs "
                "a layer that runs once per forward"
            )
        # Jets inside an expansion: their form was checked by capture() on the plain forward.
        seen = inputs if to_input else output
        read.values = tuple(seen) if isinstance(seen, (tuple, list)) else (seen,)
        if stop:
            raise _Reached

    with _hooked(layer, hook, to_input), contextlib.suppress(_Reached):
        yield read


@contextlib.contextmanager
def _hooked(layer: nn.Module, hook: Callable[..., Any], to_input: bool) -> Iterator[None]:
    if to_input:
        handle = layer.register_forward_pre_hook(hook)
    else:
        handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def model_arguments(
    inputs: Tensor | tuple[Tensor, ...], additional_forward_args: Any
) -> tuple[Any, ...]:
    """The model's inputs followed by its additional arguments, as one tuple (Captum's forms).

    Example:
        >>> import torch
        >>> len(model_arguments(torch.zeros(2, 3), (1.0, "mode")))
        3
    """
    if not isinstance(inputs, (Tensor, tuple)) or (isinstance(inputs, tuple) and not inputs):
        raise TypeError(
            f"inputs must be a tensor (B, ...) or a non-empty tuple of them, got {type(inputs)}"
        )
    formatted = _format_tensor_into_tuples(inputs)
    for position, x in enumerate(formatted):
        if not isinstance(x, Tensor) or x.dim() == 0:
            raise TypeError(
                f"inputs[{position}] must be a tensor whose first axis is the batch, got "
                f"{type(x).__name__}"
            )
    return (*formatted, *(_format_additional_forward_args(additional_forward_args) or ()))


def check_perturbations_per_eval(perturbations_per_eval: object) -> None:
    """Captum's ``perturbations_per_eval``, accepted for drop-in use: a positive int.

    Example:
        >>> check_perturbations_per_eval(0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: perturbations_per_eval must be a positive int, got 0 (it has no effect ...)
    """
    if (
        isinstance(perturbations_per_eval, bool)
        or not isinstance(perturbations_per_eval, int)
        or perturbations_per_eval < 1
    ):
        raise ValueError(
            f"perturbations_per_eval must be a positive int, got {perturbations_per_eval!r} "
            "(it has no effect here: use directions_per_chunk to bound memory)"
        )


def delegated(owner: Any, hope: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``hope.method(*args, **kwargs)`` for a layer or neuron front end ``owner``, which keeps
    the primary method's ``higher_orders_vanish`` (read by its ``has_convergence_delta``
    path) also when the call raises.

    Example:
        >>> from types import SimpleNamespace
        >>> owner, hope = SimpleNamespace(), SimpleNamespace(higher_orders_vanish=True)
        >>> hope.attribute = lambda x: x + 1
        >>> delegated(owner, hope, "attribute", 1), owner._higher_orders_vanish
        (2, True)
    """
    try:
        return getattr(hope, method)(*args, **kwargs)
    finally:
        owner._higher_orders_vanish = hope.higher_orders_vanish
