"""Reverse mode for locally affine models and order 1 (hope_attr.engine.reverse).

References are independent of the engine: ``torch.func.jacrev`` / ``jvp`` in float64, and the
engine's own forward jets with reverse mode switched off.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr import HOPEAttribution
from hope_attr.engine import reverse as _reverse


@pytest.fixture
def backward_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many outputs each reverse-mode computation differentiated (a spy on
    ``_reverse.jacobian_rows``); empty when the expansion kept jets."""
    counts: list[int] = []
    rows = _reverse.jacobian_rows

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = rows(*args, **kwargs)
        if result is not None:
            counts.append(result[0].shape[0])
        return result

    monkeypatch.setattr(_reverse, "jacobian_rows", spy)
    return counts


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.norm(self.conv(x)))


def _relu_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), _Residual(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(48, 5),
    ).double()  # fmt: skip
    model.train()
    with torch.no_grad():  # batch statistics that are not the identity
        for _ in range(3):
            model(torch.randn(8, 1, 8, 8, dtype=torch.float64))
    return model.eval()


def _per_example_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, *O, *I)`` from ``torch.func.jacrev`` on each example alone."""
    rows = [torch.func.jacrev(lambda e: model(e.unsqueeze(0))[0])(e) for e in x]
    return torch.stack(rows)


def test_a_relu_network_gets_its_jacobian_by_reverse_mode(backward_passes) -> None:
    model = _relu_net()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    derivatives = hope_attr.unmixed_derivatives(model, x, order=3, directions_per_chunk=4)
    assert backward_passes == [5]  # one per output class, not one jet per pixel
    torch.testing.assert_close(derivatives[0], _per_example_jacobian(model, x))
    assert (derivatives[1:] == 0).all()


def test_reverse_mode_equals_the_jets_it_replaces(policy, backward_passes) -> None:
    model = _relu_net()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    mask = torch.arange(64).reshape(1, 1, 8, 8) // 4  # 16 groups of 4 pixels
    hope = HOPEAttribution(model, order=4)
    with pytest.warns(hope_attr.PiecewiseLinearWarning):
        fast = hope.attribute_all_targets(x, feature_mask=mask, directions_per_chunk=2)
    fast_pixels = hope.attribute(x, target=[0, 4, 2], directions_per_chunk=8)
    assert backward_passes == [5, 1]  # all classes; then one target per example
    policy(reverse_mode=False)
    hope = HOPEAttribution(model, order=4)
    with pytest.warns(hope_attr.PiecewiseLinearWarning):
        jets = hope.attribute_all_targets(x, feature_mask=mask, directions_per_chunk=2)
    jets_pixels = hope.attribute(x, target=[0, 4, 2], directions_per_chunk=8)
    torch.testing.assert_close(fast, jets, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_pixels, jets_pixels, rtol=1e-12, atol=1e-12)


def test_one_target_with_superpixels_is_one_backward_pass(backward_passes) -> None:
    model = _relu_net()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    mask = torch.arange(64).reshape(1, 1, 8, 8) // 16  # 4 groups
    target = [3, 1]
    with pytest.warns(hope_attr.PiecewiseLinearWarning):
        actual, diagnostics = HOPEAttribution(model, order=4).attribute(
            x, target=target, feature_mask=mask, directions_per_chunk=1, return_diagnostics=True
        )
    assert backward_passes == [1]
    # A piecewise-linear net moves each group by its directional derivative (first order).
    for g in range(4):
        direction = -(mask == g).to(x.dtype).expand_as(x) * x
        _, slope = torch.func.jvp(model, (x,), (direction,))
        expected = -slope[torch.arange(2), target]
        in_group = (mask == g).expand_as(x)
        torch.testing.assert_close(actual[in_group].reshape(2, -1)[:, 0], expected)
    # No order >= 2: no truncation error, and an infinite radius (a polynomial).
    assert (diagnostics.error == 0).all() and diagnostics.converged.all()
    assert torch.isinf(diagnostics.radius).all()


def test_order_one_of_a_smooth_model_is_its_gradient(backward_passes) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2)).double().eval()
    x = torch.randn(3, 12, dtype=torch.float64)
    derivatives = hope_attr.unmixed_derivatives(model, x, order=1, directions_per_chunk=3)
    assert backward_passes == [2]
    torch.testing.assert_close(derivatives[0], _per_example_jacobian(model, x))


def test_a_smooth_model_above_order_one_keeps_jets(backward_passes) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 2)).double().eval()
    x = torch.randn(3, 12, dtype=torch.float64)
    derivatives = hope_attr.unmixed_derivatives(model, x, order=2, directions_per_chunk=3)
    assert backward_passes == []
    assert derivatives[1].abs().amax() > 0.01


def test_one_chunk_or_more_outputs_than_directions_keeps_jets(backward_passes) -> None:
    model = _relu_net()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    hope_attr.unmixed_derivatives(model, x, order=2)  # all 64 directions in one chunk
    mask = torch.arange(64).reshape(1, 1, 8, 8) // 8  # 8 groups, 5 outputs: 10 > 8
    with pytest.warns(hope_attr.PiecewiseLinearWarning):
        HOPEAttribution(model).attribute_all_targets(x, feature_mask=mask, directions_per_chunk=1)
    assert backward_passes == []


class _DoubledGradient(nn.Module):
    """The identity, whose gradient a tensor hook doubles (a surrogate-gradient trick): autograd
    no longer computes the derivative of the forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1.0
        if y.requires_grad:
            y.register_hook(lambda grad: 2 * grad)
        return y


def test_gradients_that_differ_from_the_derivative_fall_back_to_jets(backward_passes) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), _DoubledGradient(), nn.Linear(4, 3))
    model = model.double().eval()
    x = torch.randn(2, 10, dtype=torch.float64)
    with pytest.warns(hope_attr.ReverseModeWarning, match="not the derivative"):
        derivatives = hope_attr.unmixed_derivatives(model, x, order=2, directions_per_chunk=2)
    assert backward_passes == []  # the first row disagreed with the probe's J v
    undoubled = nn.Sequential(*list(model)[:2], list(model)[3])
    torch.testing.assert_close(derivatives[0], _per_example_jacobian(undoubled, x))


def test_a_module_backward_hook_keeps_jets(backward_passes) -> None:
    model = _relu_net()
    handle = model[-1].register_full_backward_hook(lambda module, grad_in, grad_out: None)
    try:
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        hope_attr.unmixed_derivatives(model, x, order=2, directions_per_chunk=4)
    finally:
        handle.remove()
    assert backward_passes == []


def test_tuple_inputs_share_the_backward_passes(backward_passes) -> None:
    torch.manual_seed(3)

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 4), nn.Linear(3, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.a(x) + self.b(y))[:, :2]

    model = TwoInputs().double().eval()
    x, y = torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    dx, dy = hope_attr.unmixed_derivatives(model, (x, y), order=2, directions_per_chunk=2)
    assert backward_passes == [2]
    jx, jy = torch.func.vmap(
        torch.func.jacrev(lambda a, b: model(a[None], b[None])[0], argnums=(0, 1))
    )(x, y)
    torch.testing.assert_close(dx[0], jx)
    torch.testing.assert_close(dy[0], jy)


def test_the_progress_bar_counts_every_direction(monkeypatch, backward_passes) -> None:
    from hope_attr.engine import expansion as _derivatives

    seen: list[int] = []
    expansion = _derivatives.Expansion(
        _relu_net(), torch.randn(1, 1, 8, 8, dtype=torch.float64), 2, directions_per_chunk=4
    )
    expansion.unmixed_coefficients(on_chunk=seen.append)
    assert backward_passes == [5] and sum(seen) == 64 and len(seen) == 5


def test_reverse_mode_leaves_the_model_as_it_was(backward_passes) -> None:
    model = _relu_net()
    model[0].weight.requires_grad_(False)
    before = {name: (p.requires_grad, p.clone()) for name, p in model.named_parameters()}
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    hope_attr.unmixed_derivatives(model, x, order=2, directions_per_chunk=4)
    assert backward_passes == [5]
    for name, p in model.named_parameters():
        assert p.requires_grad == before[name][0] and p.grad is None
        torch.testing.assert_close(p, before[name][1], rtol=0, atol=0)
    assert not x.requires_grad
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_row_agrees_rejects_a_scaled_gradient() -> None:
    torch.manual_seed(4)
    grad = torch.randn(3, 5)
    v = torch.randn(3, 5)
    jvp = (grad * v).sum(1)
    assert _reverse.row_agrees([grad], [v], jvp)
    assert _reverse.row_agrees([grad], [v], jvp * (1 + 1e-6))  # rounding
    assert not _reverse.row_agrees([2 * grad], [v], jvp)
    assert not _reverse.row_agrees([grad], [v], jvp + 1e-2 * (grad * v).abs().sum(1))


@pytest.mark.parametrize(
    ("family", "affine"),
    [("resnet", True), ("mobilenet_v2", True), ("densenet", True), ("mobilenet_v3", False)],
)
def test_torchvision_families(family: str, affine: bool, backward_passes) -> None:
    """ReLU/ReLU6 networks (residual adds, concatenation, BatchNorm) take reverse mode and give
    their Jacobian; hardswish is piecewise quadratic, so MobileNetV3 keeps jets."""
    pytest.importorskip("torchvision")
    from hope_attr.engine.expansion import Expansion
    from tests.test_zoo import _image, _realistic, _tiny_builders

    model, size = _tiny_builders()[family]()
    x = _image(size).repeat(2, 1, 1, 1) + torch.randn(2, 1, 1, 1, dtype=torch.float64)
    model = _realistic(model, x[:1])
    expansion = Expansion(model, x, order=2, directions_per_chunk=64)
    if not affine:
        assert expansion._reverse_rows(x[0].numel(), None) is None
        return
    coefficients = expansion.unmixed_coefficients()[0]
    assert backward_passes == [10]
    torch.testing.assert_close(coefficients[0], _per_example_jacobian(model, x))
    assert (coefficients[1] == 0).all()


class _Shifted(nn.Module):
    """A ReLU network with a per-example additional argument (batch first) and a scalar one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: float) -> torch.Tensor:
        return self.body(x + shift) * scale


def test_the_batch_runs_in_slices_that_fit_the_graph_budget(policy, backward_passes):
    """Per-example targets and batch-first extra arguments stay aligned with their examples."""
    from hope_attr.engine import expansion as _derivatives

    model = _Shifted().double().eval()
    x = torch.randn(3, 10, dtype=torch.float64)
    shift = torch.randn(3, 10, dtype=torch.float64)
    target = [2, 0, 3]
    seen: list[int] = []
    with hope_attr.resources(graph_budget_bytes=1):  # one example per slice
        expansion = _derivatives.Expansion(
            model, x, 2, (shift, 0.5), directions_per_chunk=2,
            select=lambda values: values[:, torch.arange(3), target],
        )  # fmt: skip
    coefficients = expansion.unmixed_coefficients(on_chunk=seen.append)[0]
    assert backward_passes == [1] and sum(seen) == 10 and len(seen) == 3  # 3 slices
    for b in range(3):
        row = torch.func.jacrev(lambda e, s=shift[b : b + 1]: model(e[None], s, 0.5)[0])(x[b])
        torch.testing.assert_close(coefficients[0, b], row[target[b]])
    with pytest.warns(hope_attr.PiecewiseLinearWarning):
        sliced = HOPEAttribution(model).attribute(
            x, target=target, additional_forward_args=(shift, 0.5), directions_per_chunk=2
        )
    policy(reverse_mode=False)
    jets = HOPEAttribution(model).attribute(
        x, target=target, additional_forward_args=(shift, 0.5), directions_per_chunk=2
    )
    torch.testing.assert_close(sliced, jets, rtol=1e-12, atol=1e-12)


def test_a_hook_on_a_wrapped_model_is_caught_by_the_check(backward_passes) -> None:
    """A function wrapping the model hides its modules' hooks from the structural test: the
    gradient check still sees a gradient scaled by 1.1 (a float32 resnet-sized input: the
    rounding the check allows grows with the features)."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3 * 64 * 64, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    handle = model[1].register_full_backward_hook(lambda m, gi, go: (1.1 * gi[0],))
    x = torch.randn(2, 3 * 64 * 64)
    try:
        with pytest.warns(hope_attr.ReverseModeWarning):
            actual = hope_attr.unmixed_derivatives(
                lambda t: model(t), x, order=1, directions_per_chunk=1024
            )
    finally:
        handle.remove()
    assert backward_passes == []
    torch.testing.assert_close(actual[0], _per_example_jacobian(model, x), rtol=1e-4, atol=1e-6)


def test_an_output_specific_edit_keeps_the_progress_count(backward_passes) -> None:
    """Rows accepted before a later one is refused are not counted twice by the jets."""

    class EditsClassTwo(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.requires_grad:
                mask = torch.tensor([1.0, 1.0, 3.0, 1.0], dtype=x.dtype)
                x.register_hook(lambda grad: grad * mask)
            return x * 1.0

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(12, 4), nn.ReLU(), EditsClassTwo()).double().eval()
    with torch.no_grad():
        model[0].bias.add_(10.0)  # every unit active: class 2's gradient goes through the edit
    seen: list[int] = []
    from hope_attr.engine import expansion as _derivatives

    expansion = _derivatives.Expansion(
        model, torch.randn(1, 12, dtype=torch.float64), 2, directions_per_chunk=2
    )
    with pytest.warns(hope_attr.ReverseModeWarning, match="output 2"):
        expansion.unmixed_coefficients(on_chunk=seen.append)
    assert backward_passes == [] and sum(seen) == 12


def test_inside_inference_mode(backward_passes) -> None:
    model = _relu_net()
    with torch.inference_mode():
        x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
        derivatives = hope_attr.unmixed_derivatives(model, x, order=2, directions_per_chunk=4)
    assert backward_passes == [5]
    torch.testing.assert_close(derivatives[0], _per_example_jacobian(model, x.clone()))


def test_an_integer_cast_is_a_step_with_zero_derivative(policy) -> None:
    """Quantizing through ``.to(torch.int64)`` is constant between its jumps: zero derivatives
    (the jets used to pass the series through the cast)."""
    policy(reverse_mode=False)

    class Quantized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            steps = (x * 10).to(torch.int64).to(x.dtype) / 10
            return self.linear(steps) + x.sum(1, keepdim=True)

    model = Quantized().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    derivatives = hope_attr.unmixed_derivatives(model, x, order=2)
    torch.testing.assert_close(derivatives[0], torch.ones(3, 2, 4, dtype=torch.float64))
    assert (derivatives[1] == 0).all()


def test_per_example_tensors_inside_containers_follow_their_slice(policy, backward_passes) -> None:
    """Reverse mode runs slices of the batch: a per-example tensor inside a list of additional
    arguments must be sliced with them (issue 30: such arguments used to be refused)."""
    torch.manual_seed(0)
    lin = nn.Linear(32, 2).double()

    def model(x: torch.Tensor, extra: list) -> torch.Tensor:
        return torch.relu(lin(x * extra[1] + extra[0]))

    x = torch.randn(3, 32, dtype=torch.float64)
    extra = [torch.randn(3, 32, dtype=torch.float64), 0.5]
    policy(graph_budget_bytes=1, directions_per_chunk=4)  # one example per slice
    with warnings.catch_warnings():  # a wrongly sliced argument would fall back to jets, warning
        warnings.simplefilter("error", hope_attr.ReverseModeWarning)
        derivatives = hope_attr.unmixed_derivatives(model, x, 2, additional_forward_args=(extra,))
    assert backward_passes
    for b in range(3):
        row = torch.func.jacrev(lambda e, b=b: model(e[None], [extra[0][b : b + 1], 0.5])[0])(x[b])
        torch.testing.assert_close(derivatives[0, b], row)
    assert torch.all(derivatives[1] == 0)
