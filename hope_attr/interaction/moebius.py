"""Moebius coefficients of a game on the subsets of size <= n, and indices as linear maps of them.

A game ``v`` on ``p`` players is known on the *truncated lattice*: every coalition ``S`` with
``|S| <= n``, encoded as a bitmask (bit ``i`` = player ``i``). The lattice is closed under taking
subsets, which is all the two transforms below need:

* the **Moebius transform** ``m(T) = sum_{S subset T} (-1)^{|T|-|S|} v(S)`` needs ``v`` on the
  subsets of ``T`` only, so ``m`` is exact on the lattice (the fast subset transform, one pass per
  player, each pass ``m[T] -= m[T - i]`` for the ``T`` that contain ``i``);
* every index offered here is ``I(S) = sum_{T superset S} w(|T|, |S|) m(T)`` with a weight that
  depends on the sizes alone (the index of the unanimity game ``u_T`` is symmetric in ``T`` and
  zero outside it): a superset sum per interaction size, one pass per player again.

Leaving out the coalitions larger than ``n`` sets ``m(T) = 0`` for ``|T| > n``: the indices of the
``n``-additive part of the game, exact when ``n = p``. The closed forms of the weights (Grabisch
1997 for SII/BII, Sundararajan et al. 2020 for STII, Tsai et al. 2023 for FSII, Bernoulli
aggregation of SII for k-SII, Bordt & von Luxburg 2023) are tested against shapiq's
``ExactComputer``, which enumerates the game itself.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache, lru_cache

import torch
from torch import Tensor

# Up to 2^20 coalitions, positions are looked up in a table of all bitmasks (8 MiB).
_DENSE_TABLE_PLAYERS = 20
# Rows of the membership matrix formed at once (16 MiB at 32 players in float64).
_MEMBERSHIP_ROWS = 2**16

INDICES = ("Moebius", "SV", "BV", "SII", "BII", "k-SII", "STII", "FSII")
# Indices of single players only (shapiq reports them with max_order 1).
VALUES = ("SV", "BV")


def lattice_size(num_players: int, size: int) -> int:
    """How many coalitions have at most ``size`` players: ``sum_{s <= size} C(p, s)``."""
    return sum(math.comb(num_players, s) for s in range(min(size, num_players) + 1))


@lru_cache(maxsize=8)
def lattice(num_players: int, size: int) -> Lattice:
    """The :class:`Lattice`, built once per ``(num_players, size)`` (its index tables are the
    slow part of a small call; the tensors are never written to)."""
    return Lattice(num_players, size)


class Lattice:
    """All coalitions of ``num_players`` players with at most ``size`` members, as sorted bitmasks.

    Attributes:
        masks: ``(N,)`` int64, ascending (the empty coalition first).
        sizes: ``(N,)`` int64, the number of players in each coalition.
    """

    def __init__(self, num_players: int, size: int) -> None:
        if num_players > 62:
            raise ValueError(f"at most 62 players fit a bitmask, got {num_players}")
        self.num_players = num_players
        self.size = min(size, num_players)
        levels = [torch.zeros(1, dtype=torch.int64)]
        for _ in range(self.size):
            below = levels[-1]
            # Add a player above the highest one present: each coalition is built exactly once.
            grown = [below[below < (1 << i)] | (1 << i) for i in range(num_players)]
            levels.append(torch.cat(grown))
        masks = torch.cat(levels)
        sizes = torch.cat([torch.full_like(level, s) for s, level in enumerate(levels)])
        order = masks.argsort()
        self.masks: Tensor = masks[order]
        self.sizes: Tensor = sizes[order]
        self._pairs: list[tuple[Tensor, Tensor]] | None = None
        self._table: Tensor | None = None
        self._member_columns: Tensor | None = None

    def __len__(self) -> int:
        return self.masks.numel()

    def positions(self, masks: Tensor) -> Tensor:
        """Where the given coalitions (bitmasks in the lattice) sit."""
        if self.num_players <= _DENSE_TABLE_PLAYERS:
            if self._table is None:  # a direct look-up: 20 times faster than a binary search
                self._table = torch.zeros(2**self.num_players, dtype=torch.int64)
                self._table[self.masks] = torch.arange(len(self.masks))
            return self._table[masks]
        return torch.searchsorted(self.masks, masks)

    def members(self, start: int, stop: int, dtype: torch.dtype) -> Tensor:
        """``(stop - start, p)``: which players the coalitions ``start..stop - 1`` hold."""
        players = torch.arange(self.num_players)
        return ((self.masks[start:stop, None] >> players) & 1).to(dtype)

    def member_columns(self) -> Tensor:
        """``(size, N)`` int64: row ``i`` holds the ``i``-th smallest player of each coalition,
        ``p`` where it has fewer players (rows are contiguous: they are read one at a time)."""
        if self._member_columns is None:
            players = torch.arange(self.num_players)
            present = ((self.masks[:, None] >> players) & 1).bool()
            padded = torch.where(present, players, self.num_players)
            table = padded.sort(1).values[:, : max(self.size, 1)]
            self._member_columns = table.T.contiguous()
        return self._member_columns

    def pairs(self) -> list[tuple[Tensor, Tensor]]:
        """Per player ``i``: positions of the coalitions ``T`` holding ``i``, and of ``T - i``."""
        if self._pairs is None:
            self._pairs = []
            for i in range(self.num_players):
                holding = torch.nonzero((self.masks >> i) & 1, as_tuple=True)[0]
                self._pairs.append((holding, self.positions(self.masks[holding] ^ (1 << i))))
        return self._pairs

    def moebius(self, values: Tensor) -> Tensor:
        """``(N, ...)`` game values on the lattice -> their Moebius coefficients (a new tensor)."""
        result = values.clone()
        if self.size == self.num_players:
            # Every coalition: position = bitmask, and a pass is a subtraction of two halves of
            # a (2,) * p view, no index tensors (3x faster at p = 14).
            cube = result.view((2,) * self.num_players + tuple(values.shape[1:]))
            for axis in range(self.num_players):
                cube.select(axis, 1).sub_(cube.select(axis, 0))
            return result
        for holding, without in self.pairs():
            # Coalitions without player i are not written in pass i: the update is a plain
            # vectorized subtraction, no ordering inside a pass.
            result.index_add_(0, holding, result[without], alpha=-1)
        return result

    def superset_sums(self, values: Tensor) -> Tensor:
        """``(N, ...)`` -> ``sum_{T superset S, T in lattice} values[T]`` for every ``S``."""
        result = values.clone()
        for holding, without in self.pairs():
            result.index_add_(0, without, result[holding])
        return result


def interaction_masks(num_players: int, max_order: int) -> list[tuple[int, ...]]:
    """The interactions an index reports, in shapiq's order: by size, then lexicographic."""
    from itertools import combinations

    return [s for k in range(max_order + 1) for s in combinations(range(num_players), k)]


def index_values(
    lattice: Lattice, moebius: Tensor, index: str, max_order: int, interactions: list[tuple]
) -> Tensor:
    """``(N, B)`` Moebius coefficients -> ``(K, B)`` index values of ``interactions``."""
    weights = weight_table(index, max_order, lattice.size).to(moebius.dtype)  # (n + 1, k + 1)
    result = moebius.new_zeros(len(interactions), *moebius.shape[1:])
    sizes = torch.tensor([len(s) for s in interactions])
    for s in range(max_order + 1):
        weighted = weights[lattice.sizes, s].unsqueeze(1) * moebius  # (N, B)
        here = sizes == s
        if s <= 2:
            # Sums over the coalitions that hold the player (pair): products with the (N, p)
            # membership matrix, cheaper than a superset transform over the whole lattice.
            result[here] = _small_superset_sums(lattice, weighted, s)
        else:
            masks = torch.tensor([sum(1 << i for i in t) for t in interactions if len(t) == s])
            result[here] = lattice.superset_sums(weighted)[lattice.positions(masks)]
    return result


def _small_superset_sums(lattice: Lattice, weighted: Tensor, size: int) -> Tensor:
    """``sum_{T superset S} weighted[T]`` for every ``S`` of ``size <= 2`` players, in the
    order of :func:`interaction_masks`: ``(C(p, size), B)``."""
    if size == 0:
        return weighted.sum(0, keepdim=True)
    p = lattice.num_players
    total = weighted.new_zeros((p,) * size + tuple(weighted.shape[1:]))
    for start in range(0, len(lattice), _MEMBERSHIP_ROWS):
        stop = min(len(lattice), start + _MEMBERSHIP_ROWS)
        members = lattice.members(start, stop, weighted.dtype)  # (C, p)
        if size == 1:
            total += members.T @ weighted[start:stop]
        else:
            # One matmul for every example: (p, C) @ (C, p * B).
            scaled = members.unsqueeze(2) * weighted[start:stop].unsqueeze(1)  # (C, p, B)
            total += (members.T @ scaled.reshape(stop - start, -1)).reshape(total.shape)
    if size == 1:
        return total
    upper = torch.triu_indices(p, p, offset=1)  # row-major (i < j): shapiq's order of pairs
    return total[upper[0], upper[1]]


@lru_cache(maxsize=64)
def weight_table(index: str, max_order: int, size: int) -> Tensor:
    """``w[t, s]``: the share of ``m(T)``, ``|T| = t``, in the index of each ``S subset T``,
    ``|S| = s``, for ``t <= size`` and ``s <= max_order`` (float64).

    ``s = 0`` is the value shapiq reports for the empty interaction: ``v(empty)`` for the
    efficient indices, the index's own formula for SII, BII and BV.
    """
    k = max_order
    table = torch.zeros(size + 1, k + 1, dtype=torch.float64)
    for t in range(size + 1):
        for s in range(min(k, t) + 1):
            table[t, s] = _weight(index, k, t, s)
    return table


def _weight(index: str, k: int, t: int, s: int) -> float:
    identity = 1.0 if t == s else 0.0
    if index == "Moebius":
        return identity
    if index == "SII":
        return 1 / (t - s + 1)
    if index == "BII":
        return 0.5 ** (t - s)
    if index == "SV":
        return identity if s == 0 else 1 / t
    if index == "BV":
        return 0.5 ** (t - s)
    if t <= k or s == 0:  # the efficient interaction indices are the Moebius ones on k-additive
        return identity  # games, and report v(empty) for the empty interaction
    if index == "STII":
        return 1 / math.comb(t, k) if s == k else 0.0
    if index == "k-SII":  # SII aggregated with Bernoulli numbers (Bordt & von Luxburg 2023)
        return float(
            sum(
                _bernoulli(j) * Fraction(math.comb(t - s, j), t - s - j + 1)
                for j in range(k - s + 1)
            )
        )
    if index == "FSII":  # Tsai, Yeh & Ravikumar 2023, Theorem 19
        return (
            (-1) ** (k - s) * s / (k + s) * math.comb(k, s) * math.comb(t - 1, k)
            / math.comb(t + k - 1, k + s)
        )  # fmt: skip
    raise ValueError(f"unknown index {index!r}")


@cache
def _bernoulli(m: int) -> Fraction:
    """Bernoulli numbers with ``B_1 = -1/2``."""
    if m == 0:
        return Fraction(1)
    return -sum(math.comb(m + 1, j) * _bernoulli(j) for j in range(m)) / (m + 1)
