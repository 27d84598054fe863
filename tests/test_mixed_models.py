"""``mixed_derivatives`` and ``expand`` take every model ``unmixed_derivatives`` takes, by default.

Nothing is traced to pick a route: a forward with a data-dependent branch, a module hook or a
Hugging Face GPT-2 runs eagerly on the jets. The references are independent of hope_attr: nested
``torch.func.jacfwd`` in float64, one point at a time (no ``vmap`` over points, so Python branches
on values are allowed), and for GPT-2 nested ``jacrev`` on a reference copy of the model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev

import hope_attr

DTYPE = torch.float64
ORDER = 3


def _references(
    f: Callable[[Tensor], Tensor], x: Tensor, order: int, transform: Callable = jacfwd
) -> list[Tensor]:
    """``[d^k f / dx^k]`` for ``k = 1..order``, each ``(B, *O, p, ..., p)``, one point at a time."""
    per_point = []
    for point in x:
        single = lambda z: f(z.unsqueeze(0))[0]  # noqa: E731
        derivative, orders = single, []
        for _ in range(order):
            derivative = transform(derivative)
            orders.append(derivative(point))
        per_point.append(orders)
    return [torch.stack(tensors) for tensors in zip(*per_point, strict=True)]


def _relative_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    return max(
        ((a - e).abs().max() / e.abs().max()).item() for a, e in zip(actual, expected, strict=True)
    )


def _polynomial_error(
    polynomial: hope_attr.TaylorPolynomial, value: Tensor, expected: list[Tensor]
) -> float:
    """The worst relative error of ``polynomial``'s coefficients against ``d^a f / a!`` read off
    the reference tensors of one point (``value``: ``f(x0)``, ``(*O,)``)."""
    worst = 0.0
    for exponents, coefficient in zip(
        polynomial.exponents.tolist(), polynomial.coefficients, strict=True
    ):
        degree = sum(exponents)
        if degree == 0:
            reference = value
        else:
            index = [i for i, e in enumerate(exponents) for _ in range(e)]
            scale = math.prod(math.factorial(e) for e in exponents)
            reference = expected[degree - 1][0][(..., *index)] / scale
        size = expected[degree - 1].abs().max() if degree else value.abs().max()
        worst = max(worst, ((coefficient - reference).abs().max() / size).item())
    return worst


class Branchy(nn.Module):
    """``if h.sum() > 0``: the branch is a Python decision on a value (one point per call)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 4, bias=False)  # odd in x: x and -x take different branches
        self.head = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inner(x))
        if h.sum() > 0:
            return self.head(h[:, :2] * torch.sigmoid(h[:, 2:]))
        return torch.sin(self.head(h[:, 1:3]))


class Hooked(nn.Module):
    """A forward hook that changes a layer's output, and a pre-hook that changes its input."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 5), nn.Linear(5, 2)
        self.first.register_forward_hook(lambda module, args, out: out + 0.5 * torch.tanh(out))
        self.second.register_forward_pre_hook(lambda module, args: (torch.sigmoid(args[0]),))

    def forward(self, x: Tensor) -> Tensor:
        return self.second(torch.tanh(self.first(x)))


def _branch_point(model: Branchy, sign: float) -> Tensor:
    """A point whose ``h.sum()`` has the given sign (``h`` is odd in ``x``)."""
    x = torch.tensor([[0.4, -0.3, 0.7]], dtype=DTYPE)
    total = torch.tanh(model.inner(x)).sum()
    return x if total * sign > 0 else -x


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["if-branch", "else-branch"])
def test_data_dependent_branch(sign: float) -> None:
    torch.manual_seed(0)
    model = Branchy().to(DTYPE).eval()
    x = _branch_point(model, sign)
    expected = _references(model, x, ORDER)
    assert _relative_error(hope_attr.mixed_derivatives(model, x, ORDER), expected) <= 1e-12
    polynomial = hope_attr.expand(model, x[0], ORDER)
    assert _polynomial_error(polynomial, model(x)[0], expected) <= 1e-12


def test_forward_hooks() -> None:
    torch.manual_seed(1)
    model = Hooked().to(DTYPE).eval()
    x = torch.randn(3, 3, dtype=DTYPE)
    expected = _references(model, x, ORDER)  # torch.func runs the hooks too
    assert _relative_error(hope_attr.mixed_derivatives(model, x, ORDER), expected) <= 1e-12
    polynomial = hope_attr.expand(model, x[1], ORDER)
    assert _polynomial_error(polynomial, model(x[1:2])[0], [e[1:2] for e in expected]) <= 1e-12


class _ComposedLayerNorm(nn.Module):
    """LayerNorm from mean, variance and sqrt, with the original's parameters."""

    def __init__(self, original: nn.LayerNorm) -> None:
        super().__init__()
        self.original = original

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(-1, keepdim=True)
        variance = ((x - mean) ** 2).mean(-1, keepdim=True)
        normalized = (x - mean) / torch.sqrt(variance + self.original.eps)
        return normalized * self.original.weight + self.original.bias


def _reference_gpt2(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that torch.func differentiates correctly to order 3.

    Checked with torch 2.14.1: native ``layer_norm`` is wrong from order 3 under nested jacrev
    (and from order 2 under nested jacfwd; ``torch.func.hessian``, forward over reverse, is
    right at order 2), while on the composed one nested jacrev, nested jacfwd and hessian agree
    to rounding. The default SDPA attention has no forward-mode formula, so the copy uses eager
    attention (the same function). Nested jacrev is used because it is many times faster here
    than nested jacfwd.
    """
    reference = copy.deepcopy(model)
    reference.set_attn_implementation("eager")
    for parent in list(reference.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, _ComposedLayerNorm(child))
    return reference


def test_gpt2_through_inputs_embeds() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2Model(config).to(DTYPE).eval()  # default attention, as a user's
    base = torch.randn(1, 3, 8, dtype=DTYPE)
    # Three entries of the embeddings are the variables: (token, channel) = (2, 0), (2, 5), (1, 3).
    scatter = torch.zeros(3, 3, 8, dtype=DTYPE)
    scatter[torch.arange(3), torch.tensor([2, 2, 1]), torch.tensor([0, 5, 3])] = 1.0

    def last_token(network: nn.Module) -> Callable[[Tensor], Tensor]:
        def f(v: Tensor) -> Tensor:  # (B, 3) -> (B, 2)
            embeds = base + torch.einsum("bv,vtd->btd", v, scatter)
            return network(inputs_embeds=embeds).last_hidden_state[:, -1, :2]

        return f

    v = 0.3 * torch.randn(1, 3, dtype=DTYPE)
    expected = _references(last_token(_reference_gpt2(model)), v, ORDER, transform=jacrev)
    f = last_token(model)
    assert _relative_error(hope_attr.mixed_derivatives(f, v, ORDER), expected) <= 1e-12
    polynomial = hope_attr.expand(f, v[0], ORDER)
    assert _polynomial_error(polynomial, f(v)[0], expected) <= 1e-12
