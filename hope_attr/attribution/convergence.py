"""Does a feature's Taylor series reach its baseline? Estimates from the coefficients at hand.

For one feature (or group) the series is ``g(t) = f(x + t v) = sum_k c_k t^k`` with ``v`` the full
move to the baseline, so the ablation needs ``g(1)``. From the normalized coefficients
``c_1..c_n`` that the expansion already computed (norms over the outputs expanded, so that one
estimate serves every class of ``attribute_all_targets``; ``attribute`` expands its target alone):

* the **radius** ``rho`` of convergence, in units of the step, by the root test
  ``rho ~ (|c_1| / |c_k|)^(1 / (k - 1))`` taken as the smallest over the upper half of the orders
  (dividing by ``c_1`` removes the scale of the function, the upper half ignores the first terms,
  which say little about the singularities). ``rho <= 1`` means the baseline lies outside (or on
  the edge of) the disc where the series converges: more orders make the answer worse, not better;
* the **truncation error** of summing up to order ``n`` at step ``s``, estimated by the last two
  terms ``max(|c_{n-1}| s^(n-1), |c_n| s^n)``, the classic step-size control of Taylor ODE solvers
  (Jorba & Zou 2005). It underestimates nothing that matters when ``s`` is well inside ``rho``.

A series whose last orders do not shrink is flagged whatever its estimated radius. These are
estimates from finitely many coefficients, not bounds: they serve to warn (``method="exact"``) and
to choose steps (``method="continuation"``, which re-evaluates the function exactly at every
point it reaches, so a poor estimate costs steps, not accuracy, except on the last step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class ConvergenceWarning(UserWarning):
    """The Taylor series of some features does not converge at their baseline.

    ``HOPEAttribution(method="exact")`` warns with it once per call, with the number of features
    affected; ``method="continuation"`` gives those features FeatureAblation's values.
    torchvision's ``mobilenet_v3_small`` and ``efficientnet_b0`` with realistic BatchNorm
    statistics warn on 8x8 patches (``tests/test_continuation.py``).
    """


class PiecewiseLinearWarning(UserWarning):
    """Every order >= 2 is zero: the model is piecewise linear where it was expanded.

    On ReLU/max-pooling networks HOPE at any order equals order 1, i.e. Captum's
    ``InputXGradient`` with ``(x - baseline)``, and is exact only up to the first kink on each
    feature's path. Warned once per :class:`~hope_attr.HOPEAttribution` object.
    """


@dataclass(frozen=True)
class Diagnostics:
    """Per feature (shaped like the attributions, one tensor per input): how the series fares.

    Attributes:
        radius: the estimated radius of convergence of the feature's series, in units of its
            move to the baseline (``> 1``: the baseline is inside), ``inf`` for a polynomial.
        error: the estimated truncation error of the ``order``-term sum at the baseline, in the
            output's units (largest over the outputs expanded: the target's for ``attribute``).
        converged: ``radius > 1`` and ``error <= rtol * |f(x)|`` (largest output).
        steps: how continuation reached the feature's baseline: ``0`` where the first series
            sufficed, else the Taylor expansions taken plus one for the forward pass at the end
            (by default no expansion: ``1``); ``None`` for ``method="exact"``.
    """

    radius: Tensor | tuple[Tensor, ...]
    error: Tensor | tuple[Tensor, ...]
    converged: Tensor | tuple[Tensor, ...]
    steps: Tensor | tuple[Tensor, ...] | None = None


def coefficient_norms(coefficients: Tensor, output_dims: int) -> Tensor:
    """``(n, B, *O, *rest) -> (n, B, *rest)``: the largest magnitude over the outputs."""
    moved = coefficients.movedim(tuple(range(2, 2 + output_dims)), tuple(range(-output_dims, 0)))
    if not output_dims:
        return moved.abs()
    # max |c| as max(max c, -min c): two reductions, no |c| copy of the largest tensor of the call
    # (linalg.vector_norm(ord=inf) reduced as fast on contiguous input, ~90x slower on this view).
    dims = tuple(range(-output_dims, 0))
    return torch.maximum(moved.amax(dims), moved.amin(dims).neg_())


def radius(norms: Tensor) -> Tensor:
    """Root-test radius (units of the step) from coefficient norms ``(n, ...)``; see module doc."""
    order = norms.shape[0]
    if order < 2:
        return torch.full_like(norms[0], torch.inf)
    first = norms[0]
    estimates = []
    for k in range(max(2, order // 2 + 1), order + 1):
        ratio = first / norms[k - 1]  # inf where c_k = 0 (nothing to say), 0 where only c_1 = 0
        estimates.append(ratio ** (1.0 / (k - 1)))
    rho = torch.stack(estimates).amin(0)
    # 0 / 0 (both vanish) says nothing either; nan_to_num would also clip inf to the largest float.
    return torch.nan_to_num(rho, nan=torch.inf, posinf=torch.inf)


def truncation_error(norms: Tensor, step: Tensor | float = 1.0) -> Tensor:
    """Estimated error of the ``n``-term sum at ``step``: the larger of its last two terms."""
    order = norms.shape[0]
    last = norms[-1] * step**order
    if order < 2:
        return last
    return torch.maximum(last, norms[-2] * step ** (order - 1))


def tolerance_step(norms: Tensor, tolerance: Tensor) -> Tensor:
    """The largest step whose :func:`truncation_error` stays within ``tolerance`` (Jorba-Zou)."""
    order = norms.shape[0]
    steps = (tolerance / norms[-1]) ** (1.0 / order)
    if order >= 2:
        steps = torch.minimum(steps, (tolerance / norms[-2]) ** (1.0 / (order - 1)))
    return steps
