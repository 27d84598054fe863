"""Series arithmetic the rules share: products, composition and the Riccati recurrence.

Everything here works on plain tensors in the jet convention (:mod:`hope_attr.engine.jet`):
``a0``/``b0`` are primal values, ``a``/``b`` their normalized coefficients ``(m, ...)`` for
orders ``1..m``, and results hold orders ``1..order``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hope_attr.engine import native as _native
from hope_attr.engine import workspace as _workspace

__all__ = ["cauchy_product", "compose_series", "matmul_series", "riccati_series"]


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
