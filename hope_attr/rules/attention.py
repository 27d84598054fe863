"""Taylor rules for attention: ``F.scaled_dot_product_attention`` as the identity it computes.

``softmax(q k^T * scale + mask) v`` over the primitive rules (products of jets are Cauchy
products, softmax is a composition). The fused kernels have no forward-mode derivative of their
own, and jets never reach them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hope_attr.engine import registry as _registry
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import TrainingModeError, register_rule


@register_rule(F.scaled_dot_product_attention)
def scaled_dot_product_attention(
    query: object,
    key: object,
    value: object,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Jet:
    if dropout_p > 0:
        raise TrainingModeError(
            f"scaled_dot_product_attention {_registry.engine().where()} is called with "
            "dropout_p > 0 (training): a random mask. Call model.eval() or pass dropout_p=0."
        )
    q_shape, k_shape = query.shape, key.shape
    if enable_gqa and q_shape[-3] != k_shape[-3]:
        repeat = q_shape[-3] // k_shape[-3]
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    scale = 1.0 / math.sqrt(q_shape[-1]) if scale is None else scale
    # Scaled on the query's side: a (length x head) series, not a (length x source) one.
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    length, source = q_shape[-2], k_shape[-2]
    if is_causal:
        keep = torch.ones(length, source, dtype=torch.bool, device=_primal(query).device).tril()
        attn_mask = keep if attn_mask is None else attn_mask & keep
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=_primal(query).dtype, device=attn_mask.device)
            attn_mask = bias.masked_fill(attn_mask.logical_not(), float("-inf"))
        scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), value)


def _primal(value: object) -> Tensor:
    return value.primal if isinstance(value, Jet) else value
