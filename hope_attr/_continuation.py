"""Taylor continuation: follow each ablation path from the input to its baseline in Taylor steps.

A feature's (or group's) ablation needs ``g(1)`` for ``g(t) = f(x + t v)``, ``v`` its move to the
baseline. When ``t = 1`` lies outside the radius of convergence of the series at ``x``, or past a
kink of a piecewise-linear network, no single series gives it. Continuation re-expands along the
path, the classic Taylor-series method for ODEs applied to the ablation path:

* every path is a point with one direction, so all paths of all examples go through the network
  as one batch (``Expansion(points).directional_coefficients``), each step expanding at the
  points reached, along what remains of each path;
* a path on which some ReLU/clamp/abs/maximum/max-pool decision or comparison may change before
  its end (:mod:`hope_attr._kinks`: exact where the network is piecewise linear, a conservative
  bound from the curvature otherwise) gets ``f`` at its end by one plain forward pass, which is
  exact, and cheaper than stepping from kink to kink (one expansion per kink: 107 on a MNIST ReLU
  CNN); such a pass counts as one step;
* other steps stay within the estimated radius of convergence (:mod:`hope_attr._convergence`);
* the path ends with one series summed at its remaining length, once its estimated truncation
  error is below the tolerance and no kink lies ahead.

Every expansion evaluates ``f`` exactly at the point it is taken, so the truncation error of
intermediate steps never accumulates: the result's error is that of the last step alone. (The same
fact means that evaluating ``f`` at the baseline, which is what FeatureAblation does, is never less
exact; continuation buys the step structure and the per-order series along the way, not accuracy.)
Paths still unfinished after ``max_steps`` get ``f`` at their end by one plain forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hope_attr import _convergence, _kinks
from hope_attr._derivatives import Expansion

# Intermediate steps go this far into the estimated radius: the point reached need only be a good
# place to expand again (its value is exact), so the step can be long; half the radius keeps the
# estimate from the coefficients meaningful on the far side.
_RADIUS_FRACTION = 0.5
# The last step starts a little inside the tolerance step, so that the estimate made at the new
# point (which differs from the one made here) still admits the rest of the path.
_LAST_STEP_MARGIN = 0.9
# Shortest intermediate step (fraction of what remains): a radius estimate of ~0 (c_1 = 0 at a
# turning point) must not stall a path.
_MIN_STEP = 1e-3


def continue_paths(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    moves: tuple[Tensor, ...],
    example: Tensor,
    extra: tuple[Any, ...],
    order: int,
    tolerance: Tensor,
    internal_batch_size: int | None = None,
    max_steps: int = 200,
) -> tuple[Tensor, Tensor]:
    """``f`` at the end of every path, and the Taylor steps each took.

    Args:
        forward_func: the model.
        inputs: the expansion points ``(B, *I_j)``, one tensor per model input.
        moves: each path's full move to its baseline, ``(P, *I_j)`` per input.
        example: ``(P,)`` the example each path starts from.
        extra: additional forward arguments (tensors with batch ``B`` follow their example).
        order: Taylor order of each step (``>= 2``: the step control needs two orders).
        tolerance: ``(P,)`` absolute tolerance of each path's truncation error (largest output).
        internal_batch_size: directions per chunk, passed to the expansion.
        max_steps: after this many steps a path's end is evaluated directly.

    Returns:
        ``(ends, steps)``: ``ends`` ``(P, *O)`` is ``f`` at ``x + move``; ``steps`` ``(P,)``.
    """
    num_paths = example.shape[0]
    position = moves[0].new_zeros(num_paths)  # t reached on each path
    steps = torch.zeros(num_paths, dtype=torch.long, device=example.device)
    ends: Tensor | None = None
    active = torch.arange(num_paths, device=example.device)
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        which = example[active]
        remaining = 1 - position[active]
        points, directions = [], []
        for x, move in zip(inputs, moves, strict=True):
            shape = (-1, *([1] * (move.dim() - 1)))
            points.append(x[which] + position[active].reshape(shape) * move[active])
            directions.append((remaining.reshape(shape) * move[active]).unsqueeze(0))
        with _kinks.watch() as watch:
            expansion = Expansion(
                forward_func,
                tuple(points),
                order,
                _follow(extra, which, inputs[0].shape[0]),
                internal_batch_size,
            )
            series = expansion.directional_coefficients(tuple(directions))[:, 0]  # (n, P', *O)
        if ends is None:
            ends = expansion.output.new_empty((num_paths, *expansion.output.shape[1:]))
        output_dims = expansion.output.dim() - 1
        norms = _convergence.coefficient_norms(series, output_dims)  # (n, P')
        rho = _convergence.radius(norms)
        kink = watch.first if watch.first is not None else torch.full_like(rho, torch.inf)
        limit = tolerance[active]
        finish = (
            (_convergence.truncation_error(norms) <= limit)
            & (rho > 1 / _RADIUS_FRACTION)
            & (kink > 1)
        )
        ends[active[finish]] = expansion.output[finish] + series[:, finish].sum(0)
        # A branch may change on the rest of the path: f at its end, by one forward pass, is
        # exact and cheaper than one expansion per kink (107 on a MNIST ReLU CNN, hundreds on
        # mobilenet_v3_small).
        direct = ~finish & (kink <= 1)
        if direct.any():
            ends[active[direct]] = _forward_ends(
                forward_func, inputs, moves, example, extra, active[direct]
            )

        last = _convergence.tolerance_step(norms, limit)
        land = torch.where(last < 1, 1 - _LAST_STEP_MARGIN * last, torch.ones_like(last))
        step = torch.minimum(_RADIUS_FRACTION * rho, land).clamp(_MIN_STEP, 1)
        going = ~finish & ~direct
        position[active[going]] += step[going] * remaining[going]
        steps[active] += 1
        steps[active[direct]] += 1
        active = active[going]
    if active.numel():  # out of steps: evaluate the ends directly
        value = _forward_ends(forward_func, inputs, moves, example, extra, active)
        if ends is None:
            ends = value.new_empty((num_paths, *value.shape[1:]))
        ends[active] = value
    assert ends is not None
    return ends, steps


def _forward_ends(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    moves: tuple[Tensor, ...],
    example: Tensor,
    extra: tuple[Any, ...],
    paths: Tensor,
) -> Tensor:
    """``f`` at the end ``x + move`` of the given paths, by one plain forward pass."""
    which = example[paths]
    points = tuple(x[which] + move[paths] for x, move in zip(inputs, moves, strict=True))
    with torch.no_grad():
        return forward_func(*points, *_follow(extra, which, inputs[0].shape[0]))


def _follow(extra: tuple[Any, ...], which: Tensor, batch: int) -> tuple[Any, ...]:
    """Extra arguments for the points: tensors with the batch axis follow each path's example."""
    return tuple(
        value[which]
        if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch
        else value
        for value in extra
    )
