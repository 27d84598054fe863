"""Taylor rules of linear layers: Linear, convolutions (with the input seed's kernel reads and
receptive-field windows), batch norm in eval mode, identity and dropout.

A linear map acts on every coefficient; a bias shifts the primal only
(:func:`hope_attr.engine.arithmetic.map_batchwise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hope_attr.engine import arithmetic as ar
from hope_attr.engine import registry as _registry
from hope_attr.engine import workspace as _workspace
from hope_attr.engine.jet import Jet
from hope_attr.engine.memo import cached
from hope_attr.engine.registry import TrainingModeError, register_rule
from hope_attr.engine.windows import Window
from hope_attr.rules.checks import refusal


@register_rule(F.linear)
def _linear(x: object, weight: object, bias: object = None) -> Jet:
    if ar.is_jet(weight) or ar.is_jet(bias) or not ar.is_jet(x):
        # A weight that depends on the input (a hypernetwork): x W^T + b, a product of jets.
        out = torch.matmul(x, weight.t() if weight.dim() == 2 else weight)
        return out + bias if bias is not None else out
    primal = cached(F.linear, x.primal, weight, bias)
    if x.seed is not None and x.primal.dim() == 2:
        # Direction e_i through x @ W^T is column i of W: read it instead of multiplying one-hots,
        # from a transposed copy: the strided view of W^T made every later elementwise pass
        # over these series read memory 784 floats apart (an MLP's first tanh: 2.5x slower).
        columns = cached(_transposed, weight)[x.seed.start : x.seed.stop]
        return x.with_series(primal, columns.reshape(1, columns.shape[0], 1, -1))
    # The map acts on the last axis alone: every coefficient at once, whatever the layout.
    return x.with_series(primal, F.linear(x.series, weight))


def _transposed(weight: Tensor) -> Tensor:
    return weight.t().contiguous()


@dataclass(frozen=True)
class _ConvCall:
    """One convolution's weight and geometry, from a module or from an ``F.convNd`` call (the
    seed rules below read the same attribute names as ``nn.Conv2d`` has)."""

    weight: Tensor
    bias: Tensor | None
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str = "zeros"

    @classmethod
    def of_module(cls, module: nn.modules.conv._ConvNd) -> _ConvCall:
        padding = module.padding
        return cls(
            module.weight, module.bias, module.stride, padding, module.dilation, module.groups,
            module.padding_mode,
        )  # fmt: skip

    @classmethod
    def of_arguments(
        cls, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups=1
    ) -> _ConvCall:  # noqa: ANN001
        spatial = weight.dim() - 2

        def per_axis(value: object) -> tuple[int, ...] | str:
            if isinstance(value, str):
                return value
            return (value,) * spatial if isinstance(value, int) else tuple(value)

        return cls(weight, bias, per_axis(stride), per_axis(padding), per_axis(dilation), groups)

    @property
    def function(self) -> Callable[..., Tensor]:
        return (F.conv1d, F.conv2d, F.conv3d)[self.weight.dim() - 3]

    def __call__(self, x: Tensor, with_bias: bool = True) -> Tensor:
        bias = self.bias if with_bias else None
        return self.function(
            x, self.weight, bias, self.stride, self.padding, self.dilation, self.groups
        )

    def primal(self, x: Tensor) -> Tensor:
        """The convolution of a primal (with the bias), shared by the chunks of an expansion."""
        args = (self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return cached(self.function, x, *args)


def _conv_function(x: Jet, weight: Tensor, *args, **kwargs) -> Jet:
    _constant_parameters("a convolution", weight, *args, *kwargs.values())
    return _conv(_ConvCall.of_arguments(weight, *args, **kwargs), x)


def _constant_parameters(op: str, *parameters: object) -> None:
    """Refuse parameters that depend on the input where the rule treats them as constants."""
    if any(ar.is_jet(p) for p in parameters):
        raise refusal(
            f"{op} whose weight, bias or statistics depend on the input",
            "hope_attr's rule applies them as constants to every Taylor coefficient",
            "Compute them from constants, or write the operation with matmul/einsum, which "
            "expand products of two input-dependent tensors.",
        )


for _target in (F.conv1d, F.conv2d, F.conv3d):
    register_rule(_target)(_conv_function)


def _conv(call: _ConvCall, x: Jet) -> Jet:
    primal = call.primal(x.primal)
    if x.seed is not None and x._series is None and not isinstance(call.padding, str):
        # A model input's one-pixel directions: read the kernel instead of convolving one-hots.
        window = _seed_window(call, x.seed.start, x.seed.stop, x.primal.shape, primal.shape)
        if window is not None:
            return _conv_seed_window(call, x, window, primal)
        response = _conv_seed_response(call, x.seed.start, x.seed.stop, x.primal.shape)
        return x.with_series(primal, response.unsqueeze(0).unsqueeze(2))
    if x.window is not None and _keeps_windows(call):
        return _conv_window(call, x, primal)
    return ar.map_batchwise(x, lambda s: call(s, with_bias=False), primal)


def _keeps_windows(call: _ConvCall) -> bool:
    return (
        not isinstance(call.padding, str)
        and call.padding_mode == "zeros"
        and all(s == 1 for s in call.stride)
        and all(d == 1 for d in call.dilation)
    )


def _conv_window(call: _ConvCall, x: Jet, primal: Tensor) -> Jet:
    """A convolution of windowed series, computed on the windows themselves.

    Window entry ``e`` of a direction whose window sits at ``q`` is map position ``q + e``; with
    stride 1 it reaches outputs ``q + padding - (kernel - 1) + j`` for ``j`` in
    ``[0, size + kernel - 1)``, through tap ``e - j + kernel - 1``. That is the "full"
    correlation of the window with the kernel (padding ``kernel - 1``): a convolution of the
    small windows instead of the whole, mostly zero, maps (9x cheaper for a 3x3 window in a
    12x12 map). The result stays windowed if that is still worthwhile, else it is scattered.
    """
    window = x.window
    assert window is not None
    kernel = call.weight.shape[2:]
    series = x._series  # (m, D, B|1, C, *size)
    m, d, b = series.shape[:3]
    windows = series.reshape(m * d * b, *series.shape[3:])
    if _window_matrix_pays(call.weight, window.size, call.groups):
        matrix = cached(_window_matrix, call.weight, window.size, call.groups)
        out_size = tuple(s + k - 1 for s, k in zip(window.size, kernel, strict=True))
        # Into a kept buffer: a convolution's output is a fresh block every chunk, ~10x slower
        # with glibc's defaults (page faults) than this product.
        flat = _workspace.empty(series, (windows.shape[0], matrix.shape[1]))
        torch.mm(windows.reshape(windows.shape[0], -1), matrix, out=flat)
        out = flat.reshape(m, d, b, call.weight.shape[0], *out_size)
    else:
        out = _full_correlation(windows, call.weight, call.groups)
        out = out.reshape(m, d, b, *out.shape[1:])
    shift = torch.tensor(
        [p - (k - 1) for p, k in zip(call.padding, kernel, strict=True)],
        device=window.offsets.device,
    )
    grown = Window(window.offsets + shift, tuple(out.shape[4:]), tuple(primal.shape[2:]))
    if not grown.is_worthwhile():
        return Jet(primal, grown.scatter(out), x.order)
    _, inside = grown.layout()  # entries that left the map must be zero (the invariant)
    out.mul_(inside.reshape(1, inside.shape[0], 1, 1, *grown.size))  # `out` is ours: in place
    return Jet(primal, out, x.order, window=grown)


def _full_correlation(windows: Tensor, weight: Tensor, groups: int) -> Tensor:
    """``(N, C_in, *size)`` -> ``(N, C_out, *(size + kernel - 1))``: every output a window's
    entries reach (zero padding ``kernel - 1``, stride and dilation 1)."""
    kernel = weight.shape[2:]
    function = (F.conv1d, F.conv2d, F.conv3d)[len(kernel) - 1]
    return function(windows, weight, None, 1, tuple(k - 1 for k in kernel), 1, groups)


# Largest window matrix worth building (entries): the MNIST CNN's second convolution takes
# 72 x 784, a 64-channel 3x3 convolution of 3x3 windows 576 x 1600.
_WINDOW_MATRIX_ENTRIES = 2**22


def _window_matrix_pays(weight: Tensor, size: tuple[int, ...], groups: int) -> bool:
    """On a CPU, for a window no larger than the kernel: the product then skips the full
    correlation's products with its zero padding (3x3 windows, 5x5 kernel: 9/25 of them)."""
    if weight.device.type != "cpu" or math.prod(size) > math.prod(weight.shape[2:]):
        return False
    rows = weight.shape[1] * groups * math.prod(size)
    outputs = math.prod(s + k - 1 for s, k in zip(size, weight.shape[2:], strict=True))
    return rows * weight.shape[0] * outputs <= _WINDOW_MATRIX_ENTRIES


def _window_matrix(weight: Tensor, size: tuple[int, ...], groups: int) -> Tensor:
    """``(C_in * prod(size), C_out * prod(size + kernel - 1))``: the full correlation of a window
    as a matrix, the correlation of each one-entry window (exact: one weight per entry)."""
    rows = weight.shape[1] * groups * math.prod(size)
    basis = torch.eye(rows, dtype=weight.dtype, device=weight.device)
    return _full_correlation(basis.reshape(rows, -1, *size), weight, groups).reshape(rows, -1)


def _seed_window(
    module: _ConvCall,
    start: int,
    stop: int,
    input_shape: torch.Size,
    output_shape: torch.Size,
) -> Window | None:
    """Where the outputs that input position ``p`` reaches sit, if that is a worthwhile window.

    With stride 1 and dilation 1, output ``o`` reads input ``o - padding + tap``, so ``p`` reaches
    outputs ``p + padding - (kernel - 1) .. p + padding``: a kernel-sized window.
    """
    if module.groups != 1 or any(s != 1 for s in module.stride):
        return None
    if any(d != 1 for d in module.dilation):
        return None
    spatial = input_shape[2:]
    index = torch.arange(start, stop, device=module.weight.device)
    positions = []
    for size in reversed(spatial):
        positions.append(index % size)
        index = index // size
    positions.reverse()
    kernel = module.weight.shape[2:]
    offsets = torch.stack(
        [p + pad - (k - 1) for p, pad, k in zip(positions, module.padding, kernel, strict=True)],
        dim=1,
    )
    window = Window(offsets, tuple(kernel), tuple(output_shape[2:]))
    return window if window.is_worthwhile() else None


def _conv_seed_window(module: _ConvCall, x: Jet, window: Window, primal: Tensor) -> Jet:
    """The first convolution of an input's seed, as windows: entry ``e`` of the window of input
    ``(c, p)`` is output ``p + padding - (kernel - 1) + e``, read through tap ``kernel - 1 - e``,
    so the window is channel ``c`` of the flipped kernel (zeroed where it leaves the map)."""
    assert x.seed is not None
    num_positions = math.prod(x.primal.shape[2:])
    channel = torch.arange(x.seed.start, x.seed.stop, device=primal.device) // num_positions
    spatial_dims = tuple(range(2, module.weight.dim()))
    flipped = module.weight.flip(spatial_dims)  # (C', C, *kernel)
    windows = flipped[:, channel].movedim(1, 0)  # (D, C', *kernel)
    _, inside = window.layout()
    windows = windows * inside.reshape(inside.shape[0], 1, *window.size)
    return Jet(primal, windows.unsqueeze(0).unsqueeze(2), x.order, window=window)


def _conv_seed_response(
    module: _ConvCall, start: int, stop: int, input_shape: torch.Size
) -> Tensor:
    """Convolution of the one-hot images ``e_start..e_stop`` read off the kernel: ``(D, C', *out)``.

    Output ``(o, p)`` sees input position ``p * stride - padding + k * dilation`` through
    ``weight[o, c, k]``, so the one-hot at ``(c, r)`` contributes ``weight[o, c, k]`` where
    ``k = (r + padding - p * stride) / dilation`` is an integer in ``[0, kernel)``, and only to
    output channels of ``c``'s group. A gather, instead of a convolution per direction.
    """
    weight = module.weight
    channels, *spatial = input_shape[1:]
    groups, out_channels = module.groups, weight.shape[0]
    index = torch.arange(start, stop, device=weight.device)
    positions = []
    for size in reversed(spatial):
        positions.append(index % size)
        index = index // size
    positions.reverse()
    channel = index
    per_group = channels // groups
    gather = [slice(None), (channel % per_group).reshape(-1, *([1] * len(spatial)))]
    valid = (
        torch.arange(out_channels, device=weight.device) // (out_channels // groups)
        == (channel // per_group)[:, None]
    ).reshape(-1, out_channels, *([1] * len(spatial)))
    for axis, (position, kernel) in enumerate(zip(positions, weight.shape[2:], strict=True)):
        out_size = (
            spatial[axis] + 2 * module.padding[axis] - module.dilation[axis] * (kernel - 1) - 1
        ) // module.stride[axis] + 1
        outputs = torch.arange(out_size, device=weight.device)
        offset = position[:, None] + module.padding[axis] - outputs * module.stride[axis]
        hit = (offset % module.dilation[axis] == 0) & (offset >= 0)
        hit &= offset < kernel * module.dilation[axis]
        tap = (offset // module.dilation[axis]).clamp(0, kernel - 1)
        shape = [-1] + [1] * len(spatial)
        shape[axis + 1] = out_size
        gather.append(tap.reshape(shape))
        valid = valid & hit.reshape(shape).unsqueeze(1)
    response = weight[tuple(gather)].movedim(0, 1)  # (D, C', *out)
    return response * valid


def _conv_transpose_function(conv: Callable[..., Tensor]) -> Callable[..., Jet]:
    def rule(x: Jet, weight: Tensor, bias: Tensor | None = None, *args, **kwargs) -> Jet:
        _constant_parameters("a transposed convolution", weight, bias)
        primal = conv(x.primal, weight, bias, *args, **kwargs)
        return ar.map_batchwise(x, lambda s: conv(s, weight, None, *args, **kwargs), primal)

    return rule


for _target in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):
    register_rule(_target)(_conv_transpose_function(_target))


@register_rule(F.batch_norm)
def _batch_norm(
    x: Jet,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Jet:
    if training or running_var is None:
        raise TrainingModeError(
            f"batch_norm {_registry.engine().where()} is called with training=True: it "
            "normalizes with the statistics of the batch, which couple the examples. Call "
            "model.eval()."
        )
    _constant_parameters("batch_norm", running_mean, running_var, weight, bias)
    primal = cached(
        F.batch_norm, x.primal, running_mean, running_var, weight, bias, False, 0.0, eps
    )
    gain = torch.rsqrt(running_var + eps)
    if weight is not None:
        gain = gain * weight
    gain = gain.reshape(-1, *([1] * (x.primal.dim() - 2)))
    return ar.scale(x, gain, primal)


@register_rule(
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout
)
def _dropout(x: Jet, p: float = 0.5, training: bool = True, inplace: bool = False) -> Jet:
    if training and p > 0:
        raise TrainingModeError(
            f"dropout {_registry.engine().where()} is called with training=True (a random "
            "mask); call model.eval()."
        )
    return x
