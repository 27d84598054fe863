"""The benchmark harness (benchmarks/attribution.py) on models whose answers are known.

On a linear model ``f(x) = W x + b`` every method below is exact, so it must reproduce
single-pixel FeatureAblation (baseline 0), ``w_i x_i``, to rounding: HOPE at any order (exact and
the paper's diagonal rule), InputXGradient (zero baseline), IntegratedGradients, FeatureAblation.
"""

from __future__ import annotations

import matplotlib
import pytest
import torch
from torch import nn

from benchmarks import attribution as harness

matplotlib.use("Agg")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum's advice on hooks, Lime

TARGET = 1
PLANTED = (0, 2, 3)  # (channel, row, column) of the feature with the dominant weight


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on cores shared with other processes, 2 threads ran 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).double().eval()
    with torch.no_grad():
        model[1].weight.uniform_(-0.5, 0.5)
        model[1].weight[TARGET, PLANTED[1] * 6 + PLANTED[2]] = 5.0
    return model


def _inputs(batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = 0.1 + 0.8 * torch.rand(batch, 1, 6, 6, dtype=torch.float64, generator=generator)
    x[:, PLANTED[0], PLANTED[1], PLANTED[2]] = 1.0
    return x


EXACT_FOR_LINEAR = [
    *harness.hope_methods(orders=(1, 2, 4, 8), kinds=("exact", "diagonal")),
    harness.method_by_name("InputXGradient"),
    harness.method_by_name("IntegratedGradients"),
    harness.method_by_name("FeatureAblation"),
]


@pytest.mark.parametrize("method", EXACT_FOR_LINEAR, ids=lambda m: m.name)
def test_exact_methods_reproduce_feature_ablation(method: harness.Method) -> None:
    model, x = _linear_model(), _inputs()
    expected = model[1].weight[TARGET].reshape(1, 1, 6, 6) * x  # w_i (x_i - 0)
    actual = harness.attribute(method, model, x, [TARGET] * len(x))
    # IntegratedGradients' quadrature weights sum to 1 only to ~5e-9.
    torch.testing.assert_close(actual, expected, rtol=1e-7, atol=1e-12)
    ranks = harness.feature_ranks(actual).reshape(x.shape)
    assert (ranks[(slice(None), *PLANTED)] == 0).all()  # the planted feature ranks first


def test_benchmark_rows_on_a_linear_model() -> None:
    model, x = _linear_model(), _inputs()
    result = harness.run_benchmark(
        model, x, [TARGET] * len(x), EXACT_FOR_LINEAR, harness.Budget.tiny(), progress=False
    )
    assert [row.method for row in result.rows] == [m.name for m in EXACT_FOR_LINEAR]
    for row in result.rows:
        assert row.spearman == pytest.approx(1.0), row
        assert row.top_overlap == pytest.approx(1.0), row
        assert row.seconds_per_image > 0
        if row.delta is not None:  # HOPE and IntegratedGradients: complete on a linear model
            assert row.delta == pytest.approx(0.0, abs=1e-9), row
    deletion = {row.deletion_auc for row in result.rows}
    assert max(deletion) - min(deletion) < 1e-9  # the same ranking deletes the same pixels
    assert result.images == len(x) and result.threads == 1
    table = harness.markdown_table(result.rows)
    assert all(f"| {m.name} |" in table for m in EXACT_FOR_LINEAR)
    assert len(harness.plot_time_vs_agreement(result.rows).axes) == 1


def test_spearman_and_top_overlap() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(harness.spearman(a, a), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(harness.spearman(a, -a), -torch.ones(2, dtype=torch.float64))
    assert harness.spearman(torch.zeros(1, 4), a[:1]).item() == 0.0  # constant map
    b = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert harness.top_overlap(a[:1], b, fraction=0.5).item() == 0.0
    assert harness.top_overlap(a[:1], -a[:1], fraction=0.5).item() == 1.0  # by |value|


def test_deletion_prefers_the_true_ranking() -> None:
    model, x = _linear_model(), _inputs(1)
    true = harness.attribute(harness.method_by_name("FeatureAblation"), model, x, [TARGET])
    curves = [
        harness.removal_curves(model, x, [TARGET], attribution, steps=12, insertion=insertion)
        for attribution in (true, -true)
        for insertion in (False, True)
    ]
    deletion_true, insertion_true, deletion_reversed, insertion_reversed = (
        harness.area_under_curve(curve).item() for curve in curves
    )
    assert deletion_true < deletion_reversed
    assert insertion_true > insertion_reversed


def test_removal_curve_end_points() -> None:
    model, x = _linear_model(), _inputs(2)
    attribution = torch.randn_like(x)
    deletion = harness.removal_curves(model, x, [0, 2], attribution, steps=4)
    insertion = harness.removal_curves(model, x, [0, 2], attribution, steps=4, insertion=True)
    with torch.no_grad():
        full = model(x).softmax(-1)[[0, 1], [0, 2]]
        empty = model(torch.zeros_like(x)).softmax(-1)[[0, 1], [0, 2]]
    torch.testing.assert_close(deletion[:, 0], full)
    torch.testing.assert_close(deletion[:, -1], empty)
    torch.testing.assert_close(insertion[:, 0], empty)
    torch.testing.assert_close(insertion[:, -1], full)


def test_superpixel_mask_ids() -> None:
    mask = harness.superpixel_mask((1, 1, 6, 7), 4)
    assert mask.shape == (1, 1, 6, 7)
    assert torch.equal(torch.unique(mask), torch.arange(4))


def test_lrp_applies_to_relu_networks_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    lrp = harness.method_by_name("LRP")
    assert lrp.applies(model)
    assert not lrp.applies(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))
    explainer = harness.Explainer(lrp, model)
    x = _inputs().float()
    first = explainer(x, [0, 1, 2]).detach()
    torch.testing.assert_close(explainer(x, [0, 1, 2]).detach(), first)  # a second call works
    for module in model.modules():
        assert not hasattr(module, "rule")
        assert not module._forward_hooks and not module._backward_hooks


def test_every_registry_method_runs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    ).eval()
    x = _inputs(2).float()
    methods = [*harness.hope_methods((1, 2)), harness.hope_paper_method(2), *harness.CAPTUM_METHODS]
    result = harness.run_benchmark(model, x, [0, 2], methods, harness.Budget.tiny(), progress=False)
    assert [row.method for row in result.rows] == [m.name for m in methods]
    for row in result.rows:
        assert result.attributions[row.method].shape == x.shape
        assert -1.0 <= row.spearman <= 1.0 and 0.0 <= row.top_overlap <= 1.0
        assert 0.0 <= row.deletion_auc <= 1.0 and 0.0 <= row.insertion_auc <= 1.0


def _boxes_overlap(a, b) -> bool:
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def test_time_vs_agreement_labels_do_not_overlap_and_have_a_legend() -> None:
    # Regression: the labels were method names next to the points and overlapped where methods
    # had close times and agreement (and coincided where they reproduce the reference).
    names = [*(m.name for m in harness.hope_methods()), *(m.name for m in harness.CAPTUM_METHODS)]
    generator = torch.Generator().manual_seed(0)
    rows = []
    for index, name in enumerate(names):
        seconds = 0.01 * (1 + index % 3) * (1 + 0.05 * torch.rand(1, generator=generator).item())
        agreement = 1.0 if index in (2, 3, 14) else 0.9 + 0.01 * (index % 4)  # ties: 1 - 0 = 0
        rows.append(harness.Row(name, seconds, agreement, 0, 0, 0, 0, 0, None))
    figure = harness.plot_time_vs_agreement(rows, "crowded")
    axis = figure.axes[0]
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend == [f"{i}  {name}" for i, name in enumerate(names, start=1)]
    renderer = figure.canvas.get_renderer()
    labels = [child for child in axis.texts]
    numbers = sorted(int(n) for label in labels for n in label.get_text().split(","))
    assert numbers == list(range(1, len(names) + 1)), "every point is numbered once"
    boxes = [label.get_window_extent(renderer) for label in labels]
    for i, first in enumerate(boxes):
        assert not any(_boxes_overlap(first, second) for second in boxes[i + 1 :])
    frame = axis.get_window_extent(renderer)
    assert all(frame.x0 <= box.x0 and box.x1 <= frame.x1 for box in boxes)
