"""Run the user's own forward eagerly, with jets standing in for the input tensors.

The model's Python runs as written: shape asserts, ``if x.dim() == 3``, branches on values
(decided by the primal, i.e. at the expansion point, like a ReLU's kink), hooks, reused modules.
Every torch function that receives a :class:`~hope_attr.Jet` reaches
:meth:`Jet.__torch_function__`, which calls :func:`dispatch` here:

1. the registered Taylor rule of that function (:mod:`hope_attr.engine.registry`);
2. else, for a Python function that only dispatched to us because of its ``has_torch_function``
   check (``F.multi_head_attention_forward``), its own body, one level down;
3. else, for an ATen operator or a builtin with a decomposition in ``torch._decomp``, that
   decomposition (``hardswish``, ``native_layer_norm``...), whose pieces have rules;
4. else :class:`~hope_attr.UnsupportedOperationError`, naming the op, the module it runs in and
   the user's source line. So is a body or decomposition that fails on jets (unless the op
   fails on the plain values too: the user's error), or whose result has the wrong shape.

How modules take part (the eval-mode check, users' module rules) is in
:mod:`hope_attr.engine.modules`; where an error happened, in :mod:`hope_attr.engine.locate`. A
plain ``nn.Sequential`` skips the module call machinery (:mod:`hope_attr.engine.sequential`).

All state is thread-local, so expansions in several threads do not interfere, and a run that
stops half-way (an error, Ctrl-C) leaves nothing behind: the ``finally`` clauses restore it.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable, Sequence
from functools import cache, partial
from typing import Any

import torch
from torch import nn

from hope_attr.engine import registry as _registry
from hope_attr.engine import scope as _scope
from hope_attr.engine.arithmetic import _replace
from hope_attr.engine.jet import Jet
from hope_attr.engine.locate import where
from hope_attr.engine.modules import running


def run(
    forward_func: Callable[..., Any],
    args: Sequence[object],
    observe: Callable[[object], None] | None = None,
) -> object:
    """Call ``forward_func(*args)`` (some args may be jets) with the engine active.

    ``observe`` sees every value a rule produced (used to size chunks from the series).
    """
    with running(forward_func, observe, args), torch.no_grad():
        return forward_func(*args)


def unwrap(forward_func: Callable[..., Any]) -> Callable[..., Any]:
    """The eager module behind ``torch.compile`` and ``DataParallel`` wrappers.

    A compiled module would trace our jets with dynamo; the original module computes the same
    function eagerly. ``DataParallel`` scatters tensors over devices, which jets are not.
    """
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(forward_func, "_orig_mod") and isinstance(forward_func, nn.Module):
            forward_func = forward_func._orig_mod
        elif isinstance(forward_func, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            forward_func = forward_func.module
        elif callable(getattr(forward_func, "_torchdynamo_orig_callable", None)):
            forward_func = forward_func._torchdynamo_orig_callable  # torch.compile(function)
        else:
            break
    return forward_func


# --------------------------------------------------------------------------- dispatch
def dispatch(func: Callable[..., Any], args: tuple, kwargs: dict) -> object:
    """Apply ``func`` to arguments some of which are jets (see the module docstring)."""
    for value in args:
        if type(value) is Jet and value._stale is not None:
            value.check_current()
    rule = _registry.function_rule(func)
    if rule is None:
        rule = _fallback(func)
        if rule is None:
            raise _registry.unsupported(_kind(func), func, where())
        if _is_decomposition(rule) or _is_body(func, rule):
            return _observed(_aliased(func, args, kwargs, _borrowed(func, rule, args, kwargs)))
    return _observed(_aliased(func, args, kwargs, rule(*args, **kwargs)))


_REFUSALS = (_registry.UnsupportedOperationError, _registry.TrainingModeError)


def _borrowed(
    func: Callable[..., Any], rule: Callable[..., Any], args: tuple, kwargs: dict
) -> object:
    """Run code that is not a Taylor rule on jets: PyTorch's decomposition of ``func``, or the
    body of a Python composite.

    Its failures become a refusal that names ``func`` (torch._refs assert on jets, a body calls
    something jets cannot do), unless ``func`` fails on the plain values too: that error is the
    user's own, raised as PyTorch raises it. A body's own refusal already names the op it
    called, the module and the user's line, and passes unchanged. A decomposition whose result
    has another shape than ``func``'s is refused rather than returned.
    """
    decomposition = _is_decomposition(rule)
    try:
        result = rule(*args, **kwargs)
    except Exception as inner:
        # A warning the user turned into an error; a body's own refusal.
        own = (Warning,) if decomposition else (Warning, *_REFUSALS)
        if isinstance(inner, own):
            raise
        plain = _plain_failure(func, args, kwargs)
        if plain is not None:
            raise plain from None
        # The pieces that failed mean nothing to the user: name the op they called.
        raise _registry.unsupported(_kind(func), func, where()) from inner
    if decomposition:
        _check_shapes(func, args, kwargs, result)
    return result


def _is_body(func: object, rule: object) -> bool:
    return getattr(rule, "__code__", None) is getattr(func, "__code__", False)


def _plain_failure(func: Callable[..., Any], args: tuple, kwargs: dict) -> Exception | None:
    """The error ``func`` raises on the primal values, if it raises one (copies: ``func`` is
    not in place, but the primals are shared with the memo)."""
    copies = _replace((args, kwargs), lambda a: a.primal.clone() if type(a) is Jet else a)
    try:
        func(*copies[0], **copies[1])
    except Exception as error:  # noqa: BLE001 - whatever the user's call raises
        return error
    return None


# (func, the arguments' shapes and settings) -> the shapes of func's plain result, None where the
# meta device cannot tell; bounded, cleared when full.
_PLAIN_SHAPES: dict[tuple, object] = {}


def _check_shapes(func: object, args: tuple, kwargs: dict, result: object) -> None:
    """Refuse a decomposition's result whose shapes differ from what ``func`` returns, found by
    running ``func`` once per signature on the meta device (no data, no arithmetic)."""
    try:
        key = (func, _signature(args), _signature(kwargs))
        expected = _PLAIN_SHAPES.get(key, _PLAIN_SHAPES)
    except TypeError:  # an argument that cannot be part of a key (a callable, a module)
        return
    if expected is _PLAIN_SHAPES:
        if len(_PLAIN_SHAPES) >= 4096:
            _PLAIN_SHAPES.clear()
        expected = _PLAIN_SHAPES[key] = _meta_shapes(func, args, kwargs)
    if expected is not None and _shapes(result) != expected:
        raise _registry.UnsupportedOperationError(
            f"hope_attr: PyTorch's decomposition of {_registry._describe(func)} gave results of "
            f"shape {_shapes(result)} on jets where it returns {expected} {where()}: a Taylor "
            "rule it uses is wrong here (please report it). Register a rule for the op "
            "(docs/adding_a_rule.md), or write the operation with other ones."
        )


def _signature(value: object) -> object:
    """What a result's shape can depend on: shapes and dtypes of tensors, other values as is."""
    if isinstance(value, (Jet, torch.Tensor)):
        primal = value.primal if type(value) is Jet else value
        return (tuple(primal.shape), primal.dtype)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_signature(v) for v in value))
    if isinstance(value, dict):
        return tuple((k, _signature(v)) for k, v in value.items())
    hash(value)  # TypeError for what cannot be a key
    return (type(value), value)


def _meta_shapes(func: Callable[..., Any], args: tuple, kwargs: dict) -> object:
    def meta(value: object) -> object:
        primal = value.primal if type(value) is Jet else value
        if isinstance(primal, torch.Tensor):
            return torch.empty(primal.shape, dtype=primal.dtype, device="meta")
        return value

    copies = _replace((args, kwargs), meta)
    try:
        return _shapes(func(*copies[0], **copies[1]))
    except Exception:  # noqa: BLE001 - no meta kernel, or a shape that depends on values
        return None


def _shapes(value: object) -> object:
    if isinstance(value, (Jet, torch.Tensor)):
        return tuple((value.primal if type(value) is Jet else value).shape)
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    return None


# Functions whose result shares memory with their first argument in PyTorch (a view): an
# in-place change of either must outdate the other (Jet.link_view).
_VIEWS = frozenset(
    {
        "view", "view_as", "reshape", "reshape_as", "__getitem__", "getitem", "narrow", "select",
        "transpose", "t", "permute", "unsqueeze", "squeeze", "expand", "expand_as", "flatten",
        "unflatten", "movedim", "moveaxis", "swapaxes", "swapdims", "split", "chunk", "unbind",
        "tensor_split", "diagonal", "as_strided", "unfold", "hsplit", "vsplit", "dsplit",
        "split_with_sizes",
    }
)  # fmt: skip


def _aliased(func: object, args: tuple, kwargs: dict, result: object) -> object:
    """Link views to their source, and carry out ``inplace=True`` on the jet it names."""
    source = args[0] if args else None
    if type(source) is not Jet:
        return result
    name = getattr(func, "__name__", "")
    if name in _VIEWS:
        for view in result if isinstance(result, (tuple, list)) else (result,):
            if type(view) is Jet:
                source.link_view(view)
    elif type(result) is Jet and _in_place_requested(func, args, kwargs):
        # F.relu(h, inplace=True) changes h even where its result is not used.
        return source.assign(result)
    return result


def _in_place_requested(func: object, args: tuple, kwargs: dict) -> bool:
    if kwargs.get("inplace") is True:
        return True
    position = _inplace_position(func)
    return position is not None and len(args) > position and args[position] is True


@cache
def _inplace_position(func: object) -> int | None:
    """The positional index of ``func``'s ``inplace`` parameter (``F.relu(x, True)``), if any."""
    try:
        names = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("inplace") if "inplace" in names else None


def _observed(result: object) -> object:
    state = _scope.current().run
    if state is not None and state.observe is not None:
        state.observe(result)
    return result


def _is_decomposition(rule: object) -> bool:
    return getattr(rule, "__module__", "").startswith(
        ("torch._decomp", "torch._refs", "torch._prims")
    )


def _kind(func: object) -> str:
    if isinstance(func, torch._ops.OpOverload):
        return "ATen operator"
    if getattr(func, "__objclass__", None) is not None:
        return "tensor method"
    return "function"


@cache
def _fallback(func: Callable[..., Any]) -> Callable[..., Any] | None:
    body = _composite_body(func)
    if body is not None:
        return body
    in_place = _in_place_rule(func)
    if in_place is not None:
        return in_place
    if isinstance(func, torch._ops.OpOverload):
        # An ATen op (from a decomposition): its torch-level namesake usually has a rule and the
        # same argument convention (aten.add.Tensor(a, b, alpha=) is torch.add(a, b, alpha=)).
        name = func.overloadpacket.__name__
        for home in (torch, torch.Tensor, torch.nn.functional):
            namesake = getattr(home, name, None)
            rule = _registry.function_rule(namesake) if namesake is not None else None
            if rule is not None:
                return rule
    if _in_place_name(func):  # a decomposition would return the new value and drop the write
        return None
    return _decomposition(func)


def _in_place_name(func: object) -> bool:
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet if packet is not None else func, "__name__", "") or ""
    return name.endswith("_") and not name.endswith("__")


def _in_place_rule(func: object) -> Callable[..., Any] | None:
    """``hardswish_(x)``, ``aten.relu_``: the out-of-place op, then written into ``x``."""
    if not _in_place_name(func):
        return None
    if isinstance(func, torch._ops.OpOverload):
        name = func.overloadpacket.__name__
        packet = getattr(torch.ops.aten, name[:-1], None)
        out_of_place = getattr(packet, func._overloadname, None) if packet else None
    else:
        name = func.__name__
        # Tensor.add_ is a method of its __objclass__; torch.tanh_ and F.celu_ have no home
        # that says so (their __self__ is None): their namesakes are in torch and F.
        home = getattr(func, "__objclass__", None) or getattr(func, "__self__", None)
        homes = [home] if home is not None else [torch, torch.nn.functional]
        if not any(getattr(h, name, None) is func for h in homes):
            return None
        out_of_place = next(
            (o for o in (getattr(h, name[:-1], None) for h in homes) if o is not None), None
        )
    if name in _OVERWRITES:
        return _overwrite_rule(name)
    if out_of_place is None:
        return None

    def rule(target: object, *args: object, **kwargs: object) -> object:
        try:
            result = dispatch(out_of_place, (target, *args), kwargs)
        except TypeError as error:  # the twin takes other arguments: bernoulli_(p), bernoulli()
            raise _registry.unsupported(_kind(func), func, where()) from error
        if isinstance(target, Jet):
            return target.assign(result)
        if isinstance(result, Jet):  # a plain tensor cannot hold what depends on the input
            raise _writes_into_constant(func)
        return result

    return rule


_DISPATCH_CHECKS = ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic")


def _composite_body(func: object) -> Callable[..., Any] | None:
    """A Python function's body with its own ``has_torch_function`` check switched off.

    ``F.multi_head_attention_forward(jet, ...)`` reaches us only because it checks its arguments
    for ``__torch_function__`` first; its body is ordinary torch code, which runs on jets (every
    call inside it reaches :func:`dispatch` again, one level down).
    """
    if not isinstance(func, types.FunctionType):
        return None
    if not set(_DISPATCH_CHECKS) & set(func.__code__.co_names):
        return None
    namespace = dict(func.__globals__)
    for name in _DISPATCH_CHECKS:
        namespace[name] = _never
    body = types.FunctionType(
        func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__
    )
    body.__kwdefaults__ = func.__kwdefaults__
    return body


def _never(*args: object, **kwargs: object) -> bool:
    return False


def _decomposition(func: object) -> Callable[..., Any] | None:
    """PyTorch's own decomposition of ``func`` into simpler ops, if it has one."""
    from torch._decomp import decomposition_table

    if isinstance(func, torch._ops.OpOverload):
        return _unwrapped(decomposition_table.get(func))
    name = getattr(func, "__name__", None)
    packet = getattr(torch.ops.aten, name, None) if name else None
    if packet is None and name and name.startswith("special_"):  # torch.special.X is aten.X
        packet = getattr(torch.ops.aten, name.removeprefix("special_"), None)
    if packet is None:
        return None
    for overload in ("default", "Tensor", "self", "input"):
        op = getattr(packet, overload, None)
        if op is not None and op in decomposition_table:
            return _unwrapped(decomposition_table[op])
    return None


def _unwrapped(decomposition: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """The decomposition without its ``out=``/type-promotion wrappers, which insist on real
    tensors; jets keep the input's dtype, which is all those wrappers would decide."""
    return inspect.unwrap(decomposition) if decomposition is not None else None


# --------------------------------------------------------------------------- tensor attributes
# Attributes and query methods that read only metadata: a jet answers them with its primal's.
_METADATA = frozenset(
    {
        "shape", "dtype", "device", "ndim", "layout", "is_nested", "is_cuda", "is_cpu",
        "is_sparse", "is_quantized", "is_meta", "is_mkldnn", "is_mps", "is_xla", "names",
        "requires_grad", "is_leaf", "grad_fn", "itemsize",
    }
)  # fmt: skip
_QUERIES = frozenset(
    {
        "size", "dim", "numel", "nelement", "element_size", "stride", "is_contiguous",
        "is_floating_point", "is_complex", "get_device", "new_zeros", "new_ones", "new_empty",
        "new_full", "new_tensor", "storage_offset", "is_signed",
    }
)  # fmt: skip


def tensor_attribute(jet: Jet, name: str) -> object:
    """``jet.<name>``: a metadata read, a bound Taylor rule, or an in-place update."""
    if name in ("requires_grad", "grad_fn"):  # jets are computed with autograd off
        return False if name == "requires_grad" else None
    if name in _METADATA:
        return getattr(jet.primal, name)
    if name in _QUERIES:
        return getattr(jet.primal, name)
    method = getattr(torch.Tensor, name, None)
    if method is None:
        raise AttributeError(f"'Tensor' object has no attribute '{name}'")
    if name.endswith("_") and not name.endswith("__"):
        return _in_place(jet, name)
    if not callable(method):  # a property such as .T or .mT
        return dispatch(getattr, (jet, name), {})
    return lambda *args, **kwargs: dispatch(method, (jet, *args), kwargs)


def _in_place(jet: Jet, name: str) -> Callable[..., Jet]:
    if name in _OVERWRITES:
        return partial(_OVERWRITES[name], jet)
    out_of_place = getattr(torch.Tensor, name[:-1], None)
    if out_of_place is None:
        raise _registry.unsupported("tensor method", getattr(torch.Tensor, name), where())

    def update(*args: object, **kwargs: object) -> Jet:
        return jet.assign(dispatch(out_of_place, (jet, *args), kwargs))

    return update


def _copy_into(jet: Jet, source: object, non_blocking: bool = False) -> Jet:
    if isinstance(source, Jet):
        return _broadcast_into(jet, source)
    # A constant: PyTorch's copy_ broadcasts and casts it; the entries get no series.
    return jet.assign(jet.primal.clone().copy_(source))


def _fill(jet: Jet, value: object) -> Jet:
    # fill_ on the primal first: PyTorch's own error for a value that is not 0-d or a number.
    filled = jet.primal.clone().fill_(value.primal if isinstance(value, Jet) else value)
    return _broadcast_into(jet, value) if isinstance(value, Jet) else jet.assign(filled)


def _zero(jet: Jet) -> Jet:
    return jet.assign(torch.zeros_like(jet.primal))


def _broadcast_into(jet: Jet, source: Jet) -> Jet:
    """``jet`` made to hold ``source`` broadcast to its shape and cast to its dtype."""
    if source.primal.shape != jet.primal.shape:
        source = dispatch(torch.Tensor.expand, (source, jet.primal.shape), {})
    if source.primal.dtype != jet.primal.dtype:
        source = dispatch(torch.Tensor.to, (source, jet.primal.dtype), {})
    return jet.assign(source)


# In-place writes that replace every entry and have no out-of-place namesake: the jet then holds
# what was written, a jet's series or, for constants, none.
_OVERWRITES: dict[str, Callable[..., Jet]] = {"copy_": _copy_into, "fill_": _fill, "zero_": _zero}


def _overwrite_rule(name: str) -> Callable[..., object]:
    """``torch.Tensor.copy_(target, ...)``, ``torch.fill_``, ``aten.zero_`` as torch calls."""
    write = _OVERWRITES[name]

    def rule(target: object, *args: object, **kwargs: object) -> object:
        if isinstance(target, Jet):
            return write(target, *args, **kwargs)
        raise _writes_into_constant(getattr(torch.Tensor, name))

    return rule


def _writes_into_constant(func: object) -> Exception:
    name = getattr(func, "__name__", str(func))
    return _registry.UnsupportedOperationError(
        f"hope_attr: {name} writes a value that depends on the input into a tensor that does "
        f"not, in place {where()}; that tensor cannot hold a Taylor series. Write it out of "
        "place (acc = acc + value instead of acc.add_(value)); `acc += value` works."
    )


def unsupported_mutation(jet: Jet) -> Exception:
    return _registry.UnsupportedOperationError(
        "hope_attr cannot write a constant into a tensor that depends on the input in place "
        f"{where()}; write the operation out of place (y = f(x) instead of x.f_())."
    )


_registry.install_engine(sys.modules[__name__])
