"""The typed result of :meth:`~hope_attr.HOPEAttribution.attribute_with_details`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from hope_attr.attribution.convergence import Diagnostics

__all__ = ["HOPEResult"]


@dataclass(frozen=True)
class HOPEResult:
    """Everything one attribution call knows, by name instead of by tuple position.

    Tensors come in the inputs' form: a tensor for a tensor input, a tuple for a tuple.

    Attributes:
        attributions: shaped like the inputs, FeatureAblation's sign (what
            :meth:`~hope_attr.HOPEAttribution.attribute` returns).
        terms: the signed order-``k`` terms ``(order, *input.shape)`` of the series at the
            inputs; they sum to ``attributions`` except where ``method="continuation"``
            evaluated the model at the baseline instead (see ``diagnostics.steps``).
        diagnostics: per feature, the estimated radius of convergence, truncation error and
            continuation steps (:class:`~hope_attr.Diagnostics`).
        convergence_delta: ``(B,)``, Captum's completeness gap ``sum(attributions) -
            (f(inputs) - f(baselines))`` (a ``feature_mask`` group counted once).

    Example:
        >>> import torch, hope_attr
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).eval()
        >>> result = hope_attr.HOPEAttribution(model, order=3).attribute_with_details(
        ...     torch.rand(4, 3), target=1
        ... )
        >>> result.attributions.shape, result.terms.shape, result.convergence_delta.shape
        (torch.Size([4, 3]), torch.Size([3, 4, 3]), torch.Size([4]))
    """

    attributions: Tensor | tuple[Tensor, ...]
    terms: Tensor | tuple[Tensor, ...]
    diagnostics: Diagnostics
    convergence_delta: Tensor
