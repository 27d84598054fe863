"""The methods hope_attr is timed against, and how far a result is from a reference.

Each script checks the baselines it times against hope_attr (float64, to rounding) before it
trusts their times; the functions here only compute.

* Unmixed derivatives ``d^k y_c / dx_i^k`` of every output ``c`` along every input feature ``i``
  (``benchmarks/derivatives.py``), each ``(model, x, order, features, budget) -> (order, C,
  features)`` for one example ``x`` and its first ``features`` features, checking ``budget``
  (a :class:`benchmarks._harness.Budget`) as it goes:

  - :func:`nested_jvp`: ``order`` nested ``torch.func.jvp`` along one-hot directions, vmapped
    over the directions in chunks that bound memory;
  - :func:`nested_autograd_per_feature`: the HOPE paper's baseline,
    ``torch.autograd.grad(create_graph=True)`` applied ``order`` times: once per output for the
    gradient, then a chain of ``order - 1`` further gradients for every (output, feature) pair,
    each keeping entry ``i`` of the previous gradient;
  - :func:`nested_autograd_copies`: a stronger nested-autograd baseline (not the paper's): the
    example copied once per feature into a batch; since examples are independent, the gradient
    of the sum over copies of "entry ``i`` of copy ``i``'s gradient" is the next unmixed
    derivative, so ``order`` backward passes per output cover all features.

* All mixed partials of orders ``1..n`` (``benchmarks/mixed.py``): :func:`torch_func_partials`
  (compositions of ``jacrev``/``jacfwd``, vmapped over the points; :func:`torch_func_candidates`
  lists those the benchmark tries) and :func:`nested_autograd_partials` (the paper's baseline of
  its Table 1: ``torch.autograd.grad`` of every entry of the previous derivative tensor).
* Attributions: :func:`feature_ablation` (Captum's, one feature per entry, baseline 0),
  :func:`true_perturbation` (the exact effect of moving one pixel) and :func:`gradient_map`.
* Agreement: :func:`relative_difference`, :func:`relative_error`, :func:`relative_distance`,
  :func:`spearman`.

Example:
    >>> import math
    >>> from benchmarks._harness import Budget
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh()).double()
    >>> x = torch.rand(1, 3, dtype=torch.float64)
    >>> jvp = nested_jvp(model, x, 3, 3, Budget())
    >>> autograd = nested_autograd_per_feature(model, x, 3, 3, Budget())
    >>> tuple(jvp.shape), relative_difference(jvp, autograd) < 1e-12
    ((3, 2, 3), True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import jacfwd, jacrev, vmap

from benchmarks._harness import Budget

# Memory one chunk of a batched baseline may take (directions x copies x largest activation).
CHUNK_BUDGET_BYTES = 512 * 2**20


# =============================================================================== chunks
def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def largest_activation(model: nn.Module, x: Tensor) -> int:
    """The most entries the input or any leaf module's output of ``model(x)`` has."""
    sizes = [x.numel()]
    handles = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return max(sizes)


def chunk_size(model: nn.Module, x: Tensor, copies: int) -> int:
    """Directions per chunk so that ``copies`` of the largest activation fit the chunk budget."""
    per_direction = copies * largest_activation(model, x) * x.element_size()
    return max(1, min(x[0].numel(), CHUNK_BUDGET_BYTES // per_direction))


def one_hot(x: Tensor, start: int, stop: int) -> Tensor:
    """Directions ``e_start .. e_(stop-1)`` shaped like ``x`` with the batch axis as directions."""
    eye = torch.zeros(stop - start, x[0].numel(), dtype=x.dtype)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    return eye.reshape(stop - start, *x.shape)


# =============================================================================== unmixed
def nested_jvp_function(model: nn.Module, order: int) -> Callable[[Tensor, Tensor], tuple]:
    """``(x, v) -> (f, D_v f, ..., D_v^order f)`` by ``order`` nested ``torch.func.jvp``."""

    def level0(x: Tensor, v: Tensor) -> tuple[Tensor, ...]:
        return (model(x)[0],)

    def raise_order(inner: Callable[[Tensor, Tensor], tuple]) -> Callable[[Tensor, Tensor], tuple]:
        def outer(x: Tensor, v: Tensor) -> tuple[Tensor, ...]:
            primals, tangents = torch.func.jvp(lambda y: inner(y, v), (x,), (v,))
            return (*primals, tangents[-1])

        return outer

    function = level0
    for _ in range(order):
        function = raise_order(function)
    return function


def nested_jvp(model: nn.Module, x: Tensor, order: int, features: int, budget: Budget) -> Tensor:
    function = torch.func.vmap(nested_jvp_function(model, order), in_dims=(None, 0))
    size = chunk_size(model, x, copies=4 * 2**order)
    result = None
    with torch.no_grad():
        for start, stop in chunks(features, size):
            budget.check(start, features)
            series = function(x, one_hot(x, start, stop))  # order + 1 tensors (D, C)
            block = torch.stack(series[1:]).transpose(1, 2)
            if result is None:
                result = x.new_zeros(order, block.shape[1], features)
            result[..., start:stop] = block
    return result


def _gradient(value: Tensor, x: Tensor, keep_graph: bool) -> Tensor:
    """``d value / d x`` flattened per example; zeros where ``value`` no longer depends on x."""
    if not value.requires_grad:
        return x.new_zeros(x.shape[0], x[0].numel())
    (grad,) = torch.autograd.grad(value, x, create_graph=keep_graph, retain_graph=True)
    return grad.reshape(x.shape[0], -1)


def nested_autograd_per_feature(
    model: nn.Module, x: Tensor, order: int, features: int, budget: Budget
) -> Tensor:
    x = x.detach().clone().requires_grad_()
    output = model(x)[0]
    outputs = len(output)
    result = x.new_zeros(order, outputs, features)
    for c in range(outputs):
        first = _gradient(output[c], x, keep_graph=order > 1)[0]
        result[0, c] = first[:features].detach()
        for i in range(features):
            budget.check(c * features + i, outputs * features)
            value = first[i]
            for k in range(1, order):
                value = _gradient(value, x, keep_graph=k < order - 1)[0, i]
                result[k, c, i] = value.detach()
    return result


def nested_autograd_copies(
    model: nn.Module, x: Tensor, order: int, features: int, budget: Budget
) -> Tensor:
    size = chunk_size(model, x, copies=4 * 2**order)  # nested graphs grow about 2^order
    result = None
    for start, stop in chunks(features, size):
        copies = x.detach().expand(stop - start, *x.shape[1:]).clone().requires_grad_()
        output = model(copies)
        outputs = output.shape[1]
        if result is None:
            result = x.new_zeros(order, outputs, features)
        own = (torch.arange(stop - start), torch.arange(start, stop))  # copy d moves feature d
        for c in range(outputs):
            budget.check(start * outputs + c * (stop - start), features * outputs)
            value = output[:, c].sum()
            for k in range(order):
                diagonal = _gradient(value, copies, keep_graph=k < order - 1)[own]
                result[k, c, start:stop] = diagonal.detach()
                value = diagonal.sum()
    return result


# =============================================================================== mixed
def torch_func_partials(
    model: nn.Module, transforms: tuple[str, ...] | None, chunk: int | None
) -> Callable[..., list[Tensor]]:
    """``x (B, p) -> [gradient, Hessian, third] (B, O, p, ...)`` by a ``torch.func`` composition.

    ``transforms`` names the innermost to outermost Jacobian (``"rev"``/``"fwd"``); each outer one
    returns the inner results as ``has_aux``, so one call yields all orders. ``None``: the usual
    three separate calls (``jacrev``, ``jacfwd(jacrev)``, ``jacfwd(jacfwd(jacrev))``). ``chunk``:
    points per vmap call. The function returned takes an optional :class:`Budget`.
    """
    single = lambda z: model(z.unsqueeze(0))[0]
    jac = {"rev": jacrev, "fwd": jacfwd}

    if transforms is None:
        first = jacrev(single)
        second = jacfwd(first)
        functions = [vmap(first), vmap(second), vmap(jacfwd(second))]

        def per_chunk(x: Tensor) -> list[Tensor]:
            return [f(x) for f in functions]

    else:
        inner, middle, outer = (jac[t] for t in transforms)

        def d1(z: Tensor) -> tuple[Tensor, tuple[Tensor]]:
            g = inner(single)(z)
            return g, (g,)

        def d2(z: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
            h, (g,) = middle(d1, has_aux=True)(z)
            return h, (g, h)

        def d3(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            t, (g, h) = outer(d2, has_aux=True)(z)
            return g, h, t

        batched = vmap(d3)

        def per_chunk(x: Tensor) -> list[Tensor]:
            return list(batched(x))

    def run(x: Tensor, budget: Budget | None = None) -> list[Tensor]:
        size = chunk or x.shape[0]
        parts = []
        with torch.no_grad():
            for start in range(0, x.shape[0], size):
                if budget is not None:
                    budget.check(start, x.shape[0])
                parts.append(per_chunk(x[start : start + size]))
        return [torch.cat(tensors) for tensors in zip(*parts, strict=True)]

    return run


Candidate = tuple[str, tuple[str, ...] | None, int | None]  # name, transforms, chunk


def torch_func_candidates(quick: bool) -> list[Candidate]:
    """The compositions of :func:`torch_func_partials` a benchmark tries, named: the usual three
    calls, then orders of ``jacrev``/``jacfwd`` with aux, over all points or chunks of 1000."""
    orders = [("rev", "fwd", "fwd"), ("rev", "rev", "fwd")]
    if not quick:
        orders += [("rev", "fwd", "rev"), ("rev", "rev", "rev"), ("fwd", "fwd", "fwd")]
    result: list[Candidate] = [
        ("jacrev; jacfwd(jacrev); jacfwd(jacfwd(jacrev)), 3 calls", None, None)
    ]
    for transforms in orders:
        name = "jac" + "(jac".join(reversed(transforms)) + "(f" + ")" * len(transforms)
        for chunk in (None, 1000) if not quick else (None,):
            where = "all points" if chunk is None else f"chunks of {chunk}"
            result.append((f"{name} with aux, {where}", transforms, chunk))
    return result


def nested_autograd_partials(
    model: nn.Module, x0: Tensor, order: int, budget: Budget | None
) -> list[Tensor]:
    """All partials of orders ``1..order`` of output 0 at one point ``x0 (p,)``, each
    ``(1, 1, p, ..., p)``: ``torch.autograd.grad`` of every entry of the previous tensor.

    Order ``k`` takes ``p^(k-1)`` backward passes through graphs that grow with ``k``.
    """
    p = x0.numel()
    total = sum(p**k for k in range(order))  # backward passes
    done = 0
    x = x0.detach().clone().requires_grad_()
    entries = [model(x[None])[0, 0]]
    tensors = []
    for k in range(1, order + 1):
        following = []
        for entry in entries:
            if budget is not None:
                budget.check(done, total)
            if entry.requires_grad:
                (gradient,) = torch.autograd.grad(
                    entry, x, create_graph=k < order, retain_graph=True
                )
            else:  # an earlier derivative was constant: all further ones vanish
                gradient = torch.zeros_like(x)
            following.extend(gradient.unbind())
            done += 1
        tensors.append(torch.stack(following).detach().reshape([1, 1] + [p] * k))
        entries = following
    return tensors


# =============================================================================== attributions
def feature_ablation(
    model: nn.Module, perturbations_per_eval: int | None = None
) -> Callable[[Tensor], Tensor]:
    """Captum's ``FeatureAblation`` of class 0, one feature per input entry, baseline 0,
    ``perturbations_per_eval`` ablated images per forward (default: every feature at once)."""
    from captum.attr import FeatureAblation

    ablation = FeatureAblation(model)

    def attribute(x: Tensor) -> Tensor:
        per_eval = perturbations_per_eval or x[0].numel()
        return ablation.attribute(x, baselines=0, target=0, perturbations_per_eval=per_eval)

    return attribute


def true_perturbation(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """``f_target(x + e_i) - f_target(x)`` for every pixel ``i`` of an image ``(1, *I)``: ``*I``."""
    features = x[0].numel()
    steps = torch.eye(features, dtype=x.dtype).reshape(features, *x.shape[1:])
    with torch.no_grad():
        moved = model(x + steps)[:, target]
        return (moved - model(x)[0, target]).reshape(x.shape[1:])


def gradient_map(model: nn.Module, x: Tensor, target: int) -> Tensor:
    """``d f_target / d x`` of an image ``(1, *I)``: ``*I``."""
    x = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x)[0, target], x)
    return grad[0]


# =============================================================================== agreement
def relative_difference(result: Tensor, reference: Tensor) -> float:
    """Largest over orders (the first axis) of ``||result_k - reference_k|| / ||reference_k||``."""
    result, reference = result.double(), reference.double()
    errors = [
        (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300)).item()
        for a, b in zip(result, reference, strict=True)
    ]
    return max(errors)


def relative_error(actual: list[Tensor], expected: list[Tensor]) -> float:
    """Largest over orders of ``max |a - e| / max |e|`` (float64)."""
    errors = []
    for a, e in zip(actual, expected, strict=True):
        a, e = a.double(), e.double()
        errors.append(((a - e).abs().max() / e.abs().max().clamp_min(1e-300)).item())
    return max(errors)


def relative_distance(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of the entries of ``a`` and ``b``."""
    from scipy.stats import spearmanr

    return float(
        spearmanr(a.detach().reshape(-1).numpy(), b.detach().reshape(-1).numpy()).statistic
    )
