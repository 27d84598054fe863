"""The HOPE paper's one-sweep backward rule (``method="diagonal"``): a fast approximation.

The paper (Sec. 3, Eq. 28-29, 37, 40-57; its code's ``hopegrad``) propagates, from the output
back to the input, only the *unmixed* derivatives ``v[k] = d^k y / d z_j^k`` of each layer:

* linear layer ``z = W x + b``:  ``v_x[k] = (W^T)^{o k} v_z[k]`` (elementwise power of W);
* convolution: the same with the kernel's elementwise power (a transposed convolution);
* average pooling: a linear layer with weights ``1/|window|``; max pooling: the argmax's
  weight ``1``; reshapes: a permutation;
* elementwise activation ``z = s(x)``: Faa di Bruno, ``v_x[k] = sum_m B_{k,m}(s', s'', ..) v_z[m]``.

The true chain rule through a linear layer is ``d^2y/dx_i^2 = sum_{j,l} W_ji W_li d^2y/dz_j dz_l``;
the rule keeps only ``j == l``. The dropped cross terms vanish right below the last linear layer,
so the rule is **exact only for order 1 or networks with one hidden nonlinear layer**; deeper, its
orders >= 2 are wrong (``benchmarks/paper_rule.py`` measures by how much). It is kept because it
is one backward sweep: cheap where the exact jets are not.

Supported: a plain ``nn.Sequential`` (nested plain ones allowed, no module hooks) called on one
tensor, of Linear, Conv1d/2d/3d, AvgPool1d/2d/3d, MaxPool1d/2d/3d, Flatten/Unflatten,
Identity/Dropout and elementwise activation layers (torch's, or a module whose ``forward``
returns one elementwise torch function of its input, such as ``torch.sin(x)``). The rule is a
backward sweep over a chain of layers, so it walks the layers themselves
(:func:`hope_attr.engine.sequential.plain_layers`), running each once on the primal, and refuses
any other model, pointing to ``method="exact"``. Each layer's backward is chosen by its type, so
a layer the engine would compute otherwise (a subclass with its own ``forward``, a Taylor rule a
user registered for its type or for a function it calls) is refused too: the rule would
silently ignore it. An activation's series comes from the engine running the layer on a unit
jet. Everything is computed in normalized coefficients (``k!`` divided out).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hope_attr.derivatives.mlp import (
    IDENTITY_IN_EVAL,
    Call,
    call_recording,
    forward_owner,
    user_rule_of,
)
from hope_attr.engine import dispatch as _dispatch
from hope_attr.engine import sequential as _sequential
from hope_attr.engine.expansion import Expansion
from hope_attr.engine.jet import Jet
from hope_attr.rules.elementwise import ELEMENTWISE_ACTIVATIONS, ELEMENTWISE_FUNCTIONS

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_AVERAGE_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
# Layers that only rearrange entries (or, in eval mode, pass them on): a permutation backwards.
_PASS_THROUGH = (nn.Flatten, nn.Unflatten, *IDENTITY_IN_EVAL)
_SUPPORTED = (
    "method='diagonal' (the paper's rule) is a backward sweep over a chain of layers: it needs a "
    "plain nn.Sequential (nested ones allowed) of Linear, Conv1d/2d/3d, AvgPool/MaxPool 1d/2d/3d, "
    "Flatten/Unflatten, Identity/Dropout and elementwise activation layers (a module of yours "
    "qualifies when its forward returns one elementwise torch function of its input), called on "
    "one input tensor without module hooks"
)
_FIX = "Use method='exact', which expands any model exactly."


@torch.no_grad()
def diagonal_coefficients(expansion: Expansion) -> list[Tensor]:
    """Like ``Expansion.unmixed_coefficients`` (``(n, B, *O, *I)``), by the paper's rule.

    Raises:
        ValueError: the model is not a chain this rule covers (see the module docstring); the
            message names the model or layer and says to use ``method="exact"``.
    """
    steps = _forward_chain(expansion)
    order, output = expansion.order, expansion.output
    classes = output[0].numel()
    # v[k-1]: (classes, B, *S) normalized derivatives of every output w.r.t. the current layer.
    v = torch.zeros(order, classes, *output.shape, dtype=output.dtype, device=output.device)
    eye = torch.eye(classes, dtype=output.dtype, device=output.device)
    v[0] = eye.reshape(classes, 1, *output.shape[1:]).expand(classes, *output.shape)
    for backward, primal_in in reversed(steps):
        v = backward(v, primal_in)
    x = expansion.inputs[0]
    # (n, classes, B, *I) -> (n, B, *O, *I)
    result = v.reshape(order, *output.shape[1:], *x.shape).movedim(len(output.shape[1:]) + 1, 1)
    return [result]


Backward = Callable[[Tensor, Tensor], Tensor]


def _forward_chain(expansion: Expansion) -> list[tuple[Backward, Tensor]]:
    """Run the layers once on the primal; return, per layer, its backward rule and input."""
    layers = _chain(expansion)
    steps: list[tuple[Backward, Tensor]] = []
    value = expansion.inputs[0]
    for name, layer in layers:
        output, called = call_recording(layer, value)
        registered = user_rule_of(layer, called)
        if registered is not None:
            raise ValueError(
                f"{_SUPPORTED}; layer '{name}' ({type(layer).__name__}) meets {registered}, "
                f"which the paper's rule would ignore. {_FIX}"
            )
        steps.append((_backward_rule(name, layer, value, output, called), value))
        value = output
    return steps


def _chain(expansion: Expansion) -> _sequential.Layers:
    """The model's layers, or a ValueError that says why the rule does not apply."""
    model = expansion.forward_func
    layers = _sequential.plain_layers(model)
    if layers is None:
        what = type(model).__qualname__
        kind = "a model with its own forward" if isinstance(model, nn.Module) else "a function"
        raise ValueError(f"{_SUPPORTED}; got {what} ({kind}). {_FIX}")
    if len(expansion.inputs) != 1 or expansion.extra:
        raise ValueError(
            f"{_SUPPORTED}; got {len(expansion.inputs)} input tensor(s) and "
            f"{len(expansion.extra)} additional_forward_args. {_FIX}"
        )
    # The fast path's conditions are this rule's: no module hooks, which it would not run.
    if _sequential.sequential_layers(model, expansion.inputs, ()) is None:
        raise ValueError(
            f"{_SUPPORTED}; the model or one of its layers has module hooks (or global module "
            f"hooks are registered), which the paper's rule would not run. {_FIX}"
        )
    if not layers:
        raise ValueError(f"{_SUPPORTED}; got an empty nn.Sequential. {_FIX}")
    return layers


def _backward_rule(
    name: str, module: nn.Module, primal_in: Tensor, output: Tensor, called: list[Call]
) -> Backward:
    """The layer's backward rule, chosen by the class whose ``forward`` it runs; a module of
    another class qualifies as an elementwise activation when its ``forward`` applied one
    elementwise function to its input and returned the result (``called``, at the primal)."""
    owner = forward_owner(type(module))
    if owner is nn.Linear:
        return _linear_backward(module.weight)
    if owner in _CONVOLUTIONS:
        return _conv_backward(name, module, primal_in.shape)
    if owner in _AVERAGE_POOLS:
        return _avg_pool_backward(module, primal_in)
    if owner in _MAX_POOLS:
        return _max_pool_backward(module, primal_in)
    if owner in _PASS_THROUGH:
        return _reshape_backward
    if owner in ELEMENTWISE_ACTIVATIONS or _is_one_elementwise_call(output, called):
        # The layer's own forward on a unit jet, run by the engine: its Taylor series.
        return _elementwise_backward(lambda jet: _dispatch.run(module, (jet,)))
    if issubclass(type(module), _KNOWN):  # so it has a forward of its own
        problem = (
            f"is a {type(module).__name__}, a subclass of {_known_base(type(module))} with its "
            "own forward, which the rule cannot see into"
        )
    else:
        problem = f"is a {type(module).__name__}, which the rule has no backward for"
    raise ValueError(f"{_SUPPORTED}; layer '{name}' {problem}. {_FIX}")


_KNOWN = (
    nn.Linear,
    *_CONVOLUTIONS,
    *_AVERAGE_POOLS,
    *_MAX_POOLS,
    *_PASS_THROUGH,
    *ELEMENTWISE_ACTIVATIONS,
)


def _is_one_elementwise_call(output: Tensor, called: list[Call]) -> bool:
    """A user's activation module, e.g. ``forward = lambda x: torch.sin(x)``."""
    if len(called) != 1:
        return False
    function, on_input, result = called[0]
    return function in ELEMENTWISE_FUNCTIONS and on_input and result is output


def _known_base(module_type: type) -> str:
    return next(c.__name__ for c in module_type.__mro__ if c in _KNOWN)


def _linear_backward(weight: Tensor) -> Backward:
    def backward(v: Tensor, primal_in: Tensor) -> Tensor:
        return torch.stack([v[k] @ weight.pow(k + 1) for k in range(v.shape[0])])

    return backward


def _conv_backward(name: str, module: nn.modules.conv._ConvNd, input_shape: torch.Size) -> Backward:
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ValueError(
            f"method='diagonal' needs convolutions with numeric zero padding; layer '{name}' has "
            f"padding={module.padding!r}, padding_mode={module.padding_mode!r}. {_FIX}"
        )
    grad_input = {
        1: torch.nn.grad.conv1d_input,
        2: torch.nn.grad.conv2d_input,
        3: torch.nn.grad.conv3d_input,
    }[len(module.kernel_size)]

    def backward(v: Tensor, primal_in: Tensor) -> Tensor:
        out = []
        for k in range(v.shape[0]):
            flat = v[k].reshape(-1, *v.shape[3:])
            shape = (flat.shape[0], *input_shape[1:])
            out.append(
                grad_input(
                    shape,
                    module.weight.pow(k + 1),
                    flat,
                    module.stride,
                    module.padding,
                    module.dilation,
                    module.groups,
                )
            )
        return torch.stack(out).reshape(v.shape[0], v.shape[1], *input_shape)

    return backward


def _avg_pool_backward(module: nn.Module, primal_in: Tensor) -> Backward:
    kernel = (
        module.kernel_size
        if isinstance(module.kernel_size, tuple)
        else ((module.kernel_size,) * (primal_in.dim() - 2))
    )
    window = float(torch.tensor(kernel).prod())
    uniform = module.padding in (0, (0,) * len(kernel)) or module.count_include_pad
    if getattr(module, "ceil_mode", False) or not uniform or module.divisor_override:
        raise ValueError(
            "method='diagonal' needs average pooling with equal windows "
            "(no ceil_mode, no divisor_override); use method='exact'"
        )
    return _transpose_of(module, primal_in, lambda k: window**-k)


def _max_pool_backward(module: nn.Module, primal_in: Tensor) -> Backward:
    return _transpose_of(module, primal_in, lambda k: 1.0)


def _transpose_of(module: nn.Module, primal_in: Tensor, scale: Callable[[int], float]) -> Backward:
    """Backward through a map whose nonzero Jacobian entries all equal ``w``: ``w^k J^T``."""

    def backward(v: Tensor, primal_in: Tensor = primal_in) -> Tensor:
        classes = v.shape[1]
        repeated = primal_in.unsqueeze(0).expand(classes, *primal_in.shape)
        repeated = repeated.reshape(-1, *primal_in.shape[1:])
        _, vjp = torch.func.vjp(module, repeated)
        out = []
        for k in range(v.shape[0]):
            (grad,) = vjp(v[k].reshape(-1, *v.shape[3:]))
            # vjp applies w once; the rule needs w^(k+1)
            out.append(grad * (scale(k + 1) / scale(1)))
        return torch.stack(out).reshape(v.shape[0], classes, *primal_in.shape)

    return backward


def _reshape_backward(v: Tensor, primal_in: Tensor) -> Tensor:
    return v.reshape(*v.shape[:2], *primal_in.shape)


def _elementwise_backward(rule: Callable[[Jet], Jet]) -> Backward:
    """Faa di Bruno for ``z = s(x)`` elementwise, in normalized coefficients.

    With ``w(t) = s(x + t) - s(x) = sum_j c_j t^j`` and ``y = sum_m v_z[m] w^m``:
    ``v_x[k] = sum_{m <= k} [w^m]_k v_z[m]``.
    """

    def backward(v: Tensor, primal_in: Tensor) -> Tensor:
        order = v.shape[0]
        unit = Jet(primal_in, torch.ones_like(primal_in).unsqueeze(0).unsqueeze(0), order)
        c = rule(unit).full_series()[:, 0]  # (n, B, *S): c_j = s^(j)(x) / j!
        power = c  # [w^1]_k for k = 1..n
        out = power.unsqueeze(1) * v[0]
        for m in range(2, order + 1):
            # [w^m]_k = sum_i c_i [w^(m-1)]_(k-i); only k >= m is nonzero.
            nxt = torch.zeros_like(power)
            for i in range(1, order - m + 2):
                nxt[m - 1 + i - 1 :] += c[i - 1] * power[m - 2 : order - i]
            power = nxt
            out[m - 1 :] += power[m - 1 :].unsqueeze(1) * v[m - 1]
        return out

    return backward
