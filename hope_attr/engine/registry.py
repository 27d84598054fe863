"""The one registry of Taylor rules, and the errors it raises.

A rule tells the engine (:mod:`hope_attr.engine.dispatch`) how an operation acts on jets
(convention: :mod:`hope_attr.engine.jet`).

* A **function rule** is registered for a function (``torch.tanh``, ``F.relu``,
  ``operator.add``) or a tensor method (``torch.Tensor.view``) and called with that function's
  own arguments. Every built-in rule is one (:mod:`hope_attr.rules` registers them all).
* A **module rule** is registered by a user for an ``nn.Module`` type and called as
  ``rule(module, *args, **kwargs)``. It matches subclasses (lookup walks the MRO); the module's
  own ``forward`` still runs, on the primal values, and the rule supplies the jet.

Arguments that depend on the model input arrive as :class:`~hope_attr.Jet`; everything else
arrives unchanged. Operations none of whose arguments are jets run as usual and need no rule.
"""

from __future__ import annotations

import operator
import types
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

RuleFn = TypeVar("RuleFn", bound=Callable[..., Any])

_MODULE_RULES: dict[type, Callable[..., Any]] = {}
_FUNCTION_RULES: dict[object, Callable[..., Any]] = {}
# Bumped by every (un)registration, so that what was derived from the rules can be cached.
_generation = 0

# The engine that applies rules to jets (hope_attr.engine.dispatch installs itself when it is
# imported). The jet type reaches it through here: the data type cannot import the engine, which
# builds on it.
_engine: Any = None


def install_engine(engine: Any) -> None:
    """Make ``engine`` (a module with ``dispatch``, ``tensor_attribute`` and
    ``unsupported_mutation``) the one that :class:`~hope_attr.Jet` hands torch calls to."""
    global _engine
    _engine = engine


def engine() -> Any:
    """The installed engine (:mod:`hope_attr.engine.dispatch`)."""
    if _engine is None:
        raise RuntimeError(
            "hope_attr's engine is not loaded: import hope_attr (or hope_attr.engine.dispatch) "
            "before applying torch functions to a Jet"
        )
    return _engine


_HOW_TO_ADD = (
    "Register a Taylor rule with @hope_attr.register_rule({target}) (see docs/adding_a_rule.md), "
    "or express the operation with supported ones."
)


class UnsupportedOperationError(NotImplementedError):
    """The model uses an operation that has no Taylor rule."""


class DroppedDependenceWarning(UserWarning):
    """A value that depends on the input left the jet (``.detach()``, ``.item()``,
    ``float(x)``...): from there on it is a constant, as autograd treats it, so the expansion
    is not the Taylor series of the function the forward computes if that value flows on as a
    number (a branch on it is fine)."""


class TrainingModeError(RuntimeError):
    """A module that behaves differently in training mode was found in training mode."""


def register_rule(*targets: object, override: bool = False) -> Callable[[RuleFn], RuleFn]:
    """Register a Taylor rule for module types, functions or tensor methods.

    Args:
        *targets: ``nn.Module`` subclasses, functions (``torch.tanh``, ``F.gelu``,
            ``operator.mul``) or tensor methods (``torch.Tensor.view``).
        override: replace an existing rule instead of raising.

    Returns:
        A decorator that registers the rule and returns it unchanged.

    Raises:
        ValueError: a target already has a rule (and not ``override``), or no target given.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> import hope_attr
        >>> from hope_attr import Jet
        >>> class Cube(nn.Module):
        ...     def forward(self, x):
        ...         return x ** 3
        >>> @hope_attr.register_rule(Cube)
        ... def cube_rule(module: Cube, x: Jet) -> Jet:
        ...     return x * x * x
        >>> d = hope_attr.unmixed_derivatives(Cube(), torch.tensor([[2.0]]), order=3)
        >>> d[:, 0, 0, 0].tolist()  # 3x^2, 6x, 6
        [12.0, 12.0, 6.0]
        >>> hope_attr.unregister_rule(Cube)
    """
    if not targets:
        raise ValueError("register_rule needs at least one module type, function or method")

    def decorator(rule: RuleFn) -> RuleFn:
        # Check every target before registering any, so a failed call registers nothing.
        for target in targets:
            table = _table_for(target)
            if target in table and not override:
                raise ValueError(
                    f"{_describe(target)} already has a Taylor rule "
                    f"({table[target].__qualname__}); pass override=True to replace it."
                )
        global _generation
        for target in targets:
            _warn_if_never_dispatched(target)
            _table_for(target)[target] = rule
        _generation += 1
        return rule

    return decorator


def _warn_if_never_dispatched(target: object) -> None:
    """A plain Python function runs as written when a model calls it (its body then meets the
    rules of what it calls); a rule for it is consulted only if it dispatches on its arguments."""
    if not isinstance(target, types.FunctionType):
        return
    if target.__module__.startswith(("torch", "hope_attr")):
        return
    if {"has_torch_function", "has_torch_function_unary", "has_torch_function_variadic"} & set(
        target.__code__.co_names
    ):
        return
    warnings.warn(
        f"{_describe(target)} is a plain Python function: a model that calls it runs its body, "
        "so this rule would never be consulted. Decorate the function with "
        "@torch.overrides.wrap_torch_function(lambda x, *args, **kwargs: (x,)) so that calls "
        "on jets reach the rule (see docs/adding_a_rule.md).",
        stacklevel=3,
    )


def unregister_rule(*targets: object) -> None:
    """Remove the rules of ``targets`` (e.g. a rule registered in a test)."""
    global _generation
    for target in targets:
        _table_for(target).pop(target, None)
    _generation += 1


def generation() -> int:
    """A number that changes whenever a rule is registered or removed."""
    return _generation


def module_rule(module_type: type) -> Callable[..., Any] | None:
    """The rule of the closest registered class along the MRO, or None.

    A subclass that overrides ``forward`` computes something else than the class the rule was
    written for, so it does not inherit the rule (its own forward runs on the jets instead).
    """
    for cls in module_type.__mro__:
        if cls in _MODULE_RULES:
            return _MODULE_RULES[cls] if module_type.forward is cls.forward else None
    return None


def function_rule(target: object) -> Callable[..., Any] | None:
    return _FUNCTION_RULES.get(target)


def unsupported(kind: str, target: object, where: str) -> UnsupportedOperationError:
    return UnsupportedOperationError(
        f"hope_attr has no Taylor rule for {kind} {_describe(target)} {where}. "
        + _HOW_TO_ADD.format(target=_describe_for_code(target))
    )


def _table_for(target: object) -> dict:
    is_module_type = isinstance(target, type) and issubclass(target, nn.Module)
    return _MODULE_RULES if is_module_type else _FUNCTION_RULES


def _describe(target: object) -> str:
    if isinstance(target, type):
        return f"{target.__module__}.{target.__qualname__}"
    if getattr(target, "__objclass__", None) is not None:  # a tensor method descriptor
        return f"torch.Tensor.{target.__name__}"
    name = getattr(target, "__name__", None)
    # torch's builtins report odd owners ("_VariableFunctionsClass.atan"): name their public home.
    homes = (
        (torch.nn.functional, "torch.nn.functional"),
        (torch, "torch"),
        (torch.special, "torch.special"),
        (torch.linalg, "torch.linalg"),
        (torch.fft, "torch.fft"),
        (operator, "operator"),
    )
    for home, prefix in homes:
        for candidate in (name, (name or "").removeprefix("special_")):
            if candidate and getattr(home, candidate, None) is target:
                return f"{prefix}.{candidate}"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    module = getattr(target, "__module__", None)
    return f"{module}.{name}" if module and name else repr(target)


def _describe_for_code(target: object) -> str:
    return target.__qualname__ if isinstance(target, type) else _describe(target)
