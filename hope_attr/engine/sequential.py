"""The fast path for a plain ``nn.Sequential``: its layers called one after another.

A model that is a plain ``nn.Sequential`` (nested plain ``Sequential`` containers allowed) and
carries no hooks computes nothing but its layers in order, so the engine can call each layer's
``forward`` directly instead of going through ``nn.Module.__call__`` and the engine's module
hooks (:mod:`hope_attr.engine.dispatch`): a fifth of a small MLP's expansion. Every torch call a
layer makes on a jet still reaches its rule through :func:`hope_attr.engine.dispatch.dispatch`,
and a layer type with a user's module rule is handed to that rule, as the eager path does.

:func:`plain_layers` is also how the structure-aware consumers see a model: the HOPE paper's
one-sweep rule and the MLP route of mixed partials work on chains of layers and read them here.
Nothing is traced and nothing is set on the user's modules.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from hope_attr.engine import modules as _modules
from hope_attr.engine import registry as _registry
from hope_attr.engine.jet import Jet

__all__ = ["Layers", "observing", "plain_layers", "run", "sequential_layers"]

#: ``(qualified name, module)`` of each layer, in call order.
Layers = list[tuple[str, nn.Module]]


def plain_layers(model: object) -> Layers | None:
    """The layers of a plain ``nn.Sequential``, nested plain containers flattened, with their
    qualified names; ``None`` if ``model`` is not one.

    "Plain" means the class's ``forward`` is ``nn.Sequential.forward`` and no user rule is
    registered for it. A module listed twice appears twice (it runs twice).

    Example:
        >>> from torch import nn
        >>> from hope_attr.engine.sequential import plain_layers
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Tanh(), nn.Linear(3, 1)))
        >>> [name for name, _ in plain_layers(model)]
        ['0', '1.0', '1.1']
    """
    if not _is_plain_sequential(model):
        return None
    layers: Layers = []

    def walk(container: nn.Sequential, prefix: str) -> None:
        # `_modules`, not `named_children()`: a module listed twice runs twice.
        for name, child in container._modules.items():
            path = f"{prefix}{name}"
            if child is None:
                continue
            if _is_plain_sequential(child):
                walk(child, f"{path}.")
            else:
                layers.append((path, child))

    walk(model, "")
    return layers


def sequential_layers(
    forward_func: object, inputs: Sequence[Tensor], extra: Sequence[object]
) -> Layers | None:
    """The layers to walk for ``forward_func(*inputs, *extra)``, or ``None`` where the model must
    run through its own ``__call__``: not a plain ``nn.Sequential`` of one tensor, or some module
    hook (its own or a global one) needs the modules to be called."""
    if len(inputs) != 1 or extra or not isinstance(forward_func, nn.Sequential):
        return None
    if _modules.user_hooks_present() or any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in forward_func.modules()
    ):
        return None
    # Cached for as long as the model lives, rebuilt when its module tree or the rules change.
    signature = (_registry.generation(), *((id(m), type(m)) for m in forward_func.modules()))
    cached = _LAYERS.get(forward_func)
    if cached is not None and cached[0] == signature:
        return cached[1]
    layers = plain_layers(forward_func)
    _LAYERS[forward_func] = (signature, layers)
    return layers


_LAYERS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Layers | None]] = (
    weakref.WeakKeyDictionary()
)


def run(
    forward_func: nn.Module,
    layers: Layers,
    value: object,
    observe: Callable[[object], None] | None = None,
) -> object:
    """Call every layer on ``value`` in turn (a tensor or a jet); ``observe`` sees each layer's
    output (and, on jets, every value a rule produced)."""
    with _modules.running(forward_func, observe, (value,)), torch.no_grad():
        for _, layer in layers:
            # A rule is only called on jets (the primal pass runs the layer's own forward).
            rule = _registry.module_rule(type(layer)) if isinstance(value, Jet) else None
            value = rule(layer, value) if rule is not None else type(layer).forward(layer, value)
            if observe is not None:
                observe(value)
    return value


@contextlib.contextmanager
def observing(observe: Callable[[object], None] | None) -> Iterator[None]:
    """Show ``observe`` every tensor a torch function returns (in this thread, meanwhile)."""
    if observe is None:
        yield
        return

    class _Observe(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
            result = func(*args, **(kwargs or {}))
            observe(result)
            return result

    with _Observe():
        yield


def _is_plain_sequential(module: object) -> bool:
    return (
        isinstance(module, nn.Sequential)
        and type(module).forward is nn.Sequential.forward
        and _registry.module_rule(type(module)) is None
    )
