"""Convergence detection and Taylor continuation, against Captum's FeatureAblation."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import FeatureAblation
from torch import nn

import hope_attr
from hope_attr import ConvergenceWarning, HOPEAttribution, PiecewiseLinearWarning
from hope_attr.attribution import continuation as _continuation
from hope_attr.engine import kinks as _kinks
from hope_attr.engine.expansion import Expansion

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(params=[0, 200], ids=["end-by-forward", "taylor-steps"])
def taylor_steps(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Both ways continuation reaches a path's end: the default forward pass, Taylor steps."""
    monkeypatch.setattr(_continuation, "TAYLOR_STEPS", request.param)
    return request.param


def _steep_tanh_mlp(width: int = 16, features: int = 12) -> nn.Module:
    """Weights x25, as the issue's 784-64-64-10 net: baselines far outside the radius."""
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Linear(features, width),
            nn.Tanh(),
            nn.Linear(width, width),
            nn.Tanh(),
            nn.Linear(width, 3),
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(25 / features**0.5)
    return model


def _relu_cnn() -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(6, 8),
            nn.ReLU(),
            nn.Linear(8, 3),
        )
        .double()
        .eval()
    )


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def test_exact_warns_where_the_series_diverges_and_continuation_matches_ablation(
    taylor_steps: int,
) -> None:
    model = _steep_tanh_mlp()
    x = torch.rand(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = FeatureAblation(model).attribute(x, target=1)
    with pytest.warns(ConvergenceWarning, match=r"\d+ of 36 features"):
        exact, diagnostics = HOPEAttribution(model, order=4).attribute(
            x, target=1, return_diagnostics=True
        )
    assert _relative(exact, expected) > 0.1  # the warning is warranted
    assert (diagnostics.radius <= 1).any() and diagnostics.steps is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # continuation does not warn
        continued, diagnostics = HOPEAttribution(
            model, order=4, method="continuation", rtol=1e-8
        ).attribute(x, target=1, return_diagnostics=True)
    assert _relative(continued, expected) < 1e-6
    assert (diagnostics.steps[~diagnostics.converged] >= 1).all()  # continued, not summed
    if taylor_steps:
        assert diagnostics.steps.max() > 2  # some paths took several Taylor steps


def test_continuation_serves_every_output_and_feature_masks(taylor_steps: int) -> None:
    model = _steep_tanh_mlp()
    x = torch.rand(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    baseline = 0.5
    mask = torch.arange(12).reshape(1, 12) // 3
    hope = HOPEAttribution(model, order=5, method="continuation", rtol=1e-8)
    every = hope.attribute_all_targets(x, baselines=baseline, feature_mask=mask)
    for target in range(3):
        expected = FeatureAblation(model).attribute(
            x, baselines=baseline, target=target, feature_mask=mask
        )
        assert _relative(every[:, target], expected) < 1e-6


def test_convergent_series_is_not_flagged() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double().eval()
    x = 0.1 * torch.rand(2, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, diagnostics = HOPEAttribution(model, order=8).attribute(
            x, baselines=x + 0.05, target=0, return_diagnostics=True
        )
    assert (diagnostics.radius > 1).all() and diagnostics.converged.all()


def test_relu_maxpool_continuation_matches_ablation_to_rounding(taylor_steps: int) -> None:
    model = _relu_cnn()
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64, generator=generator)
    x[:, :, :4] = 0  # a blank region: tied max-pool windows, as in MNIST backgrounds
    for baseline in (0.0, torch.rand(2, 1, 12, 12, dtype=torch.float64, generator=generator)):
        expected = FeatureAblation(model).attribute(x, baselines=baseline, target=2)
        actual = HOPEAttribution(model, order=2, method="continuation").attribute(
            x, baselines=baseline, target=2
        )
        assert _relative(actual, expected) < 1e-6


def test_piecewise_linear_flag_warns_once_and_equals_input_x_gradient() -> None:
    from captum.attr import InputXGradient

    model = _relu_cnn()
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    hope = HOPEAttribution(model, order=4)
    assert hope.higher_orders_vanish is None
    with pytest.warns(PiecewiseLinearWarning, match="InputXGradient"):
        first = hope.attribute(x, target=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PiecewiseLinearWarning)
        hope.attribute(x, target=0)  # once per object
    assert hope.higher_orders_vanish is True
    torch.testing.assert_close(first, InputXGradient(model).attribute(x, target=0))
    smooth = HOPEAttribution(_steep_tanh_mlp(), order=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        smooth.attribute(torch.rand(1, 12, dtype=torch.float64), target=0)
    assert smooth.higher_orders_vanish is False


@pytest.mark.parametrize(
    ("module", "threshold"),
    [(nn.ReLU(), 0.0), (nn.Hardtanh(-0.5, 0.5), 0.5), (nn.LeakyReLU(0.1), 0.0)],
)
def test_kinks_are_where_the_branch_changes(module: nn.Module, threshold: float) -> None:
    """The first crossing a rule reports is the closed form ``(threshold - z) / v``."""
    z = torch.tensor([[0.2, -0.3, 0.45]], dtype=torch.float64)
    v = torch.tensor([[[-0.4, 0.5, 0.1]]], dtype=torch.float64)
    with _kinks.watch() as watch:
        Expansion(module, z, 1).directional_coefficients((v,))
    crossings = torch.cat([(0.0 - z) / v[0], (threshold - z) / v[0], (-threshold - z) / v[0]])
    expected = crossings[crossings > 0].min()
    if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
        expected = ((0.0 - z) / v[0])[((0.0 - z) / v[0]) > 0].min()
    torch.testing.assert_close(watch.first, expected.reshape(1))


def test_max_pool_kink_is_where_another_entry_overtakes() -> None:
    z = torch.tensor([[[1.0, 0.5, 0.2, 0.9]]], dtype=torch.float64)  # two windows of 2
    v = torch.tensor([[[[0.0, 1.0, 0.0, 0.2]]]], dtype=torch.float64)
    with _kinks.watch() as watch:
        Expansion(nn.MaxPool1d(2), z, 1).directional_coefficients((v,))
    torch.testing.assert_close(watch.first, torch.tensor([0.5], dtype=torch.float64))


def test_kink_observer_is_off_outside_its_context() -> None:
    assert _kinks._active() is None


def test_bad_arguments_are_refused_clearly() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh())
    with pytest.raises(ValueError, match="order >= 2"):
        HOPEAttribution(model, order=1, method="continuation")
    with pytest.raises(ValueError, match="rtol"):
        HOPEAttribution(model, rtol=0)


def test_issue_12_item_6_inputs() -> None:
    """Containers with tensors in extra args, 2-d target tensors, inputs with requires_grad."""

    class Scaled(nn.Module):
        def forward(self, x: torch.Tensor, extra: list) -> torch.Tensor:
            return torch.tanh(x * extra[1] + extra[0])

    x = torch.rand(2, 3, dtype=torch.float64)
    # Tensors inside containers pass through, as FeatureAblation passes them (issue 30): the
    # per-example bias follows its example along continuation's paths.
    extra = ([torch.rand(2, 3, dtype=torch.float64), 0.5],)
    measured = FeatureAblation(Scaled()).attribute(x, target=0, additional_forward_args=extra)
    hope = HOPEAttribution(Scaled(), order=4, method="continuation")
    got = hope.attribute(x, target=0, additional_forward_args=extra)
    torch.testing.assert_close(got, measured, rtol=1e-10, atol=1e-12)
    x = x.float()
    linear = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    with pytest.raises(ValueError, match="reshape"):
        HOPEAttribution(linear).attribute(x, target=torch.tensor([[1], [2]]))
    result = HOPEAttribution(linear).attribute(x.clone().requires_grad_(), target=1)
    assert result.grad_fn is None and not result.requires_grad


def test_public_names() -> None:
    assert issubclass(hope_attr.ConvergenceWarning, UserWarning)
    assert "Set up the attribution" in HOPEAttribution.__init__.__doc__
    assert "NotImplementedError" in HOPEAttribution.attribute_future.__doc__
    with pytest.raises(NotImplementedError):
        HOPEAttribution(nn.Linear(2, 1)).attribute_future(torch.rand(1, 2))


def test_bilinear_model_is_not_called_piecewise_linear() -> None:
    """x1 * x2 has zero unmixed orders >= 2 but no kink: no PiecewiseLinearWarning."""
    hope = HOPEAttribution(lambda x: x[:, :1] * x[:, 1:2], order=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PiecewiseLinearWarning)
        hope.attribute(torch.randn(2, 2, dtype=torch.float64))
    assert hope.higher_orders_vanish is True


class _Gated(nn.Module):
    """A forward that branches on comparisons of its activations (issue 13, item 2)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.kind = kind
        self.first, self.second = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.kind == "where":  # a jump where h crosses 0.3: no series steps over it
            g = torch.where(h > 0.3, torch.tanh(h), 0.5 * h**2 - 0.2)
        elif self.kind == "masked_fill":
            g = torch.tanh(h).masked_fill(h < -0.1, 0.7)
        else:  # a comparison of two jets
            g = torch.where(h[:, :4] > h[:, 4:], h[:, :4] ** 2, torch.sin(h[:, 4:]))
            g = torch.cat([g, g], 1)
        return self.second(g)


@pytest.mark.parametrize("kind", ["where", "masked_fill", "jet_vs_jet"])
def test_continuation_stops_at_data_dependent_conditions(kind: str, taylor_steps: int) -> None:
    """torch.where / masked_fill whose condition flips along the path: FeatureAblation's values
    (before, the series stepped over the flip silently)."""
    model = _Gated(kind).double().eval()
    generator = torch.Generator().manual_seed(4)
    x = 2 * torch.rand(3, 6, dtype=torch.float64, generator=generator) - 1
    baseline = 2 * torch.rand(3, 6, dtype=torch.float64, generator=generator) - 1
    # The condition really flips on some path (checked on the pre-activations directly).
    h = model.first
    ends = x.unsqueeze(1) + torch.diag_embed(baseline - x)  # (B, 6 features, 6)
    if kind == "jet_vs_jet":
        before, after = h(x)[:, :4] - h(x)[:, 4:], h(ends)[..., :4] - h(ends)[..., 4:]
    else:
        threshold = 0.3 if kind == "where" else -0.1
        before, after = h(x) - threshold, h(ends) - threshold
    assert ((before.unsqueeze(1) > 0) != (after > 0)).any()
    for target in range(3):
        expected = FeatureAblation(model).attribute(x, baselines=baseline, target=target)
        actual = HOPEAttribution(model, order=4, method="continuation").attribute(
            x, baselines=baseline, target=target
        )
        assert _relative(actual, expected) < 1e-6


def test_kink_brought_forward_by_curvature_is_not_stepped_over(taylor_steps: int) -> None:
    """z(t) = 0.1 + 0.5 t - 2 t^2 moves away from ReLU's kink at first order but crosses it at
    t = 0.38: the first-order estimate alone summed the positive branch's polynomial to t = 1."""
    model = lambda x: torch.relu(0.1 + 0.5 * x - 2 * x**2)  # noqa: E731
    x = torch.zeros(1, 1, dtype=torch.float64)
    expected = FeatureAblation(model).attribute(x, baselines=1.0, target=0)
    actual = HOPEAttribution(model, order=3, method="continuation").attribute(
        x, baselines=1.0, target=0
    )
    torch.testing.assert_close(actual, expected)
    with _kinks.watch() as watch:
        Expansion(model, x, 3).directional_coefficients((torch.ones(1, 1, 1).double(),))
    assert watch.first.item() <= (0.5 + (0.25 + 0.8) ** 0.5) / 4  # never later than the crossing


def test_undecidable_decisions_fall_back_to_the_ablation(taylor_steps: int) -> None:
    """An argmax on a jet: where it flips is unknown, so every path ends by a forward pass.
    (Each branch is a quadratic, so the series at x looked exact and was summed across the flip.)"""

    def model(x: torch.Tensor) -> torch.Tensor:
        index = torch.argmax(x, 1, keepdim=True)
        return 2 * x.gather(1, index) + x.sum(1, keepdim=True) ** 2  # a polynomial per branch

    x = torch.rand(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = FeatureAblation(model).attribute(x, target=0)
    actual = HOPEAttribution(model, order=4, method="continuation").attribute(x, target=0)
    assert _relative(actual, expected) < 1e-10


def _calibrated(model: nn.Module, size: int) -> nn.Module:
    """Realistic BatchNorm statistics: the exact averages over a few batches of random images."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(16, 3, size, size, dtype=torch.float64))
    return model.eval()


def test_mobile_architectures_warn_and_continuation_matches_ablation() -> None:
    """Issue 13: with realistic BN statistics mobilenet_v3_small's and efficientnet_b0's 8x8 patch
    ablations are far outside the radius; exact must warn, continuation must be FA's."""
    models = pytest.importorskip("torchvision.models")
    size = 32
    ids = torch.arange(size) // 8
    mask = (ids.reshape(-1, 1) * (size // 8) + ids).reshape(1, 1, size, size)
    for build in (models.mobilenet_v3_small, models.efficientnet_b0):
        torch.manual_seed(0)
        model = _calibrated(build(num_classes=4).double(), size)
        x = torch.rand(1, 3, size, size, dtype=torch.float64)
        expected = FeatureAblation(model).attribute(x, target=0, feature_mask=mask)
        with pytest.warns(ConvergenceWarning, match="radius of convergence"):
            exact = HOPEAttribution(model, order=4).attribute(x, target=0, feature_mask=mask)
        assert _relative(exact, expected) > 1  # the warning is warranted
        if build is models.mobilenet_v3_small:  # (efficientnet's smooth steps take seconds)
            actual = HOPEAttribution(model, order=4, method="continuation").attribute(
                x, target=0, feature_mask=mask
            )
            assert _relative(actual, expected) < 1e-6


def test_crossing_time_is_never_later_than_the_true_crossing() -> None:
    """For polynomials z(t) = z0 + z1 t + z2 t^2 + z3 t^3, the reported time (with the bound
    R = |z2| + |z3|) is at most the first t in (0, 1] where z reaches 0 (found on a fine grid)."""
    generator = torch.Generator().manual_seed(6)
    z = torch.randn(4, 1000, dtype=torch.float64, generator=generator)
    z[2:] *= torch.rand(1000, dtype=torch.float64, generator=generator) * 3
    reported = _kinks._crossing(z[0], z[1], z[2].abs() + z[3].abs())
    t = torch.linspace(0, 1, 5001, dtype=torch.float64).reshape(-1, 1)
    values = z[0] + z[1] * t + z[2] * t**2 + z[3] * t**3
    crosses = torch.sign(values[1:]) != torch.sign(values[:1])
    cross = crosses.any(0)
    first = t[1:, 0][crosses.int().argmax(0)][cross]
    assert cross.sum() > 50  # many of them do cross
    assert (reported[cross] <= first + 2e-4).all()  # the grid step
    linear = _kinks._crossing(z[0], z[1])  # without the bound: later than the truth somewhere
    assert (linear[cross] > first + 1e-3).any()


@pytest.mark.parametrize("output_dims", [0, 1, 2])
def test_coefficient_norms_are_the_largest_magnitude_over_the_outputs(output_dims: int) -> None:
    from hope_attr.attribution import convergence as _convergence

    torch.manual_seed(0)
    outputs = (3, 2)[:output_dims]
    coefficients = torch.randn(4, 2, *outputs, 5)  # (n, B, *O, G)
    expected = coefficients.abs()
    for _ in range(output_dims):
        expected = expected.amax(2)
    actual = _convergence.coefficient_norms(coefficients, output_dims)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
