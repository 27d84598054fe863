"""The jet: a value together with its truncated Taylor series along many directions.

The convention, stated once for the whole package
-------------------------------------------------
A :class:`Jet` describes ``t -> f(x + t * v)`` for a batch of directions ``v`` at once:

* ``primal`` holds ``f(x)``, shape ``(B, *S)``: batch first, exactly the tensor the model computes.
  It is shared by every direction, so it is stored once.
* ``series`` holds the **normalized Taylor coefficients** ``f_k = (d^k/dt^k f(x + t v))|_0 / k!``
  for ``k = 1..m``, shape ``(m, D, B, *S)``: order first, then one slot per direction ``D``, then
  the model's own layout. Orders ``m < k <= order`` are exactly zero and are not stored (a linear
  layer applied to the input seed produces only ``m = 1``; the first nonlinearity fills all orders).
* Through a network's first convolution, activation and pooling, one-pixel directions may store
  ``series`` as receptive-field windows (:mod:`hope_attr.engine.windows`); reading ``jet.series``
  returns the dense layout above.

Normalized coefficients ``f^(k)/k!`` keep magnitudes tame at high order (``k!`` is 3.6e6 at k = 10)
so float32 stays accurate; they are converted to derivatives ``f^(k)`` only at the public API
boundary (:func:`hope_attr.unmixed_derivatives`), by multiplying with ``k!``.

With this convention every rule is univariate Taylor arithmetic (Griewank & Walther, ch. 13):
linear maps act on each coefficient (bias on the primal only), products are Cauchy products, and a
smooth elementwise ``g`` composes through the table ``g^(j)(x)/j!`` evaluated on the primal.
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hope_attr.engine import registry as _registry

if TYPE_CHECKING:
    from hope_attr.engine.windows import Window

__all__ = ["InputSeed", "Jet"]


@dataclass(frozen=True)
class InputSeed:
    """The identity seed of one model input: direction ``d`` moves flat feature ``start + d``.

    Kept symbolic so that the first linear layer reads off weight columns and the first
    convolution gathers kernel entries, instead of multiplying dense one-hot tensors.
    """

    start: int
    stop: int

    @property
    def num_directions(self) -> int:
        return self.stop - self.start

    def one_hot(self, primal: Tensor) -> Tensor:
        """Materialize the seed as a series of shape ``(1, D, 1, *S)`` (broadcast over batch)."""
        num_features = primal[0].numel()
        eye = torch.zeros(
            self.num_directions, num_features, dtype=primal.dtype, device=primal.device
        )
        rows = torch.arange(self.num_directions, device=primal.device)
        eye[rows, rows + self.start] = 1
        return eye.reshape(1, self.num_directions, 1, *primal.shape[1:])


class Jet:
    """A primal value and its normalized Taylor coefficients along ``D`` directions.

    Args:
        primal: ``f(x)``, shape ``(B, *S)``.
        series: normalized coefficients, shape ``(m, D, B, *S)`` (the batch axis may be 1 and
            broadcast); ``None`` together with ``seed`` for an input's identity seed.
        order: the truncation order ``n``; coefficients ``m < k <= n`` are zero.
        seed: set only on an untouched model input (see :class:`InputSeed`).
        window: set when ``series`` holds receptive-field windows ``(m, D, B|1, C, *size)``
            instead of whole feature maps (see :mod:`hope_attr.engine.windows`).
    """

    __slots__ = (
        "primal", "_series", "order", "seed", "window", "_base", "_views", "_stale", "__weakref__"
    )  # fmt: skip

    def __init__(
        self,
        primal: Tensor,
        series: Tensor | None,
        order: int,
        seed: InputSeed | None = None,
        window: Window | None = None,
    ) -> None:
        if series is None and seed is None:
            raise ValueError("a Jet needs a series or a seed")
        self.primal = primal
        self._series = series
        self.order = order
        self.seed = seed
        self.window = window
        # Aliasing (see link_view): the jet this one is a view of, the views of this one, and
        # where an in-place change through an alias made this one out of date.
        self._base: weakref.ref[Jet] | None = None
        self._views: list[weakref.ref[Jet]] | None = None
        self._stale: str | None = None

    @property
    def series(self) -> Tensor:
        """The stored coefficients ``(m, D, B|1, *S)``.

        A seed is materialized, and windows (:mod:`hope_attr.engine.windows`) are scattered into the
        dense layout, on first use.
        """
        if self._series is None:
            assert self.seed is not None
            self._series = self.seed.one_hot(self.primal)
        if self.window is not None:
            self._series = self.window.scatter(self._series)
            self.window = None
        return self._series

    @property
    def num_stored(self) -> int:
        """``m``: how many leading orders are stored (higher ones are zero)."""
        return 1 if self._series is None else self._series.shape[0]

    @property
    def num_directions(self) -> int:
        if self._series is None:
            assert self.seed is not None
            return self.seed.num_directions
        return self._series.shape[1]

    def full_series(self) -> Tensor:
        """All ``order`` coefficients with the batch axis materialized: ``(n, D, B, *S)``."""
        series = self.series
        shape = (series.shape[0], series.shape[1], *self.primal.shape)
        series = series.expand(shape)
        missing = self.order - series.shape[0]
        if missing:
            zeros = series.new_zeros((missing, *series.shape[1:]))
            series = torch.cat([series, zeros], dim=0)
        return series.contiguous()

    def with_series(self, primal: Tensor, series: Tensor) -> Jet:
        """A new jet of the same order (rules use this to build their result)."""
        return Jet(primal, series, self.order)

    # Python operators, so that compositions read like the identities they encode.
    def __add__(self, other: object) -> Jet:
        return _rule(operator.add)(self, other)

    __radd__ = __add__

    def __sub__(self, other: object) -> Jet:
        return _rule(operator.sub)(self, other)

    def __rsub__(self, other: object) -> Jet:
        return _rule(operator.sub)(other, self)

    def __mul__(self, other: object) -> Jet:
        return _rule(operator.mul)(self, other)

    __rmul__ = __mul__

    def __truediv__(self, other: object) -> Jet:
        return _rule(operator.truediv)(self, other)

    def __rtruediv__(self, other: object) -> Jet:
        return _rule(operator.truediv)(other, self)

    # Floor division is a step (a constant between jumps); the remainder a - b * floor(a / b).
    def __floordiv__(self, other: object) -> Tensor:
        return _rule(operator.floordiv)(self, other)

    def __rfloordiv__(self, other: object) -> Tensor:
        return _rule(operator.floordiv)(other, self)

    def __mod__(self, other: object) -> Jet:
        return _rule(operator.mod)(self, other)

    def __rmod__(self, other: object) -> Jet:
        return _rule(operator.mod)(other, self)

    def __neg__(self) -> Jet:
        return self.with_series(-self.primal, -self.series)

    def __pow__(self, exponent: object) -> Jet:
        return torch.pow(self, exponent)

    def __rpow__(self, base: object) -> Jet:
        return torch.pow(base, self)

    def __matmul__(self, other: object) -> Jet:
        return _rule(operator.matmul)(self, other)

    def __rmatmul__(self, other: object) -> Jet:
        return _rule(operator.matmul)(other, self)

    def __abs__(self) -> Jet:
        return torch.abs(self)

    # Comparisons are constants (primal only), through their rules, which also tell Taylor
    # continuation where their truth value flips (hope_attr.engine.kinks).
    def __gt__(self, other: object) -> Tensor:
        return torch.gt(self, other)

    def __lt__(self, other: object) -> Tensor:
        return torch.lt(self, other)

    def __ge__(self, other: object) -> Tensor:
        return torch.ge(self, other)

    def __le__(self, other: object) -> Tensor:
        return torch.le(self, other)

    def __eq__(self, other: object) -> Tensor:  # type: ignore[override]
        return _equality(torch.eq, self, other)

    def __ne__(self, other: object) -> Tensor:  # type: ignore[override]
        return _equality(torch.ne, self, other)

    # Defining __eq__ would make jets unhashable; the engine may key dicts and sets by a jet,
    # by identity (as for tensors, whose == is elementwise too).
    __hash__ = object.__hash__

    # Python numbers: the value at the expansion point, through the same rules as `.item()`
    # (which warn that the dependence on the input is dropped, and tell Taylor continuation that
    # a decision was made here). No __index__: a jet is floating point, never an index.
    def __float__(self) -> float:
        return _registry.engine().dispatch(torch.Tensor.__float__, (self,), {})

    def __int__(self) -> int:
        return _registry.engine().dispatch(torch.Tensor.__int__, (self,), {})

    def __getattr__(self, name: str) -> object:
        """Tensor methods (``x.tanh()``, ``x.view(...)``) dispatch to their Taylor rules;
        metadata (``x.shape``, ``x.is_nested``) is the primal's."""
        if name.startswith("__"):
            raise AttributeError(name)
        return _registry.engine().tensor_attribute(self, name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        """``torch.tanh(jet)``, ``F.gelu(jet)``, ...: dispatch to the registered Taylor rule.

        This is what lets a user's rule be written with ordinary torch functions, and what runs
        a model's own forward on jets (:mod:`hope_attr.engine.dispatch`).
        """
        return _registry.engine().dispatch(func, args, kwargs or {})

    def __bool__(self) -> bool:
        return bool(self.primal)

    def __len__(self) -> int:
        return len(self.primal)

    def __iter__(self):  # noqa: ANN204
        return iter(_registry.engine().dispatch(torch.Tensor.unbind, (self,), {}))

    def __getitem__(self, index: object) -> Jet:
        return _registry.engine().dispatch(torch.Tensor.__getitem__, (self, index), {})

    def __setitem__(self, index: object, value: object) -> None:
        _registry.engine().dispatch(torch.Tensor.__setitem__, (self, index, value), {})

    def __iadd__(self, other: object) -> Jet:
        return self.assign(self + other)

    def __isub__(self, other: object) -> Jet:
        return self.assign(self - other)

    def __imul__(self, other: object) -> Jet:
        return self.assign(self * other)

    def __itruediv__(self, other: object) -> Jet:
        return self.assign(self / other)

    def assign(self, value: Jet | Tensor) -> Jet:
        """Make this jet hold ``value`` (an in-place op: ``x.add_(y)``, ``x += y``).

        A plain tensor (``x.zero_()``, ``x.floor_()``, ``x.copy_(c)``) is a constant: its
        entries get no series. Views of this jet, and the jet it is a view of, do not see the
        change (jets are values, not shared memory): they become out of date, and using one
        later is refused.
        """
        if isinstance(value, Tensor):
            value = _constant(value.to(self.primal.dtype), self)
        if not isinstance(value, Jet):
            raise _registry.engine().unsupported_mutation(self)
        self.check_current()
        if value.primal.shape != self.primal.shape:
            raise _registry.UnsupportedOperationError(
                f"hope_attr: an in-place operation {_registry.engine().where()} changes the "
                f"shape {tuple(self.primal.shape)} to {tuple(value.primal.shape)}, and a jet "
                "keeps its shape; write it out of place (x = x.t() instead of x.t_())."
            )
        self.primal = value.primal
        self._series = value._series
        self.seed = value.seed
        self.window = value.window
        self._outdate_aliases()
        return self

    def link_view(self, view: Jet) -> None:
        """Record that ``view`` shares memory with this jet in PyTorch's terms (``x[0]``,
        ``x.view(...)``...), so that an in-place change of either outdates the other."""
        root = self._base() if self._base is not None else None
        root = root if root is not None else self
        if root._views is None:
            root._views = []
        root._views.append(weakref.ref(view))
        view._base = weakref.ref(root)

    def _outdate_aliases(self) -> None:
        root = self._base() if self._base is not None else None
        root = root if root is not None else self
        aliases = [root] + [v() for v in root._views or ()]
        if len(aliases) == 1:
            return
        where = _registry.engine().where()
        for alias in aliases:
            if alias is not None and alias is not self:
                alias._stale = where

    def check_current(self) -> None:
        """Refuse to use a jet that an in-place change through one of its aliases outdated."""
        if self._stale is not None:
            raise _registry.UnsupportedOperationError(
                "hope_attr: this tensor shares memory with one that was changed in place "
                f"{self._stale}, and it is used afterwards {_registry.engine().where()}. Jets "
                "do not follow aliasing between views: write the change out of place (e.g. "
                "h = torch.cat([h[:, :2] * 3, h[:, 2:]], 1)), or .clone() the view before "
                "changing it."
            )

    def __repr__(self) -> str:
        return (
            f"Jet(primal={tuple(self.primal.shape)}, order={self.order}, "
            f"stored={self.num_stored}, directions={self.num_directions}"
            f"{', windowed' if self.window is not None else ''})"
        )


def _primal(value: object) -> object:
    return value.primal if isinstance(value, Jet) else value


def _constant(primal: Tensor, like: Jet) -> Jet:
    """``primal`` as a jet of ``like``'s order and directions whose series is zero (stored as one
    order, broadcast over the batch)."""
    batch = (1,) if primal.dim() else ()
    series = primal.new_zeros((1, like.num_directions, *batch, *primal.shape[1:]))
    return Jet(primal, series, like.order)


def _equality(compare: object, jet: Jet, other: object) -> Tensor:
    """``jet == other`` as a tensor's ``==``: the mask at the primal; for an operand torch
    cannot compare with (``jet == None``, a string), Python's identity test, as for tensors."""
    try:
        return compare(jet, other)
    except TypeError:
        return NotImplemented


def _rule(op: object):  # noqa: ANN202
    # Python operators reach the same rules as torch.add & co., through the registry: the jet
    # is a data type, and the modules that implement its arithmetic build on it.
    rule = _registry.function_rule(op)

    def checked(a: object, b: object) -> Jet:
        for value in (a, b):
            if isinstance(value, Jet):
                value.check_current()
        return rule(a, b)

    return checked
