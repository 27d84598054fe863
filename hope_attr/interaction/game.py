"""The game of :func:`hope_attr.interactions`: its values on coalitions, and its Taylor series.

The players of an example are its features (or ``feature_mask`` groups); a coalition ``S``,
a bitmask over the players, keeps its players at ``x`` and moves the others to the baseline
``b``: ``v(S) = f(b + 1_S * (x - b))``, the target output. :meth:`Game.values` evaluates ``v`` on
batches of coalitions by plain forward passes; :meth:`Game.vertex_series` expands ``f`` at the
baseline along every vertex direction ``1_S (x - b)`` (``method="taylor"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from captum._utils.typing import BaselineType, TargetType
from torch import Tensor

from hope_attr.attribution import arguments as _arguments
from hope_attr.attribution import groups as _groups
from hope_attr.attribution.arguments import FeatureMaskType, select_target
from hope_attr.engine.expansion import Expansion
from hope_attr.engine.modules import check_eval_mode
from hope_attr.interaction.moebius import Lattice

__all__ = ["Game", "format_game"]

# Model inputs per forward call of method="moebius" (rows times features), about 32 MiB in
# float64: large enough that the per-call overhead vanishes, small enough to share a machine.
_ELEMENTS_PER_CALL = 2**22
# Directions per call of the expansion: bounds the (D, B, *I) direction tensor built here; the
# expansion splits each call further to fit its own memory budget.
_DIRECTIONS_PER_CALL = 4096


@dataclass(frozen=True)
class Game:
    """The game of every example: players at ``inputs``, the others at ``baselines``.

    Attributes:
        forward_func: the model.
        inputs: per model input ``(B, *I)``, detached.
        baselines: shaped like the inputs.
        players: per input, each feature's player ``(B, *I)``.
        extra: the additional forward arguments.
        target: the output whose value the game is, as in Captum.
        num_players: ``p``.
    """

    forward_func: Callable[..., Tensor]
    inputs: tuple[Tensor, ...]
    baselines: tuple[Tensor, ...]
    players: tuple[Tensor, ...]
    extra: tuple[Any, ...]
    target: TargetType
    num_players: int

    def values(self, coalitions: Tensor) -> Tensor:
        """``(C, B)``: the target output on every coalition (``(C,)`` bitmasks)."""
        batch = self.inputs[0].shape[0]
        per_row = sum(x[0].numel() for x in self.inputs)
        chunk = max(1, _ELEMENTS_PER_CALL // (per_row * batch))
        values = []
        with torch.no_grad():
            for start in range(0, coalitions.numel(), chunk):
                part = coalitions[start : start + chunk]
                count = part.numel()
                members = self._members(part.to(self.inputs[0].device))
                moved = tuple(
                    (b + present * (x - b)).reshape(count * batch, *x.shape[1:])
                    for x, b, present in zip(self.inputs, self.baselines, members, strict=True)
                )
                output = self.forward_func(*moved, *_repeated(self.extra, batch, count))
                _check_output(output, count * batch)
                output = output.reshape(count, batch, *output.shape[1:])
                values.append(select_target(output, self.target, output.shape[2:]))
        return torch.cat(values)

    def vertex_series(
        self, lattice: Lattice, order: int, directions_per_chunk: int | None
    ) -> tuple[Tensor, Tensor]:
        """Taylor coefficients ``(n, N - 1, B)`` of ``t -> f(b + t 1_S (x - b))`` at ``t = 0``
        for every non-empty coalition ``S`` of the lattice, and ``f(b)`` ``(B,)``."""
        start_points = tuple(b.contiguous() for b in self.baselines)
        expansion = Expansion(
            self.forward_func, start_points, order, self.extra, directions_per_chunk
        )
        output_shape = expansion.output.shape[1:]
        at_baseline = select_target(expansion.output.unsqueeze(0), self.target, output_shape)[0]
        steps = tuple(x - b for x, b in zip(self.inputs, self.baselines, strict=True))
        chunks = []
        coalitions = lattice.masks[1:]
        for start in range(0, coalitions.numel(), _DIRECTIONS_PER_CALL):
            part = coalitions[start : start + _DIRECTIONS_PER_CALL].to(self.inputs[0].device)
            directions = tuple(m * s for m, s in zip(self._members(part), steps, strict=True))
            coefficients = expansion.directional_coefficients(directions)  # (n, D, B, *O)
            n, count = coefficients.shape[:2]
            flat = coefficients.reshape(n * count, *coefficients.shape[2:])
            chunks.append(select_target(flat, self.target, output_shape).reshape(n, count, -1))
        return torch.cat(chunks, 1), at_baseline

    def _members(self, coalitions: Tensor) -> list[Tensor]:
        """``(C,)`` bitmasks -> per input ``(C, B, *I)``: 1 where the feature's player is in."""
        result = []
        for ids, x in zip(self.players, self.inputs, strict=True):
            shifted = coalitions.reshape(-1, *([1] * ids.dim())) >> ids.unsqueeze(0)
            result.append((shifted & 1).to(x.dtype))
        return result


def format_game(
    forward_func: Callable[..., Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    baselines: BaselineType,
    target: TargetType,
    feature_mask: FeatureMaskType,
    additional_forward_args: Any,
) -> Game:
    """The game of Captum's arguments, formatted and checked
    (:mod:`hope_attr.attribution.arguments`).

    Raises:
        TypeError: a ``forward_func`` that is not callable, non-tensor or integer inputs.
        TrainingModeError: a module in training mode (the game would be random).
        ValueError: NaN/Inf inputs or baselines, shapes or masks that do not fit.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 1).eval()
        >>> game = format_game(model, torch.ones(2, 3), 0.0, None, None, None)
        >>> game.num_players, game.values(torch.tensor([0, 7])).shape
        (3, torch.Size([2, 2]))
    """
    if not callable(forward_func):
        raise TypeError(f"forward_func must be a model or a function, got {type(forward_func)}")
    check_eval_mode(forward_func)  # Dropout in training mode would make the game random
    inputs_tuple = _arguments.format_inputs(inputs)
    _arguments.check_inputs(inputs_tuple)
    extra = _arguments.format_additional_args(additional_forward_args)
    masks = _arguments.format_feature_mask(feature_mask, inputs_tuple)
    players = masks if masks is not None else _groups.feature_ids(inputs_tuple)
    return Game(
        forward_func=forward_func,
        inputs=inputs_tuple,
        baselines=_arguments.format_baselines(baselines, inputs_tuple),
        players=players,
        extra=extra,
        target=target,
        num_players=_groups.count(players),
    )


def _check_output(output: object, rows: int) -> None:
    if not isinstance(output, Tensor):
        raise TypeError(f"forward_func must return one tensor (B, *O), got {type(output).__name__}")
    if output.dim() == 0 or output.shape[0] != rows:
        raise ValueError(
            f"forward_func returned shape {tuple(output.shape)} for {rows} rows: the output must "
            "keep the batch axis first, one row per example"
        )


def _repeated(extra: tuple[Any, ...], batch: int, count: int) -> tuple[Any, ...]:
    # Rows are laid out coalition-major, (count, batch): a per-example tensor repeats whole.
    # (Captum's _expand_additional_forward_args repeats every tensor, also those without a
    # batch axis, such as a weight vector passed along.)
    return tuple(
        a.repeat(count, *([1] * (a.dim() - 1)))
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch
        else a
        for a in extra
    )
