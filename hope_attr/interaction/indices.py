"""Shapley values and interaction indices of the game "features at x, the rest at the baseline".

The players are the features (or ``feature_mask`` groups) of one example; a coalition ``S``
keeps its players at ``x`` and moves the others to the baseline ``b``:
``v(S) = f(b + 1_S * (x - b))``. Every index shapiq offers here is a fixed linear map of the
Moebius coefficients ``m(T)`` of ``v`` (:mod:`hope_attr.interaction.moebius`), and ``m(T)`` needs
``v`` on the subsets of ``T`` only. Two ways to get ``m`` on every ``T`` with ``|T| <= n``:

* ``method="moebius"``: evaluate ``v`` on the ``sum_{s <= n} C(p, s)`` coalitions of at most
  ``n`` players (plain forward passes) and invert. ``m(T)`` is exact for ``|T| <= n``; only the
  coefficients of larger coalitions are left out (the ``n``-additive part of the game, exact at
  ``n = p``).
* ``method="taylor"``: the Taylor polynomial ``P(y) = sum_a c_a y^a`` of
  ``y -> f(b + y * (x - b))`` at the baseline, whose Moebius coefficients are the support sums
  ``m_n(T) = sum_{supp(a) = T, |a| <= n} c_a``. The univariate jet along the vertex direction
  ``1_S`` gives ``P_d(1_S)`` for every degree ``d`` at once, and inverting over subsets turns the
  vertex sums into ``m_n(T)``. It leaves out the same coefficients *and* the monomials of degree
  ``> n`` inside small supports, and it needs as many directions as the first method needs
  forward passes: the ``m_n(T)`` are independent linear functionals of the degree-``n``
  coefficients, and one direction gives one number per degree, so no choice of fewer than
  ``sum_{1 <= s <= n} C(p, s)`` directions can recover them.

Measured on tanh MLPs (``benchmarks/interactions.py``), the first was more accurate from order 2
on and slower only where both took milliseconds, and it is the default; the second is kept
because it is what the polynomial says (a surrogate's interactions), and for comparison.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from hope_attr.attribution import convergence as _convergence
from hope_attr.attribution.convergence import ConvergenceWarning
from hope_attr.engine.expansion import directions_argument
from hope_attr.engine.stacklevel import user_stacklevel
from hope_attr.interaction import moebius as _moebius
from hope_attr.interaction import residual_shapley as _residual_shapley
from hope_attr.interaction.game import Game, format_game

if TYPE_CHECKING:
    from shapiq import InteractionValues

INDICES = _moebius.INDICES
METHODS = ("moebius", "taylor")
# The default order keeps each example's coalitions (or jets) under this count: every index is
# exact up to p = 14 players, and a few thousand evaluations per example buy order 4 at p = 24.
_DEFAULT_COALITIONS = 2**14


def interactions(
    forward_func: Callable[..., Tensor],
    inputs: Tensor | tuple[Tensor, ...],
    baselines: Any = None,
    target: Any = None,
    *,
    index: str = "k-SII",
    max_order: int | None = None,
    order: int | None = None,
    method: str = "moebius",
    feature_mask: Tensor | tuple[Tensor, ...] | None = None,
    additional_forward_args: Any = None,
    max_coalitions: int = 2**22,
    directions_per_chunk: int | None = None,
    return_truncation: bool = False,
    permutations: int = 0,
    random_state: int | None = None,
    internal_batch_size: int | None = None,
) -> list[InteractionValues] | tuple[list[InteractionValues], list[InteractionValues]]:
    """Shapley values and interaction indices of each example, as ``shapiq.InteractionValues``.

    The game of an example has the features (or ``feature_mask`` groups) as players, and the
    value of a coalition ``S`` is the target output with the players of ``S`` at ``inputs`` and
    all others at ``baselines`` (a player moves a whole group, e.g. a superpixel). Every index is
    computed from the game's Moebius coefficients ``m(T)`` of coalitions ``|T| <= order``
    (details and measured accuracy: ``docs/interactions.md``):

    * ``method="moebius"`` (default) evaluates the model on the ``sum_{s <= order} C(p, s)``
      coalitions of at most ``order`` players: ``m(T)`` is exact there, only the coefficients of
      larger coalitions are dropped, and at ``order = p`` every index is exact (the same values
      as shapiq's ``ExactComputer``, from ``2^p`` forward passes run as a few batches).
    * ``method="taylor"`` takes ``m(T)`` from the order-``order`` Taylor polynomial at the
      baseline (one jet per coalition of at most ``order`` players): it also drops the
      polynomial's terms of degree ``> order``, and each jet costs more than a forward pass.
      Measured on tanh MLPs it was less accurate than ``"moebius"`` from order 2 on and faster
      only where both took milliseconds, hence not the default; it says what the Taylor
      polynomial attributes to each interaction, and warns (``ConvergenceWarning``) where the
      series along some coalition's move does not converge at the baseline.

    Args:
        forward_func: the model or function, ``forward_func(inputs, *additional_forward_args)``
            returning ``(B, *O)``; called on batches of coalitions, never modified.
        inputs: a tensor ``(B, *I)`` or a tuple of them: the examples, floating point.
        baselines: where absent players go, as in Captum: ``None`` (zero), a number, a tensor
            shaped like the input or with batch 1, or a tuple of those per input.
        target: the output to explain, as in Captum: an int, a tuple for outputs with more than
            one axis, or a list with one per example; ``None`` for outputs of shape ``(B,)`` or
            ``(B, 1)``.
        index: ``"Moebius"``, ``"SV"`` (Shapley values), ``"BV"`` (Banzhaf values), ``"SII"``,
            ``"BII"``, ``"k-SII"``, ``"STII"`` or ``"FSII"``, as shapiq names them.
        max_order: the largest interaction reported: 2 (pairs) by default, 1 for ``"SV"`` and
            ``"BV"``, at most ``order``.
        order: ``n``, the largest coalition whose Moebius coefficient is kept (and the Taylor
            degree for ``"taylor"``). By default the largest ``n <= p`` with at most ``2^14``
            coalitions per example, i.e. exact up to ``p = 14`` players.
        method: ``"moebius"`` or ``"taylor"`` (see above).
        feature_mask: integer group ids ``0..G-1`` broadcastable to each input (a tuple for
            tuple inputs): the ``G`` groups are the players, as in Captum's FeatureAblation.
            At most 62 players (coalitions are 62-bit masks): group larger inputs.
        additional_forward_args: passed after the inputs; tensors whose first axis is the batch
            are repeated along with the coalitions.
        max_coalitions: refuse more than this many coalitions (or jets) per example.
        directions_per_chunk: jets propagated at once for ``"taylor"`` (memory); ``None``
            lets the engine size the chunks.
        return_truncation: also return, per example, the change of every reported value from
            ``order - 1`` to ``order`` (the share of the size-``order`` coalitions for
            ``"moebius"``, of the degree-``order`` terms for ``"taylor"``): an estimate of what
            the truncation leaves out, zero where nothing is left out. With ``permutations``,
            the sampled correction itself.
        permutations: Shapley values only (``index="SV"``, ``method="moebius"``): sample this
            many orders of the players and add the permutation-sampling estimate of the Shapley
            values of what the truncation leaves out (the game minus its ``order``-additive
            part). The truncated game serves as a control variate: the estimate is unbiased,
            keeps efficiency exactly (values plus ``baseline_value`` add up to the output at
            ``inputs``), its sampling error shrinks like ``1 / sqrt(permutations)`` from the
            size of the residual, and it costs ``p - order`` forward passes per permutation.
            At ``p!`` or more (up to 8 players) every order is used once: exact. 0 (default):
            the truncation alone, deterministic.
        random_state: seed of the sampled permutations (``None``: a fresh random seed).
        internal_batch_size: the old name of ``directions_per_chunk`` (FutureWarning).

    Returns:
        One ``shapiq.InteractionValues`` per example, with ``index``, ``max_order``,
        ``n_players``, ``baseline_value`` (the output with every player at the baseline),
        ``estimated`` (``False`` only where nothing was truncated or sampled) and
        ``estimation_budget`` (coalitions or jets per example, the sampled prefixes included);
        with ``return_truncation``, the pair ``(values, changes)``, ``changes`` in the same form.

    Raises:
        ImportError: shapiq is not installed (``pip install hope_attr[interactions]``).
        ValueError: an unknown ``index`` or ``method``, ``max_order > order``, more players than
            ``order`` allows within ``max_coalitions`` (the message gives the count and the
            fixes), NaN/Inf inputs or baselines, a target that does not fit the output.
        TypeError: non-floating-point inputs, a bad ``target``.

    Example:
        >>> import torch, hope_attr
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Tanh()).double().eval()
        >>> x = torch.rand(2, 4, dtype=torch.float64)
        >>> values = hope_attr.interactions(model, x, index="SV")  # exact: p = 4 players
        >>> len(values), values[0].index, values[0].n_players
        (2, 'SV', 4)
        >>> efficiency = sum(values[0][(i,)] for i in range(4)) + values[0].baseline_value
        >>> bool(abs(efficiency - model(x[:1]).item()) < 1e-12)
        True
    """
    shapiq = _import_shapiq()
    if index not in INDICES:
        raise ValueError(f"index must be one of {INDICES}, got {index!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    chunk = directions_argument(directions_per_chunk, internal_batch_size)
    game = format_game(
        forward_func, inputs, baselines, target, feature_mask, additional_forward_args
    )
    max_order, order = _check_orders(index, max_order, order, game.num_players, max_coalitions)
    size = min(order, game.num_players)  # the largest coalition kept
    _check_permutations(permutations, random_state, index, method)
    cost = _check_feasible(game.num_players, order, size, method, max_coalitions, permutations)
    lattice = _moebius.lattice(game.num_players, size)
    if method == "moebius":
        moebius, previous = _moebius_by_coalitions(game, lattice)
    else:
        moebius, previous = _moebius_by_jets(game, lattice, order, chunk)

    interactions_list = _moebius.interaction_masks(game.num_players, max_order)
    values = _moebius.index_values(lattice, moebius, index, max_order, interactions_list)
    estimated = method == "taylor" or size < game.num_players
    sampled = permutations > 0 and size < game.num_players
    if sampled:
        residual, evaluations, exact = _sampled_residual(
            game.values, lattice, moebius, permutations, random_state
        )
        values[1:] += residual  # SV: the empty interaction first, then the players in order
        cost += evaluations
        estimated = not exact
    wrap = functools.partial(
        _interaction_values, shapiq, interactions_list, index, max_order, game.num_players, cost
    )
    empty_values = moebius[0]  # m(empty) = v(empty): the output with every player at baseline
    result = wrap(values, empty_values, estimated)
    if not return_truncation:
        return result
    if sampled:
        changes = torch.cat([torch.zeros_like(residual[:1]), residual])
    else:
        changes = values - _moebius.index_values(
            lattice, previous, index, max_order, interactions_list
        )
    return result, wrap(changes, torch.zeros_like(empty_values), True)


def _import_shapiq() -> Any:
    try:
        import shapiq
    except ImportError as error:  # pragma: no cover - exercised with shapiq hidden
        raise ImportError(
            "hope_attr.interactions returns shapiq.InteractionValues: install shapiq with "
            "`pip install hope_attr[interactions]`"
        ) from error
    return shapiq


def _moebius_by_coalitions(game: Game, lattice: _moebius.Lattice) -> tuple[Tensor, Tensor]:
    """``m(T)`` from the game on every coalition of the lattice, and what order - 1 gives."""
    values = game.values(lattice.masks)
    # The transforms add and subtract up to 2^n values: in float64, on the lattice's device.
    moebius = lattice.moebius(values.to("cpu", torch.float64))  # (N, B)
    # What order - 1 would have given: the same coefficients without the largest coalitions.
    previous = torch.where((lattice.sizes < lattice.size)[:, None], moebius, 0.0)
    return moebius, previous


def _moebius_by_jets(
    game: Game, lattice: _moebius.Lattice, order: int, chunk: int | None
) -> tuple[Tensor, Tensor]:
    """``m_n(T)`` from the Taylor polynomial at the baseline, and ``m_{n-1}(T)``."""
    series, at_baseline = game.vertex_series(lattice, order, chunk)
    _warn_if_diverging(series)
    series, at_baseline = series.to("cpu", torch.float64), at_baseline.to("cpu", torch.float64)
    moebius = lattice.moebius(_vertex_sums(series, at_baseline))
    previous = lattice.moebius(_vertex_sums(series[:-1], at_baseline))
    return moebius, previous


def _interaction_values(
    shapiq: Any,
    interactions_list: list[tuple[int, ...]],
    index: str,
    max_order: int,
    num_players: int,
    cost: int,
    table: Tensor,
    baseline_values: Tensor,
    is_estimate: bool,
) -> list[InteractionValues]:
    """One ``shapiq.InteractionValues`` per example (a column of ``table``)."""
    return [
        shapiq.InteractionValues(
            values=dict(zip(interactions_list, column.tolist(), strict=True)),
            index=index,
            max_order=max_order,
            min_order=0,
            n_players=num_players,
            interaction_lookup={s: i for i, s in enumerate(interactions_list)},
            estimated=is_estimate,
            estimation_budget=cost,
            baseline_value=float(baseline_values[b]),
        )
        for b, column in enumerate(table.T)
    ]


def _check_feasible(
    players: int, order: int, size: int, method: str, max_coalitions: int, permutations: int
) -> int:
    """Refuse, before any model evaluation, what cannot run; the coalitions per example."""
    if players > MAX_PLAYERS:
        raise ValueError(
            f"interactions encode coalitions as bitmasks of at most {MAX_PLAYERS} players, got "
            f"{players}: group the features into at most {MAX_PLAYERS} players with "
            "feature_mask (superpixels, tokens, correlated columns), which also keeps the "
            "interactions readable"
        )
    cost = _moebius.lattice_size(players, size)
    if cost > max_coalitions:
        raise ValueError(
            f"{players} players at order {order} need sum_(s<={size}) C({players}, s) = {cost} "
            f"{'jets' if method == 'taylor' else 'coalitions'} per example, over "
            f"max_coalitions={max_coalitions}: lower order, group features into fewer players "
            "with feature_mask, or raise max_coalitions"
        )
    sampled_coalitions = permutations * (players + 1)
    if sampled_coalitions > _MAX_SAMPLED_COALITIONS:
        raise ValueError(
            f"permutations={permutations} with {players} players visit "
            f"{sampled_coalitions:.3g} coalitions (each a model evaluation of the residual), over "
            f"the {_MAX_SAMPLED_COALITIONS:.0e} one call takes; the sampling error shrinks like "
            "1/sqrt(permutations): a few thousand permutations are usually enough"
        )
    return cost


#: Players a coalition bitmask holds (int64, sign bit and one spare bit kept free).
MAX_PLAYERS = 62
# Coalitions the permutation sampling of the residual may visit in one call: each is a model
# evaluation, and their bitmasks and values are held at once (10**7: ~1 GB for a batch of 8).
_MAX_SAMPLED_COALITIONS = 10**7


def _check_permutations(
    permutations: int, random_state: int | None, index: str, method: str
) -> None:
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 0:
        raise ValueError(f"permutations must be an int >= 0, got {permutations!r}")
    if random_state is not None and (
        isinstance(random_state, bool) or not isinstance(random_state, int)
    ):
        raise TypeError(f"random_state must be an int or None, got {random_state!r}")
    if permutations and (index != "SV" or method != "moebius"):
        raise ValueError(
            f"permutations={permutations} samples the Shapley values of what the truncation "
            f"leaves out: it needs index='SV' and method='moebius', got index={index!r}, "
            f"method={method!r}; pass permutations=0 for other indices"
        )


def _sampled_residual(
    evaluate: Callable[[Tensor], Tensor],
    lattice: _moebius.Lattice,
    moebius: Tensor,
    permutations: int,
    random_state: int | None,
) -> tuple[Tensor, int, bool]:
    """The permutation estimate of the Shapley values the truncation leaves out
    (:mod:`hope_attr.interaction.residual_shapley`): ``(p, B)``, the model rows it cost per
    example, and whether every permutation was used (then it is exact)."""
    generator = torch.Generator()
    if random_state is None:
        generator.seed()
    else:
        generator.manual_seed(random_state)
    orders, every = _residual_shapley.orders(lattice.num_players, permutations, generator)
    # The game is known on the lattice; the model runs on the longer prefixes, each once.
    longer = _residual_shapley.prefixes(orders)[:, lattice.size + 1 :]
    coalitions, where = longer.unique(return_inverse=True)
    values = evaluate(coalitions).to("cpu", torch.float64)[where]  # (P, p - n, B)
    truncated = _residual_shapley.truncated_prefix_values(lattice, moebius, orders)
    residual = _residual_shapley.correction(truncated, values, orders, lattice.size)
    return residual, coalitions.numel(), every


def _check_orders(
    index: str, max_order: int | None, order: int | None, num_players: int, max_coalitions: int
) -> tuple[int, int]:
    for name, value in (("max_order", max_order), ("order", order)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int >= 1 or None, got {value!r}")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if isinstance(max_coalitions, bool) or not isinstance(max_coalitions, int):
        raise TypeError(f"max_coalitions must be an int, got {max_coalitions!r}")
    if index in _moebius.VALUES:
        if max_order not in (None, 1):
            raise ValueError(f"{index} values are single-player (max_order 1), got {max_order}")
        max_order = 1
    elif max_order is None:
        max_order = min(2, num_players)
    if max_order > num_players:
        raise ValueError(f"max_order={max_order} exceeds the {num_players} players")
    if order is None:
        order = max_order
        while order < num_players and (
            _moebius.lattice_size(num_players, order + 1) <= _DEFAULT_COALITIONS
        ):
            order += 1
    if max_order > order:
        raise ValueError(
            f"max_order={max_order} > order={order}: interactions of {max_order} players need "
            f"the Moebius coefficients up to that size; pass order >= {max_order}"
        )
    return max_order, order


def _vertex_sums(series: Tensor, at_baseline: Tensor) -> Tensor:
    """``(N, B)``: the Taylor polynomial (degree ``len(series)``) at every vertex ``1_S``."""
    return torch.cat([at_baseline.unsqueeze(0), at_baseline + series.sum(0)])


def _warn_if_diverging(series: Tensor) -> None:
    norms = series.abs()  # (n, D, B)
    # The root test of hope_attr.attribution.convergence scales by c_1, which is zero along a
    # vertex whose
    # players only act together (x1 * x2 along 1_{12}): scale by the largest of the first half.
    scaled = norms.clone()
    scaled[0] = norms[: max(1, math.ceil(len(norms) / 2))].amax(0)
    # A series whose last two orders vanish has ended (a polynomial): nothing is left to diverge.
    ended = _convergence.truncation_error(norms) == 0
    diverging = int(((_convergence.radius(scaled) <= 1) & ~ended).sum())
    if diverging:
        warnings.warn(
            f"{diverging} of {norms[0].numel()} coalition moves (over the batch) reach the "
            "baseline outside the estimated radius of convergence of their Taylor series: "
            "method='taylor' is unreliable there and more orders make it worse. Use "
            "method='moebius', which evaluates the model itself.",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
