"""Taylor continuation: the value at the end of each ablation path the first series does not reach.

A feature's (or group's) ablation needs ``g(1)`` for ``g(t) = f(x + t v)``, ``v`` its move to the
baseline. When ``t = 1`` lies outside the radius of convergence of the series at ``x``, or past a
branch change (a ReLU/clamp/abs/maximum/max-pool kink, a comparison feeding ``torch.where``), no
single series gives it. Two exact ways to get it, both here:

* **one forward pass at the path's end** (the default): ``f(x + v)``, which is what
  FeatureAblation computes, exact by construction;
* **Taylor steps** (``max_steps > 0``, or :data:`TAYLOR_STEPS`), the classic Taylor-series method
  for ODEs applied to the path: re-expand at the point reached (all paths of all examples batched
  as points with one direction, ``Expansion(points).directional_coefficients``), steps within the
  estimated radius of convergence (:mod:`hope_attr.attribution.convergence`), the path ending with
  one series
  summed at its remaining length once its estimated truncation error is below the tolerance. A
  path on which some decision may change before its end (:mod:`hope_attr.engine.kinks`: exact on
  piecewise-linear networks, a conservative bound from the curvature otherwise) gets the forward
  pass at its end instead of one expansion per kink; so do paths still unfinished after
  ``max_steps``.

Every expansion evaluates ``f`` exactly at the point it is taken, so the steps' truncation errors
never accumulate, and the forward pass at the end is never less exact than the last step. It is
also cheaper than a single step (an order-``n`` expansion costs several forward passes): measured
by ``benchmarks/continuation.py``, continuation with Taylor steps took 1.3x to 12x the time of
continuation ending paths by the forward pass, at equal or larger error, on every model there.
Hence the default of no steps; the per-order series at ``x`` is what ``method="continuation"``
keeps of HOPE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hope_attr.attribution import convergence as _convergence
from hope_attr.engine import kinks as _kinks
from hope_attr.engine.batching import follow_examples
from hope_attr.engine.expansion import Expansion

# Taylor steps a path may take before its end is evaluated directly (see the module docstring).
TAYLOR_STEPS = 0
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
    directions_per_chunk: int | None = None,
    max_steps: int | None = None,
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
        directions_per_chunk: feature directions per chunk, passed to the expansion.
        max_steps: Taylor steps before a path's end is evaluated directly (default
            :data:`TAYLOR_STEPS`).

    Returns:
        ``(ends, steps)``: ``ends`` ``(P, *O)`` is ``f`` at ``x + move``; ``steps`` ``(P,)``
        the expansions taken, plus one for the forward pass at the end where there was one.
    """
    num_paths = example.shape[0]
    position = moves[0].new_zeros(num_paths)  # t reached on each path
    steps = torch.zeros(num_paths, dtype=torch.long, device=example.device)
    ends: Tensor | None = None
    active = torch.arange(num_paths, device=example.device)
    for _ in range(TAYLOR_STEPS if max_steps is None else max_steps):
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
                follow_examples(extra, which, inputs[0].shape[0]),
                directions_per_chunk,
            )
            series = expansion.directional_coefficients(tuple(directions))[:, 0]  # (n, P', *O)
        if ends is None:
            ends = expansion.output.new_empty((num_paths, *expansion.output.shape[1:]))
        output_dims = expansion.output.dim() - 1
        norms = _convergence.coefficient_norms(series, output_dims)  # (n, P')
        rho = _convergence.radius(norms)
        kink = watch.first if watch.first is not None else torch.full_like(rho, torch.inf)
        if watch.everywhere:
            kink = torch.zeros_like(rho)
        limit = tolerance[active]
        finish = (
            (_convergence.truncation_error(norms) <= limit)
            & (rho > 1 / _RADIUS_FRACTION)
            & (kink > 1)
        )
        ends[active[finish]] = expansion.output[finish] + series[:, finish].sum(0)
        # A branch may change on the rest of the path: f at its end, by one forward pass, is
        # exact and cheaper than one expansion per kink (up to 107 per path on a MNIST ReLU CNN;
        # mobilenet_v3_small's 8x8 patches used up 200 steps, 90 s for 16 paths at 32x32).
        direct = ~finish & (kink <= 1)
        if direct.any():
            ends[active[direct]] = _forward_ends(
                forward_func, inputs, moves, example, extra, active[direct], directions_per_chunk
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
        value = _forward_ends(
            forward_func, inputs, moves, example, extra, active, directions_per_chunk
        )
        if ends is None:
            ends = value.new_empty((num_paths, *value.shape[1:]))
        ends[active] = value
        steps[active] += 1
    assert ends is not None
    return ends, steps


def _forward_ends(
    forward_func: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    moves: tuple[Tensor, ...],
    example: Tensor,
    extra: tuple[Any, ...],
    paths: Tensor,
    chunk: int | None = None,
) -> Tensor:
    """``f`` at the end ``x + move`` of the given paths, by plain forward passes of ``chunk``
    points (all at once by default: less memory than the expansion that preceded them)."""
    values = []
    for part in paths.split(chunk or max(paths.numel(), 1)):
        which = example[part]
        points = tuple(x[which] + move[part] for x, move in zip(inputs, moves, strict=True))
        with torch.no_grad():
            values.append(forward_func(*points, *follow_examples(extra, which, inputs[0].shape[0])))
    return torch.cat(values)
