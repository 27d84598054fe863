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

Supported: chains (``nn.Sequential``-like, no residual branches) of Linear, Conv1d/2d/3d,
AvgPool1d/2d/3d, MaxPool1d/2d/3d, Flatten/Unflatten/view/reshape, Identity/Dropout and
elementwise activations. Everything is computed in normalized coefficients (``k!`` divided out).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from hope_attr.engine import registry as _registry
from hope_attr.engine import sequential as _interpreter
from hope_attr.engine.expansion import Expansion
from hope_attr.engine.jet import Jet
from hope_attr.rules.elementwise import ELEMENTWISE_ACTIVATIONS, ELEMENTWISE_FUNCTIONS

_RESHAPES = {
    torch.flatten,
    torch.reshape,
    torch.Tensor.view,
    torch.Tensor.reshape,
    torch.Tensor.flatten,
    torch.Tensor.contiguous,
}
_PASS_THROUGH = (nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten)


@torch.no_grad()
def diagonal_coefficients(expansion: Expansion) -> list[Tensor]:
    """Like ``Expansion.unmixed_coefficients`` (``(n, B, *O, *I)``), by the paper's rule."""
    if len(expansion.inputs) != 1:
        raise ValueError("method='diagonal' supports a single input tensor; use method='exact'")
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
    """Run the graph once; return, per input-dependent step, its backward rule and input."""
    graph_module = expansion.graph
    env: dict[fx.Node, object] = {}
    dependent: set[fx.Node] = set()
    steps: list[tuple[Backward, Tensor]] = []
    arguments = iter((*expansion.inputs, *expansion.extra))
    first = True
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            env[node] = next(arguments)
            if first:
                dependent.add(node)
                first = False
            continue
        if node.op == "output":
            break
        if node.op == "get_attr":
            env[node] = _interpreter._fetch_attr(graph_module, node.target)
            continue
        args = _interpreter._load(node.args, env)
        kwargs = _interpreter._load(node.kwargs, env)
        with torch.no_grad():
            value = _interpreter._call(graph_module, node, args, kwargs)
        env[node] = value
        sources = [n for n in node.all_input_nodes if n in dependent]
        if not sources or not isinstance(value, Tensor):
            continue
        if len(sources) > 1:
            raise ValueError(
                f"method='diagonal' handles chains of layers, but node '{node.name}' combines "
                "several input-dependent values (a residual or branch); use method='exact'"
            )
        dependent.add(node)
        primal_in = env[sources[0]]
        steps.append((_backward_rule(graph_module, node, args, kwargs, primal_in), primal_in))
    return steps


def _backward_rule(
    graph_module: _interpreter.TracedGraph,
    node: fx.Node,
    args: tuple,
    kwargs: dict,
    primal_in: Tensor,
) -> Backward:
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        if isinstance(module, nn.Linear):
            return _linear_backward(module.weight)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return _conv_backward(module, primal_in.shape)
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            return _avg_pool_backward(module, primal_in)
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            return _max_pool_backward(module, primal_in)
        if isinstance(module, _PASS_THROUGH):
            return _reshape_backward
        if isinstance(module, ELEMENTWISE_ACTIVATIONS):
            return _elementwise_backward(
                lambda jet: _registry.module_rule(type(module))(module, jet)
            )
    else:
        target = node.target if node.op == "call_function" else getattr(torch.Tensor, node.target)
        if target is F.linear:
            return _linear_backward(args[1])
        if target in _RESHAPES:
            return _reshape_backward
        if target in ELEMENTWISE_FUNCTIONS:
            rule = _registry.function_rule(target)
            return _elementwise_backward(lambda jet: rule(jet, *args[1:], **kwargs))
    raise ValueError(
        f"method='diagonal' (the paper's rule) has no backward rule for graph node '{node.name}' "
        f"({node.op} {node.target}); it covers Linear, Conv, pooling, reshapes and elementwise "
        "activations. Use method='exact'."
    )


def _linear_backward(weight: Tensor) -> Backward:
    def backward(v: Tensor, primal_in: Tensor) -> Tensor:
        return torch.stack([v[k] @ weight.pow(k + 1) for k in range(v.shape[0])])

    return backward


def _conv_backward(module: nn.modules.conv._ConvNd, input_shape: torch.Size) -> Backward:
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
