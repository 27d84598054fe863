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

from hope_attr.engine import native as _native
from hope_attr.engine import registry as _registry
from hope_attr.engine import workspace as _workspace

if TYPE_CHECKING:
    from hope_attr.engine.windows import Window

__all__ = ["Jet", "cauchy_product", "compose_series", "matmul_series", "riccati_series"]


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

    def assign(self, value: Jet) -> Jet:
        """Make this jet hold ``value`` (an in-place op: ``x.add_(y)``, ``x += y``).

        Views of this jet, and the jet it is a view of, do not see the change (jets are values,
        not shared memory): they become out of date, and using one later is refused.
        """
        if not isinstance(value, Jet):
            raise _registry.engine().unsupported_mutation(self)
        self.check_current()
        if value.primal.shape != self.primal.shape:
            raise RuntimeError(
                f"in-place operation changes the shape {tuple(self.primal.shape)} to "
                f"{tuple(value.primal.shape)}"
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


def cauchy_product(
    a0: Tensor, a: Tensor, b0: Tensor, b: Tensor, order: int, op=torch.mul
) -> Tensor:
    """Coefficients ``1..min(order, ma + mb)`` of the product of two series under bilinear ``op``.

    ``a0``/``b0`` are the primals, ``a``/``b`` the stored coefficients ``(m, ...)``. ``op`` must
    broadcast leading axes (``torch.mul``, ``torch.matmul``).
    """
    ma, mb = a.shape[0], b.shape[0]
    m = min(order, ma + mb)
    # Every product adds into one buffer, all its orders by one in-place add: per-order sums
    # and a final stack cost an allocation and a pass each (on a ViT's attention scores, the
    # largest series, they took more time than the products themselves).
    out: Tensor | None = None

    def accumulate(start: int, values: Tensor) -> None:
        nonlocal out
        count = values.shape[0]
        if out is None:
            if start == 0 and count == m and not values._is_view():
                out = values  # a fresh result: the buffer itself
                return
            out = values.new_zeros((m, *values.shape[1:]))
        shape = torch.broadcast_shapes(out.shape[1:], values.shape[1:])
        if shape != out.shape[1:]:  # terms may broadcast differently over the batch axis
            out = out.expand(m, *shape).clone()
        out[start : start + count] += values

    accumulate(0, op(a0, b[: min(mb, m)]))
    accumulate(0, op(a[: min(ma, m)], b0))
    # a_i (order i) times b_l (order l) lands on order i + l.
    for i in range(1, min(ma, m - 1) + 1):
        count = min(mb, m - i)
        accumulate(i, op(a[i - 1], b[:count]))
    assert out is not None
    return out


def matmul_series(a0: Tensor, a: Tensor, b0: Tensor, b: Tensor, order: int) -> Tensor:
    """:func:`cauchy_product` under ``torch.matmul``: coefficients ``1..min(order, ma + mb)``.

    When the product is at least as large as either factor (attention scores ``q k^T``: a
    ``(L x L)`` product of ``(L x d)`` factors), order ``k``'s terms ``sum_i a_i b_{k-i}`` are one
    matrix product over a concatenated inner axis, ``[a_lo | ... | a_hi] @ [b_{k-lo}; ...;
    b_{k-hi}]``, written straight into the result: no per-term product to allocate and add into
    the large result, and a longer inner axis for the matrix kernel. Otherwise (``softmax(.) v``:
    the factor is the large one) the terms go through :func:`cauchy_product`, which does not copy
    the large factor.
    """
    if (
        min(a.dim(), b.dim()) < 3
        or min(a0.dim(), b0.dim()) < 2
        or a.shape[-2] < a.shape[-1]  # rows < inner: a is larger than the product
        or b.shape[-1] < a.shape[-1]  # columns < inner: so is b
        or a.dtype != b.dtype
        or (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
    ):
        return cauchy_product(a0, a, b0, b, order, torch.matmul)
    rows, inner, columns = a.shape[-2], a.shape[-1], b.shape[-1]
    ma, mb = a.shape[0], b.shape[0]
    m = min(order, ma + mb)
    batch = torch.broadcast_shapes(a0.shape[:-2], a.shape[1:-2], b0.shape[:-2], b.shape[1:-2])
    # Inner blocks: a's columns hold a_0, a_1, ..., a_ma; b's rows hold b_mb, ..., b_1, b_0, so
    # that the terms of every order are a contiguous run of blocks on both sides.
    a_blocks = [a0, *a.unbind(0)]
    b_blocks = [*reversed(b.unbind(0)), b0]  # views: flip(0) would copy b once more
    # The buffers come from the chunks' workspace: fresh blocks this large fault every page in.
    a_cat = _workspace.empty(a, (*batch, rows, (ma + 1) * inner))
    b_cat = _workspace.empty(b, (*batch, (mb + 1) * inner, columns))
    torch.cat([t.expand(*batch, rows, inner) for t in a_blocks], dim=-1, out=a_cat)
    torch.cat([t.expand(*batch, inner, columns) for t in b_blocks], dim=-2, out=b_cat)
    out = _workspace.empty(a, (m, *batch, rows, columns))
    for k in range(1, m + 1):
        lo, hi = max(0, k - mb), min(k, ma)  # a_i with i in lo..hi meets b_{k-i}
        torch.matmul(
            a_cat[..., lo * inner : (hi + 1) * inner],
            b_cat[..., (mb - k + lo) * inner : (mb - k + hi + 1) * inner, :],
            out=out[k - 1],
        )
    return out


def compose_series(table: list[Tensor], u: Tensor, order: int) -> Tensor:
    """Coefficients ``1..order`` of ``g(x0 + u(t))`` for an elementwise ``g``.

    Args:
        table: ``[g(x0), g'(x0)/1!, ..., g^(n)(x0)/n!]``, each shaped like the primal.
        u: stored coefficients of the argument, ``(m, D, B, *S)``.
        order: the truncation order ``n``.

    Faa di Bruno in series form: ``y = sum_j table[j] * u(t)^j``, with the powers ``u^j`` built by
    repeated Cauchy products (``u^j`` starts at order ``j``). Cost ``O(n^3)`` multiply-adds per
    element, ``O(n^2)`` tensor operations; ``m = 1`` (an argument linear in ``t``) costs ``O(n)``.
    """
    m = u.shape[0]
    u1 = u[0]
    if m == 1:
        # u(t) = u1 t, so u^j = u1^j t^j. Write into one buffer: stacking would copy it again.
        shape = torch.broadcast_shapes(u1.shape, *(t.shape for t in table[1:] if t.dim()))
        out = u1.new_empty((order, *shape))
        power = u1
        for j in range(1, order + 1):
            torch.mul(table[j], power, out=out[j - 1])
            if j < order:
                power = power * u1
        return out

    if m < order:
        u = torch.cat([u, u.new_zeros((order - m, *u.shape[1:]))])
    # prev[r] holds the order (j - 1 + r) coefficient of u^(j-1); start with j - 1 = 1. The first
    # product of each sum initializes its buffer: zero-filling buffers cost as much as the sums.
    prev = u
    out = table[1] * prev
    for j in range(2, order + 1):
        current = u[0] * prev[: order - j + 1]  # i = 1 term of orders j..n of u^j
        for i in range(2, min(m, order - j + 1) + 1):
            current[i - 1 :].addcmul_(u[i - 1], prev[: order - j + 2 - i])
        out[j - 1 :].addcmul_(table[j], current)
        prev = current
    return out


def riccati_series(
    y0: Tensor, slope0: Tensor, u: Tensor, order: int, linear: float, quadratic: float
) -> Tensor:
    """Coefficients ``1..order`` of ``g(x0 + u(t))`` for ``g' = a + linear g + quadratic g^2``.

    ``tanh`` (``1 - g^2``), ``sigmoid`` (``g - g^2``) and ``exp`` (``g``) solve such an ODE, so
    ``y' = v u'`` with ``v = g'(y)``, which in series form reads
    ``k y_k = sum_j j u_j v_{k-j}`` and ``v_k = linear y_k + quadratic [y^2]_k``. That costs
    ``O(n^2)`` multiply-adds per element instead of the ``O(n^3)`` of :func:`compose_series`.

    Args:
        y0: ``g(x0)``; slope0: ``g'(x0)`` (both shaped like the primal).
        u: stored coefficients of the argument, ``(m, D, B|1, *S)``.
        order: the truncation order ``n``.
    """
    m = u.shape[0]
    shape = torch.broadcast_shapes(u.shape[1:], y0.shape)
    # Reused across chunks (hope_attr.engine.workspace): fresh blocks this large fault every page
    # in.
    y = _workspace.empty(u, (order, *shape))
    if _native.riccati(y0, slope0, u, y, linear, quadratic):
        return y  # the same recurrence, compiled: one pass over memory instead of ~n^2
    # Views made once: the loops below index them ~n^2 times.
    us, ys = u.unbind(0), y.unbind(0)
    if quadratic == 0:
        # v_k = linear y_k (exp): read y itself, with `linear` in the products' factor.
        for k in range(1, order + 1):
            yk = ys[k - 1]
            torch.mul(us[k - 1], slope0, out=yk) if k <= m else yk.zero_()
            for j in range(1, min(k - 1, m) + 1):
                yk.addcmul_(us[j - 1], ys[k - j - 1], value=linear * j / k)
        return y
    v = _workspace.empty(u, (order - 1, *shape)) if order > 1 else None
    vs = v.unbind(0) if v is not None else ()
    gain = linear + 2 * quadratic * y0 if order > 1 else None  # v_k's factor of y_k
    for k in range(1, order + 1):
        yk = ys[k - 1]
        # The j = k term holds v_0, the primal's slope; v_1.. live in `v`.
        torch.mul(us[k - 1], slope0, out=yk) if k <= m else yk.zero_()
        for j in range(1, min(k - 1, m) + 1):
            yk.addcmul_(us[j - 1], vs[k - j - 1], value=j / k)
        if k == order:
            break
        # v_k = linear y_k + quadratic (2 y_0 y_k + sum_{i=1}^{k-1} y_i y_{k-i}).
        vk = vs[k - 1]
        torch.mul(yk, gain, out=vk)
        for i in range(1, (k - 1) // 2 + 1):
            vk.addcmul_(ys[i - 1], ys[k - i - 1], value=2 * quadratic)
        if k % 2 == 0:
            vk.addcmul_(ys[k // 2 - 1], ys[k // 2 - 1], value=quadratic)
    return y
