"""HOPEAttribution against Captum itself: FeatureAblation, InputXGradient, and Captum's tooling."""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import pytest
import torch
from captum.attr import FeatureAblation, InputXGradient, NoiseTunnel, visualization
from captum.metrics import infidelity, sensitivity_max
from torch import nn

import hope_attr
from hope_attr import HOPEAttribution
from tests.oracle import directional_reference, unmixed_reference

matplotlib.use("Agg")


def _smooth_mlp() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Sigmoid(), nn.Linear(6, 3))
        .double()
        .eval()
    )


@pytest.fixture
def point() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = 0.5 * torch.randn(4, 5, dtype=torch.float64, generator=generator)
    # |b - x| small enough to sit inside the radius of convergence of this net.
    return x, x + 0.3 * torch.randn(4, 5, dtype=torch.float64, generator=generator)


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def test_converges_to_feature_ablation(point) -> None:
    model = _smooth_mlp()
    x, b = point
    expected = FeatureAblation(model).attribute(x, baselines=b, target=1)
    errors = [
        _relative(HOPEAttribution(model, order=n).attribute(x, baselines=b, target=1), expected)
        for n in (1, 4, 8, 16)
    ]
    assert errors == sorted(errors, reverse=True), errors  # more orders, closer to Captum
    assert errors[-1] < 1e-6


def test_feature_mask_groups_match_feature_ablation(point) -> None:
    model = _smooth_mlp()
    x, b = point
    mask = torch.tensor([[0, 0, 1, 2, 2]])
    target = [0, 1, 2, 0]
    expected = FeatureAblation(model).attribute(x, baselines=b, target=target, feature_mask=mask)
    actual = HOPEAttribution(model, order=16).attribute(
        x, baselines=b, target=target, feature_mask=mask
    )
    assert _relative(actual, expected) < 1e-6


def test_tuple_inputs_with_and_without_cross_input_groups(point) -> None:
    model = _smooth_mlp()

    def forward(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return model(torch.cat([a, c], dim=1))

    x, b = point
    inputs, baselines = (x[:, :2], x[:, 2:]), (b[:, :2], b[:, 2:])
    for mask in (None, (torch.tensor([[0, 1]]), torch.tensor([[1, 2, 0]]))):
        expected = FeatureAblation(forward).attribute(
            inputs, baselines=baselines, target=1, feature_mask=mask
        )
        actual = HOPEAttribution(forward, order=16).attribute(
            inputs, baselines=baselines, target=1, feature_mask=mask
        )
        assert isinstance(actual, tuple) and len(actual) == 2
        for a, e in zip(actual, expected, strict=True):
            assert a.shape == e.shape
            assert _relative(a, e) < 1e-6


def test_grouped_orders_and_all_targets_against_feature_ablation_on_a_cubic() -> None:
    """With a feature mask the terms stay per group until asked for: every layout agrees.

    A cubic has an exact order-3 series, so each group's attribution is FeatureAblation's.
    """

    def cubic(x: torch.Tensor) -> torch.Tensor:
        a, c, d = x[:, 0], x[:, 1], x[:, 2] + x[:, 3]
        return torch.stack([a * c * d + d**3, a**2 - c * d, a + c + d], dim=1)

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    b = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    mask = torch.tensor([[0, 1, 2, 2]])
    method = HOPEAttribution(cubic, order=3)
    every, every_orders = method.attribute_all_targets(
        x, baselines=b, feature_mask=mask, return_orders=True
    )
    assert every.shape == (3, 3, 4) and every_orders.shape == (3, 3, 3, 4)
    torch.testing.assert_close(every_orders.sum(0), every)
    for c in range(3):
        expected = FeatureAblation(cubic).attribute(x, baselines=b, target=c, feature_mask=mask)
        one, orders = method.attribute(
            x, baselines=b, target=c, feature_mask=mask, return_orders=True
        )
        torch.testing.assert_close(one, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(every[:, c], one)
        torch.testing.assert_close(orders, every_orders[:, :, c])
        assert torch.equal(orders[..., 2], orders[..., 3])  # a group's term on each feature


def test_order_one_is_input_x_gradient(point) -> None:
    model = _smooth_mlp()
    x, _ = point
    expected = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=2)
    actual = HOPEAttribution(model, order=1).attribute(x, target=2)
    torch.testing.assert_close(actual, expected.detach(), rtol=1e-12, atol=1e-14)


def test_orders_sum_to_attribution_and_all_targets_match(point) -> None:
    model = _smooth_mlp()
    x, b = point
    method = HOPEAttribution(model, order=5)
    attribution, orders = method.attribute(x, baselines=b, target=2, return_orders=True)
    assert orders.shape == (5, *x.shape)
    torch.testing.assert_close(orders.sum(0), attribution)
    everything = method.attribute_all_targets(x, baselines=b)
    assert everything.shape == (4, 3, 5)
    for c in range(3):
        torch.testing.assert_close(everything[:, c], method.attribute(x, baselines=b, target=c))


def test_convergence_delta_is_completeness_gap(point) -> None:
    model = _smooth_mlp()
    x, b = point
    attribution, delta = HOPEAttribution(model, order=8).attribute(
        x, baselines=b, target=0, return_convergence_delta=True
    )
    with torch.no_grad():
        gap = model(x)[:, 0] - model(b)[:, 0]
    torch.testing.assert_close(delta, attribution.sum(1) - gap)
    # An additive model has no interactions: completeness holds up to truncation.
    additive = lambda z: (torch.sin(z) + z**2).sum(1, keepdim=True)  # noqa: E731
    _, delta = HOPEAttribution(additive, order=12).attribute(
        x, baselines=b, return_convergence_delta=True
    )
    assert delta.abs().max() < 1e-9


def test_paper_heat_map_is_predicted_change(point) -> None:
    model = _smooth_mlp()
    x, _ = point
    # The paper's Eq. 77 with dx = 1: sum_k d^k y / k! * 1^k, from the derivatives directly.
    derivatives = hope_attr.unmixed_derivatives(model, x, 6)[:, :, 1]
    factorials = torch.tensor([1, 2, 6, 24, 120, 720], dtype=torch.float64)
    expected = (derivatives / factorials.reshape(6, 1, 1)).sum(0)
    actual = HOPEAttribution(model, order=6).paper_heat_map(x, target=1)
    torch.testing.assert_close(actual, expected)


def test_noise_tunnel_metrics_and_visualizer_accept_the_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    ).eval()
    images = torch.rand(2, 1, 6, 6)
    method = HOPEAttribution(model, order=3)
    for nt_type in ("smoothgrad", "vargrad"):
        smoothed = NoiseTunnel(method).attribute(
            images, nt_type=nt_type, nt_samples=3, stdevs=0.05, target=[0, 2], baselines=0.0
        )
        assert smoothed.shape == images.shape
    attributions, delta = NoiseTunnel(method).attribute(
        images, nt_samples=2, target=1, return_convergence_delta=True, nt_samples_batch_size=2
    )
    assert delta.shape == (4,)  # Captum concatenates the deltas of its samples

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = 0.01 * torch.randn_like(inputs)
        return noise, inputs - noise

    attributions = method.attribute(images, target=1)
    assert infidelity(model, perturb, images, attributions, target=1).shape == (2,)
    assert sensitivity_max(method.attribute, images, target=1, n_perturb_samples=2).shape == (2,)
    heat_map = attributions[0].permute(1, 2, 0).numpy()
    figure, _ = visualization.visualize_image_attr(
        heat_map, method="heat_map", sign="all", use_pyplot=False
    )
    assert figure is not None


def test_bad_arguments_raise_clear_errors(point) -> None:
    model = _smooth_mlp()
    x, _ = point
    method = HOPEAttribution(model, order=2)
    with pytest.raises(ValueError, match="does not broadcast"):
        method.attribute(x, baselines=torch.zeros(3, 5, dtype=torch.float64), target=0)
    with pytest.raises(ValueError, match="out of range"):
        method.attribute(x, target=3)
    with pytest.raises(ValueError, match="pass target"):
        method.attribute(x)
    with pytest.raises(ValueError, match="0..G-1"):
        method.attribute(x, target=0, feature_mask=torch.tensor([[0, 0, 2, 2, 3]]))
    with pytest.raises(ValueError, match="order"):
        HOPEAttribution(model, order=0)
    with pytest.raises(ValueError, match="method"):
        HOPEAttribution(model, method="fast")


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"baselines": "zero"}, TypeError, r"baselines\[0\] must be a number or a tensor"),
        ({"baselines": (0.0, 1.0)}, ValueError, "got 2 baselines for 1 inputs"),
        ({"baselines": float("nan")}, ValueError, "NaN or Inf"),
        ({"feature_mask": torch.zeros(1, 5)}, TypeError, "integer tensor of group ids"),
        ({"feature_mask": torch.zeros(1, 4, dtype=torch.long)}, ValueError, "does not broadcast"),
        ({"target": [0, 1]}, ValueError, "2 entries for a batch of 4"),
        ({"target": (0, 1)}, ValueError, "indexes 2 output axes"),
        ({"target": torch.tensor([0.0])}, TypeError, "must hold integers"),
        ({"feature_mask": torch.tensor([[0, -1, 1, 1, 2]])}, ValueError, "negative id -1"),
    ],
)
def test_captum_arguments_that_do_not_fit_name_the_fix(point, arguments, error, match) -> None:
    """Where Captum's own helpers would assert (or index out of bounds), a typed error."""
    x, _ = point
    arguments = {"target": 0, **arguments}
    with pytest.raises(error, match=match):
        HOPEAttribution(_smooth_mlp(), order=2).attribute(x, **arguments)
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        HOPEAttribution(_smooth_mlp(), order=2).attribute([x], target=0)


def test_attribute_with_details_against_nested_jvp_and_the_model(point) -> None:
    """Each field against its own reference: the terms are ``-f^(k)/k! (b - x)^k`` by nested
    jvp, the delta is the completeness gap of the model's own outputs."""
    model = _smooth_mlp()
    x, b = point
    order, target = 6, 1
    method = HOPEAttribution(model, order=order)
    result = method.attribute_with_details(x, baselines=b, target=target)
    derivatives = unmixed_reference(model, x, order)[:, :, target]  # (n, B, I)
    k = torch.arange(1, order + 1, dtype=x.dtype).reshape(order, 1, 1)
    factorials = torch.tensor([math.factorial(i) for i in range(1, order + 1)], dtype=x.dtype)
    expected_terms = -derivatives / factorials.reshape(order, 1, 1) * (b - x) ** k
    torch.testing.assert_close(result.terms, expected_terms, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.attributions, expected_terms.sum(0), rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        gap = model(x)[:, target] - model(b)[:, target]
    torch.testing.assert_close(result.convergence_delta, expected_terms.sum((0, 2)) - gap)
    # The truncation error estimate is the larger of the last two terms (the target's alone).
    last_two = expected_terms[-2:].abs().amax(0)
    torch.testing.assert_close(result.diagnostics.error, last_two, rtol=1e-10, atol=1e-14)
    assert (result.diagnostics.radius > 1).all() and result.diagnostics.steps is None
    # The flags of attribute() return the same values, by position.
    flags = method.attribute(
        x, baselines=b, target=target, return_orders=True, return_convergence_delta=True,
        return_diagnostics=True,
    )  # fmt: skip
    torch.testing.assert_close(
        flags[:3], (result.attributions, result.terms, result.convergence_delta)
    )
    torch.testing.assert_close(flags[3].radius, result.diagnostics.radius)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.terms = None  # type: ignore[misc]


def test_attribute_with_details_of_tuple_inputs_and_groups() -> None:
    """Groups across two inputs of a cubic (order 3 is exact): FeatureAblation's values, and
    each group's terms by nested jvp along the group's move."""

    def cubic(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.stack([a[:, 0] * a[:, 1] * c[:, 0] + c[:, 1] ** 3, a[:, 0] ** 2 - c.sum(1)], 1)

    generator = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    b = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    inputs, baselines = (x[:, :2], x[:, 2:]), (b[:, :2], b[:, 2:])
    masks = (torch.tensor([[0, 1]]), torch.tensor([[1, 2]]))
    result = HOPEAttribution(cubic, order=3).attribute_with_details(
        inputs, baselines=baselines, target=0, feature_mask=masks
    )
    expected = FeatureAblation(cubic).attribute(
        inputs, baselines=baselines, target=0, feature_mask=masks
    )
    assert isinstance(result.attributions, tuple) and isinstance(result.terms, tuple)
    for actual, reference in zip(result.attributions, expected, strict=True):
        torch.testing.assert_close(actual, reference, rtol=1e-12, atol=1e-12)
    flat_mask = torch.cat(masks, 1).expand_as(x)
    whole = lambda z: cubic(z[:, :2], z[:, 2:])[:, 0]  # noqa: E731
    for group in range(3):
        move = (flat_mask == group).to(x.dtype) * (b - x)
        for k in range(1, 4):
            term = -directional_reference(whole, x, move, k) / math.factorial(k)  # (B,)
            actual = torch.cat([t[k - 1] for t in result.terms], 1)  # (B, 4)
            torch.testing.assert_close(actual[flat_mask == group].reshape(3, -1)[:, 0], term)
    with torch.no_grad():
        gap = cubic(*inputs)[:, 0] - cubic(*baselines)[:, 0]
    per_group = torch.stack([expected[0][:, 0], expected[0][:, 1], expected[1][:, 1]], 1)
    torch.testing.assert_close(result.convergence_delta, per_group.sum(1) - gap)


def test_internal_batch_size_is_the_old_name_of_directions_per_chunk(point, chunk_sizes) -> None:
    model = _smooth_mlp()
    x, b = point
    method = HOPEAttribution(model, order=3)
    new = method.attribute(x, baselines=b, target=0, directions_per_chunk=2)
    assert chunk_sizes == [2, 2, 1]  # 5 features
    with pytest.warns(FutureWarning, match="directions_per_chunk"):
        old = method.attribute(x, baselines=b, target=0, internal_batch_size=2)
    with pytest.warns(FutureWarning, match="directions_per_chunk"):
        method.attribute_all_targets(x, baselines=b, internal_batch_size=2)
    assert chunk_sizes == [2, 2, 1] * 3
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    with pytest.raises(TypeError, match="directions_per_chunk only"):
        method.attribute(x, target=0, directions_per_chunk=2, internal_batch_size=2)


def test_model_is_unchanged_after_attribution(point) -> None:
    model = _smooth_mlp()
    x, b = point
    before = {name: value.clone() for name, value in model.state_dict().items()}

    def flags() -> tuple[list[bool], list[bool]]:
        return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]

    flags_before = flags()
    HOPEAttribution(model, order=3).attribute(x, baselines=b, target=0, feature_mask=None)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert flags() == flags_before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_show_progress_draws_a_bar_over_direction_chunks(capsys) -> None:
    model = _smooth_mlp()
    x = torch.rand(2, 5, dtype=torch.float64)
    HOPEAttribution(model, order=2).attribute(
        x, target=0, show_progress=True, directions_per_chunk=2
    )
    err = capsys.readouterr().err
    assert "HOPE attribution" in err and "5/5" in err  # 5 features, in chunks of 2


def test_unmixed_derivatives_shows_progress_over_direction_chunks(capsys) -> None:
    model = _smooth_mlp()
    x = torch.rand(2, 5, dtype=torch.float64)
    quiet = hope_attr.unmixed_derivatives(model, x, 3)
    shown = hope_attr.unmixed_derivatives(model, x, 3, show_progress=True, directions_per_chunk=2)
    err = capsys.readouterr().err
    assert "hope_attr.unmixed_derivatives" in err and "5/5" in err
    assert torch.equal(quiet, shown)


def test_group_chunks_are_resized_from_the_measured_series(policy, chunk_sizes) -> None:
    """A ReLU network stores one order of its series, not ``order``: after a first chunk sized
    by the bound, the other chunks of feature-mask directions are sized by what it measured."""
    from hope_attr.engine import expansion as _derivatives

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)
    ).double()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    mask = torch.arange(16).reshape(1, 1, 4, 4)
    order = 4
    bound = order * 4 * 4 * 4 * 2 * 8 * _derivatives._TEMPORARY_COPIES  # the conv's output
    # Jets, not the reverse mode a locally affine model would get (3 outputs, 16 groups).
    policy(series_budget_bytes=2 * bound, reverse_mode=False)
    sizes = chunk_sizes
    with pytest.warns(hope_attr.PiecewiseLinearWarning):
        actual = HOPEAttribution(model, order=order).attribute_all_targets(x, feature_mask=mask)
    assert sizes[0] == 2 and sizes[1] == 8 and sum(sizes) == 16, sizes  # order 1 of 4 stored
    # Reference: on a piecewise-linear net each group's move is its directional derivative.
    for g in range(16):
        direction = -(mask == g).to(x.dtype).expand_as(x) * x
        _, slope = torch.func.jvp(model, (x,), (direction,))
        torch.testing.assert_close(actual[..., 0, g // 4, g % 4], -slope, rtol=1e-12, atol=1e-12)


def test_warnings_point_at_the_callers_line() -> None:
    """Through the thread-fitting decorator and Captum's log wrapper alike (a fixed stacklevel
    named one of those wrappers)."""
    import warnings

    from captum.attr import NoiseTunnel

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HOPEAttribution(model, order=3).attribute(x, target=0)
        HOPEAttribution(model, order=3).attribute_all_targets(x)
        NoiseTunnel(HOPEAttribution(model, order=3)).attribute(x, target=0, nt_samples=2)
    assert len(caught) == 3
    assert all(w.filename == __file__ for w in caught), [w.filename for w in caught]
