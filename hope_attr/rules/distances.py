"""Taylor rules of norms and distances: ``torch.linalg.norm``/``matrix_norm``, ``torch.cdist``,
``F.cosine_similarity``.

Each is an identity over existing rules: a p-norm is ``(sum |x|^p)^(1/p)`` (smooth away from 0,
where it takes PyTorch's slope 0: :func:`hope_attr.rules.compositions.vector_norm`), a distance
is the norm of a difference, the cosine the product of normalized vectors. Matrix norms of
order 1 and infinity are a maximum of column or row sums: a selection taken at the primal.
Spectral and nuclear norms (singular values) are refused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import register_rule
from hope_attr.rules.checks import refusal, warn_if_batch_coupled
from hope_attr.rules.compositions import vector_norm


def _clamped_norm(x: Jet, dim: int, eps: float) -> Jet:
    """``||x||`` with its value clamped below at ``eps`` and its series left alone: PyTorch
    clamps without tracking gradients, so its derivatives are the norm's."""
    norm = vector_norm(x, 2, dim, keepdim=True)
    return Jet(norm.primal.clamp_min(eps), norm.series, x.order)


def _unit(v: object, dim: int, eps: float) -> object:
    if isinstance(v, Jet):
        return v / _clamped_norm(v, dim, eps)
    return v / torch.linalg.vector_norm(v, 2, dim, keepdim=True).clamp_min(eps)


@register_rule(F.cosine_similarity, torch.cosine_similarity)
def _cosine_similarity(x1: object, x2: object, dim: int = 1, eps: float = 1e-8) -> Jet:
    # PyTorch's own formula: the vectors normalized first, each norm clamped at eps.
    shape = torch.broadcast_shapes(x1.shape, x2.shape)
    x1, x2 = (v.expand(shape) if v.shape != shape else v for v in (x1, x2))
    for v in (x1, x2):
        warn_if_batch_coupled(v, (dim,), "F.cosine_similarity")
    return torch.sum(_unit(x1, dim, eps) * _unit(x2, dim, eps), dim)


@register_rule(torch.cdist)
def _cdist(x1: object, x2: object, p: float = 2.0, compute_mode: str | None = None) -> Jet:
    """``||x1_i - x2_j||_p`` for every pair of rows; ``compute_mode`` changes only rounding."""
    if isinstance(x2, Jet) and isinstance(x1, Jet) and x1.primal.dim() == 2:
        warn_if_batch_coupled(x1, None, "torch.cdist of two 2-d tensors")
    difference = torch.unsqueeze(x1, -2) - torch.unsqueeze(x2, -3)
    if p == math.inf:
        return torch.amax(torch.abs(difference), -1)
    if p == 0:  # a count of differing entries: piecewise constant
        return torch.cdist(_primal(x1), _primal(x2), 0.0)
    return vector_norm(difference, p, -1)


def _primal(value: object) -> Tensor:
    return value.primal if isinstance(value, Jet) else value


def _matrix_norm(x: Jet, ord: object, dim: tuple[int, int], keepdim: bool) -> Jet:  # noqa: A002
    rows, columns = dim
    if ord in ("fro", None):
        return vector_norm(x, 2, dim, keepdim)
    if ord in (1, -1, math.inf, -math.inf):
        summed, across = (rows, columns) if ord in (1, -1) else (columns, rows)
        sums = torch.sum(torch.abs(x), summed, keepdim=True)
        pick = torch.amax if ord in (1, math.inf) else torch.amin
        result = pick(sums, across, keepdim=True)
        return result if keepdim else torch.squeeze(result, dim)
    raise refusal(
        f"a matrix norm with ord={ord!r}",
        "the spectral and nuclear norms are functions of singular values, which hope_attr has "
        "no Taylor rule for",
        "Use the Frobenius norm (ord='fro'), or ord=1/inf.",
    )


@register_rule(torch.linalg.matrix_norm)
def _linalg_matrix_norm(
    x: Jet, ord: object = "fro", dim: tuple[int, int] = (-2, -1), keepdim: bool = False,  # noqa: A002
    *, dtype=None,  # noqa: ANN001
) -> Jet:  # fmt: skip
    warn_if_batch_coupled(x, dim, "torch.linalg.matrix_norm")
    return _matrix_norm(x, ord, tuple(dim), keepdim)


@register_rule(torch.linalg.norm)
def _linalg_norm(
    x: Jet, ord: object = None, dim: object = None, keepdim: bool = False,  # noqa: A002
    *, dtype=None,  # noqa: ANN001
) -> Jet:  # fmt: skip
    """A vector norm over one axis (or of a 1-d tensor), a matrix norm over two (or of a 2-d
    tensor), as ``torch.linalg.norm`` decides; ``ord=None`` is 2 or Frobenius."""
    warn_if_batch_coupled(x, dim, "torch.linalg.norm")
    if dim is None and ord is None:
        return vector_norm(x, 2, None, keepdim)
    dims = (dim,) if isinstance(dim, int) else dim
    if dims is None:
        dims = tuple(range(x.primal.dim()))
    if len(dims) == 2:
        return _matrix_norm(x, ord, tuple(dims), keepdim)
    if ord in (math.inf, -math.inf):
        pick = torch.amax if ord == math.inf else torch.amin
        return pick(torch.abs(x), dims, keepdim=keepdim)
    return vector_norm(x, 2 if ord is None else ord, dims, keepdim)
