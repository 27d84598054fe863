"""hope_attr.interactions against shapiq's ExactComputer, which enumerates the game itself.

References: ExactComputer on the true game ``v(S) = f(x_S, b_rest)`` (every index, exact order),
on the ``n``-additive truncation built from shapiq's own Moebius transform (truncated orders), and
on the vertex values of ``hope_attr.expand``'s Taylor polynomial (``method="taylor"``), plus
closed-form games: a polynomial, where the Taylor route is exact at orders >= its degree.
"""

from __future__ import annotations

import sys
import warnings
from itertools import combinations

import numpy as np
import pytest
import torch

import hope_attr
from hope_attr import ConvergenceWarning

shapiq = pytest.importorskip("shapiq")

pytestmark = pytest.mark.usefixtures("single_thread")
DTYPE = torch.float64
INDICES = [
    ("Moebius", 3),
    ("SV", 1),
    ("BV", 1),
    ("SII", 2),
    ("BII", 2),
    ("k-SII", 2),
    ("k-SII", 3),
    ("STII", 2),
    ("FSII", 2),
    ("FSII", 3),
]


def _mlp(p: int, outputs: int = 1, scale: float = 1.0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(p, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12), torch.nn.Tanh(),
        torch.nn.Linear(12, outputs),
    ).to(DTYPE).eval()  # fmt: skip
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model


def _points(batch: int, p: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, p, dtype=DTYPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _exact(value_of_coalitions, p: int) -> shapiq.ExactComputer:
    """ExactComputer of the game given as a function of a bool array ``(C, p)``."""
    return shapiq.ExactComputer(n_players=p, game=value_of_coalitions)


def _feature_game(f, x: torch.Tensor, b: torch.Tensor):
    """``v(S) = f(b + 1_S (x - b))`` for one example, as shapiq calls it."""

    def game(coalitions: np.ndarray) -> np.ndarray:
        present = torch.tensor(coalitions, dtype=DTYPE)
        with torch.no_grad():
            return f(b + present * (x - b)).reshape(len(coalitions)).numpy()

    return game


def _assert_same(ours, reference, atol: float) -> None:
    assert ours.index == reference.index
    assert ours.n_players == reference.n_players
    if ours.index != "Moebius":  # ExactComputer reports every coalition whatever the order
        assert ours.max_order == reference.max_order
    # Every interaction up to max_order, in shapiq's order (ExactComputer leaves out exact zeros).
    expected = [
        s for k in range(ours.max_order + 1) for s in combinations(range(ours.n_players), k)
    ]
    assert list(ours.interaction_lookup) == expected
    assert {s for s in reference.interaction_lookup if len(s) <= ours.max_order} <= set(expected)
    gap = max(abs(ours[s] - reference[s]) for s in ours.interaction_lookup)
    assert gap < atol, f"{ours.index}: {gap:.2e} off ExactComputer"
    assert abs(ours.baseline_value - reference.baseline_value) < 1e-12


@pytest.mark.parametrize(("index", "max_order"), INDICES)
def test_exact_order_matches_exact_computer(index: str, max_order: int) -> None:
    p = 5
    model = _mlp(p)
    x, b = _points(2, p), _points(1, p, seed=7)[0]
    ours = hope_attr.interactions(model, x, b, index=index, max_order=max_order, order=p)
    for example in range(2):
        reference = _exact(_feature_game(model, x[example], b), p)(index, max_order)
        _assert_same(ours[example], reference, atol=1e-8 if "FSII" in index else 1e-12)
        assert not ours[example].estimated
        assert ours[example].estimation_budget == 2**p


def test_default_order_is_exact_for_few_players() -> None:
    model = _mlp(6)
    x = _points(1, 6)
    (values,) = hope_attr.interactions(model, x)  # k-SII, pairs
    reference = _exact(_feature_game(model, x[0], torch.zeros(6, dtype=DTYPE)), 6)("k-SII", 2)
    _assert_same(values, reference, atol=1e-12)
    # Efficiency: the k-SII values and the baseline add up to f(x).
    total = sum(values[s] for s in values.interaction_lookup if s) + values.baseline_value
    assert abs(total - model(x).item()) < 1e-12


def _truncated_game(model, x: torch.Tensor, p: int, size: int):
    """The ``size``-additive part of the game, from shapiq's own Moebius transform."""
    moebius = _exact(_feature_game(model, x, torch.zeros(p, dtype=DTYPE)), p)("Moebius", p)
    kept = {s: moebius[s] for s in moebius.interaction_lookup if len(s) <= size}

    def game(coalitions: np.ndarray) -> np.ndarray:
        return np.array(
            [sum(m for s, m in kept.items() if all(c[i] for i in s)) for c in coalitions]
        )

    return game


@pytest.mark.parametrize("index", ["SV", "k-SII", "FSII", "BII"])
def test_truncated_order_is_the_n_additive_game(index: str) -> None:
    p, size = 6, 3
    model = _mlp(p, scale=2.0)
    x = _points(1, p)
    max_order = 1 if index == "SV" else 2
    (ours,) = hope_attr.interactions(model, x, index=index, max_order=max_order, order=size)
    reference = _exact(_truncated_game(model, x[0], p, size), p)(index, max_order)
    _assert_same(ours, reference, atol=1e-8)
    assert ours.estimated
    assert ours.estimation_budget == 1 + 6 + 15 + 20


def test_every_permutation_makes_the_truncated_shapley_values_exact() -> None:
    p = 5
    model = _mlp(p, scale=2.0)
    x = _points(2, p)
    truncated = hope_attr.interactions(model, x, index="SV", order=2)
    corrected = hope_attr.interactions(model, x, index="SV", order=2, permutations=120)
    for example, (plain, ours) in enumerate(zip(truncated, corrected, strict=True)):
        reference = _exact(_feature_game(model, x[example], torch.zeros(p, dtype=DTYPE)), p)
        _assert_same(ours, reference("SV", 1), atol=1e-12)
        assert not ours.estimated  # all 5! orders: nothing is sampled
        gap = max(abs(plain[(i,)] - reference("SV", 1)[(i,)]) for i in range(p))
        assert gap > 1e-3  # the truncation alone is visibly off: the correction did the work
        # The lattice (1 + 5 + 10) and the distinct prefixes of 3 and 4 players, and the full set.
        assert ours.estimation_budget == 16 + 10 + 5 + 1


@pytest.mark.parametrize("bucket_elements", [2**23, 1])  # one block, and one permutation a block
def test_sampled_permutations_match_a_direct_control_variate_estimate(
    bucket_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The estimate is permutation sampling of v - v_n, v_n from shapiq's Moebius transform."""
    from hope_attr.interaction import residual_shapley as _residual_shapley

    monkeypatch.setattr(_residual_shapley, "_BUCKET_ELEMENTS", bucket_elements)
    p, size, count, seed = 7, 2, 30, 3
    model = _mlp(p, scale=2.0)
    x = _points(2, p)
    ours = hope_attr.interactions(
        model, x, index="SV", order=size, permutations=count, random_state=seed
    )
    orders, every = _residual_shapley.orders(p, count, torch.Generator().manual_seed(seed))
    assert not every and orders.shape == (count, p)
    for example in range(2):
        game = _feature_game(model, x[example], torch.zeros(p, dtype=DTYPE))
        truncated = _truncated_game(model, x[example], p, size)
        exact_truncated = _exact(truncated, p)("SV", 1)
        expected = np.array([exact_truncated[(i,)] for i in range(p)])
        for order in orders.tolist():
            present = np.zeros((p + 1, p), dtype=bool)
            for k, player in enumerate(order):
                present[k + 1 :, player] = True
            residual = game(present) - truncated(present)
            for k, player in enumerate(order):
                expected[player] += (residual[k + 1] - residual[k]) / count
        got = np.array([ours[example][(i,)] for i in range(p)])
        assert np.abs(got - expected).max() < 1e-12
        # Every sampled order hands out exactly v(N) - v_n(N): efficiency holds.
        total = got.sum() + ours[example].baseline_value
        assert abs(total - model(x[example : example + 1]).item()) < 1e-12


def test_sampled_correction_converges_to_the_exact_shapley_values() -> None:
    p = 10
    model = _mlp(p, scale=2.0)
    x = _points(1, p)
    reference = _exact(_feature_game(model, x[0], torch.zeros(p, dtype=DTYPE)), p)("SV", 1)

    def error(values) -> float:
        return max(abs(values[0][(i,)] - reference[(i,)]) for i in range(p))

    def corrected(count: int) -> float:
        return error(
            hope_attr.interactions(
                model, x, index="SV", order=2, permutations=count, random_state=0
            )
        )

    plain = error(hope_attr.interactions(model, x, index="SV", order=2))
    few, many = corrected(20), corrected(2000)
    assert many < plain / 5
    assert many < few


def test_truncation_estimate_with_permutations_is_the_sampled_correction() -> None:
    model = _mlp(6, scale=2.0)
    x = _points(2, 6)
    plain = hope_attr.interactions(model, x, index="SV", order=2)
    values, changes = hope_attr.interactions(
        model, x, index="SV", order=2, permutations=50, random_state=1, return_truncation=True
    )
    for v, c, w in zip(values, changes, plain, strict=True):
        assert np.allclose(c.values, v.values - w.values, atol=1e-13)
        assert np.abs(c.values).max() > 0


@pytest.mark.filterwarnings("ignore::hope_attr.ConvergenceWarning")  # order 3 says little
def test_taylor_is_the_polynomial_game() -> None:
    """method="taylor" gives the indices of the Taylor polynomial's values at the vertices."""
    p, order = 4, 3
    model = _mlp(p, scale=1.5)
    x = _points(1, p)
    zero = torch.zeros(p, dtype=DTYPE)
    polynomial = hope_attr.expand(model, zero, order)  # a different route: mixed partials
    ours = hope_attr.interactions(model, x, index="k-SII", order=order, method="taylor")[0]
    reference = _exact(_feature_game(polynomial, x[0], zero), p)("k-SII", 2)
    _assert_same(ours, reference, atol=1e-10)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """A polynomial of degree 3 with pair and triple interactions and pure powers."""
    x1, x2, x3, x4 = x.unbind(-1)
    return (1.5 + x1 - 2 * x2 * x3 + x1**2 * x4 + 3 * x1 * x2 * x3 - x4**3 + x3**2)[:, None]


@pytest.mark.parametrize("method", ["moebius", "taylor"])
@pytest.mark.parametrize(("index", "max_order"), [("SV", 1), ("k-SII", 2), ("STII", 3)])
def test_polynomial_is_exact_for_both_methods(method: str, index: str, max_order: int) -> None:
    x, b = _points(2, 4, seed=3), _points(1, 4, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a polynomial converges
        ours = hope_attr.interactions(
            _cubic, x, b, index=index, max_order=max_order, order=5, method=method
        )
    for example in range(2):
        reference = _exact(_feature_game(_cubic, x[example], b[0]), 4)(index, max_order)
        _assert_same(ours[example], reference, atol=1e-12)


def test_directions_per_chunk_splits_the_taylor_jets_and_keeps_its_old_name(chunk_sizes) -> None:
    """15 coalitions of 4 players, 4 jets at a time; ``internal_batch_size`` still works."""
    x, b = _points(2, 4, seed=3), _points(1, 4, seed=4)
    ours = hope_attr.interactions(
        _cubic, x, b, index="k-SII", order=5, method="taylor", directions_per_chunk=4
    )
    assert chunk_sizes == [4, 4, 4, 3]
    for example in range(2):
        reference = _exact(_feature_game(_cubic, x[example], b[0]), 4)("k-SII", 2)
        _assert_same(ours[example], reference, atol=1e-12)
    with pytest.warns(FutureWarning, match="directions_per_chunk"):
        old = hope_attr.interactions(
            _cubic, x, b, index="k-SII", order=5, method="taylor", internal_batch_size=4
        )
    assert chunk_sizes == [4, 4, 4, 3] * 2
    assert all(np.array_equal(a.values, c.values) for a, c in zip(old, ours, strict=True))


def test_closed_form_shapley_values_of_a_product() -> None:
    """v = x1 x2 x3 with baseline 0: m({1,2,3}) = x1 x2 x3 and SV_i = m / 3 (by hand)."""
    x = torch.tensor([[0.5, -2.0, 3.0, 1.0]], dtype=DTYPE)
    (values,) = hope_attr.interactions(lambda z: z[:, 0] * z[:, 1] * z[:, 2], x, index="SV")
    for i, expected in enumerate([-1.0, -1.0, -1.0, 0.0]):
        assert abs(values[(i,)] - expected) < 1e-15
    assert values.baseline_value == 0.0


def test_feature_mask_groups_are_players() -> None:
    p = 6
    model = _mlp(p)
    x = _points(1, p)
    mask = torch.tensor([[0, 0, 1, 2, 2, 1]])
    (ours,) = hope_attr.interactions(model, x, index="k-SII", feature_mask=mask)
    groups = [[0, 1], [2, 5], [3, 4]]

    def game(coalitions: np.ndarray) -> np.ndarray:
        present = torch.zeros(len(coalitions), p, dtype=DTYPE)
        for player, features in enumerate(groups):
            present[:, features] = torch.tensor(coalitions[:, player : player + 1], dtype=DTYPE)
        with torch.no_grad():
            return model(present * x).reshape(-1).numpy()

    _assert_same(ours, _exact(game, 3)("k-SII", 2), atol=1e-12)


def test_superpixels_of_an_image_with_both_methods() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(48, 2),
    ).to(DTYPE).eval()  # fmt: skip
    image = torch.rand(1, 1, 4, 4, dtype=DTYPE) * 0.5
    mask = torch.arange(4).reshape(2, 2).repeat_interleave(2, 0).repeat_interleave(2, 1)[None]
    exact = hope_attr.interactions(model, image, target=1, feature_mask=mask[None], index="SV")[0]
    taylor = hope_attr.interactions(
        model, image, target=1, feature_mask=mask[None], index="SV", method="taylor", order=12
    )[0]

    def game(coalitions: np.ndarray) -> np.ndarray:
        present = torch.tensor(coalitions, dtype=DTYPE)[:, mask[0]].unsqueeze(1)
        with torch.no_grad():
            return model(present * image)[:, 1].numpy()

    reference = _exact(game, 4)("SV", 1)
    _assert_same(exact, reference, atol=1e-12)
    _assert_same(taylor, reference, atol=1e-6)


def test_targets_as_in_captum() -> None:
    p = 4
    model = _mlp(p, outputs=3)
    x = _points(3, p)
    by_list = hope_attr.interactions(model, x, target=[0, 2, 1], index="SV")
    for example, target in enumerate([0, 2, 1]):
        (alone,) = hope_attr.interactions(model, x[example : example + 1], target=target)
        reference = _exact(
            _feature_game(lambda z, t=target: model(z)[:, t], x[example], torch.zeros(p)), p
        )("SV", 1)
        _assert_same(by_list[example], reference, atol=1e-12)
        assert alone.index == "k-SII"
    three_axes = lambda z: model(z).reshape(-1, 1, 3)  # noqa: E731
    by_tuple = hope_attr.interactions(three_axes, x, target=(0, 2), index="SV")
    by_int = hope_attr.interactions(model, x, target=2, index="SV")
    for a, b in zip(by_tuple, by_int, strict=True):
        assert np.allclose(a.values, b.values, atol=1e-15)
    flat = hope_attr.interactions(lambda z: model(z)[:, 0], x, index="SV")  # output (N,)
    first = hope_attr.interactions(model, x, target=0, index="SV")
    assert np.allclose(flat[1].values, first[1].values, atol=1e-15)
    with pytest.raises(ValueError, match="target"):
        hope_attr.interactions(model, x)


def test_tuple_inputs_and_additional_forward_args() -> None:
    def forward(a: torch.Tensor, c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a @ torch.ones(2, 1, dtype=DTYPE) * c[:, :1] + c[:, 1:]) * scale[:, None]

    a, c = _points(2, 2), _points(2, 2, seed=5)
    scale = torch.tensor([1.0, -2.0], dtype=DTYPE)
    ours = hope_attr.interactions(forward, (a, c), additional_forward_args=(scale,), index="BII")
    for example in range(2):

        def game(coalitions: np.ndarray, e: int = example) -> np.ndarray:
            present = torch.tensor(coalitions, dtype=DTYPE)
            za, zc = present[:, :2] * a[e], present[:, 2:] * c[e]
            return forward(za, zc, scale[e].expand(len(za)))[:, 0].numpy()

        _assert_same(ours[example], _exact(game, 4)("BII", 2), atol=1e-12)


def test_truncation_estimate_is_the_change_from_the_previous_order() -> None:
    model = _mlp(5, scale=2.0)
    x = _points(2, 5)
    for method in ("moebius", "taylor"):
        kwargs = {"index": "k-SII", "method": method}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            values, changes = hope_attr.interactions(
                model, x, order=4, return_truncation=True, **kwargs
            )
            lower = hope_attr.interactions(model, x, order=3, **kwargs)
        for v, c, w in zip(values, changes, lower, strict=True):
            assert np.allclose(c.values, v.values - w.values, atol=1e-13)
            assert np.abs(c.values).max() > 0


def test_taylor_warns_when_the_series_does_not_reach_the_baseline() -> None:
    model = _mlp(4, scale=6.0)  # saturated tanh: radius of convergence well below the move
    x = torch.full((1, 4), 1.0, dtype=DTYPE)
    with pytest.warns(ConvergenceWarning, match="radius of convergence"):
        hope_attr.interactions(model, x, order=8, method="taylor")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        hope_attr.interactions(model, x, order=4)  # method="moebius" evaluates the model


def test_model_is_left_unchanged() -> None:
    model = _mlp(4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("moebius", "taylor"):
        hope_attr.interactions(model, _points(2, 4), method=method)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not model.training


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"index": "Shapley"}, ValueError, "index must be one of"),
        ({"method": "exact"}, ValueError, "method must be one of"),
        ({"max_order": 3, "order": 2}, ValueError, "pass order >= 3"),
        ({"index": "SV", "max_order": 2}, ValueError, "max_order 1"),
        ({"max_order": 5}, ValueError, "exceeds the 4 players"),
        ({"order": 0}, ValueError, "order must be >= 1"),
        ({"order": 2.0}, TypeError, "order must be an int"),
        ({"order": 4, "max_coalitions": 10}, ValueError, r"C\(4, s\) = 16 coalitions"),
        ({"permutations": 8}, ValueError, "needs index='SV' and method='moebius'"),
        ({"index": "SV", "method": "taylor", "permutations": 8}, ValueError, "index='SV'"),
        ({"index": "SV", "permutations": -1}, ValueError, "permutations must be an int >= 0"),
        ({"index": "SV", "permutations": 8, "random_state": "0"}, TypeError, "random_state"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        hope_attr.interactions(_mlp(4), _points(1, 4), **kwargs)


def test_too_many_players_names_the_cost_and_the_fix() -> None:
    x = torch.zeros(1, 40, dtype=DTYPE)
    with pytest.raises(ValueError, match="102091 coalitions.*feature_mask") as caught:
        hope_attr.interactions(lambda z: z.sum(1), x, order=4, max_coalitions=50_000)
    assert "lower order" in str(caught.value)


def test_bad_inputs_are_refused() -> None:
    model = _mlp(3)
    with pytest.raises(ValueError, match="NaN"):
        hope_attr.interactions(model, torch.tensor([[0.0, float("nan"), 1.0]], dtype=DTYPE))
    with pytest.raises(ValueError, match="NaN"):
        hope_attr.interactions(model, _points(1, 3), baselines=float("inf"))
    with pytest.raises(TypeError, match="dtype"):
        hope_attr.interactions(model, torch.ones(1, 3, dtype=torch.long))
    dropout = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Dropout(0.5)).to(DTYPE)
    with pytest.raises(hope_attr.TrainingModeError):
        hope_attr.interactions(dropout, _points(1, 3))


def test_missing_shapiq_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "shapiq", None)  # `import shapiq` raises ImportError
    with pytest.raises(ImportError, match=r"pip install hope_attr\[interactions\]"):
        hope_attr.interactions(_mlp(3), _points(1, 3))


def test_lattice_holds_every_small_coalition_once() -> None:
    from hope_attr.interaction.moebius import Lattice

    lattice = Lattice(6, 3)
    expected = sorted(sum(1 << i for i in s) for k in range(4) for s in combinations(range(6), k))
    assert lattice.masks.tolist() == expected
    for players in (6, 22):  # a look-up table up to 20 players, a binary search beyond
        lattice = Lattice(players, 2)
        assert torch.equal(lattice.positions(lattice.masks), torch.arange(len(lattice)))


def test_repeated_calls_reuse_the_lattice_unchanged() -> None:
    model = _mlp(5)
    x = _points(2, 5)
    first = hope_attr.interactions(model, x, index="STII", max_order=3, order=4)
    again = hope_attr.interactions(model, x, index="STII", max_order=3, order=4)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.values, b.values)


def test_float32_models_get_float64_transforms() -> None:
    """The Moebius transform sums 2^n signed values: done in float64 whatever the model's dtype."""
    model = _mlp(6)
    x = _points(2, 6)
    exact = hope_attr.interactions(model, x, index="FSII", max_order=3)
    single = hope_attr.interactions(model.float(), x.float(), index="FSII", max_order=3)
    for a, b in zip(exact, single, strict=True):
        assert np.abs(a.values - b.values).max() < 1e-5


@pytest.mark.slow
def test_benchmark_quick_mode_runs(tmp_path) -> None:
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "benchmarks/interactions.py", "--quick", "--markdown", tmp_path / "o.md"],
        cwd=root,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "## Targets" in (tmp_path / "o.md").read_text()


def test_sizes_that_cannot_run_are_refused_at_once_with_the_fix() -> None:
    """64 players used to fail with 'at most 62 players fit a bitmask' without the fix, and
    permutations=10**9 with std::bad_alloc after half a minute (issue 30)."""
    import time

    model = torch.nn.Sequential(torch.nn.Linear(64, 1)).double()
    x = torch.rand(1, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match="at most 62 players, got 64.*feature_mask"):
        hope_attr.interactions(model, x, target=0, index="SV", order=1)
    small = torch.nn.Sequential(torch.nn.Linear(10, 1), torch.nn.Tanh()).double()
    start = time.perf_counter()
    with pytest.raises(ValueError, match="permutations=1000000000 with 10 players visit 1.1e\\+10"):
        hope_attr.interactions(
            small, x[:, :10], target=0, index="SV", order=2, method="moebius", permutations=10**9
        )
    assert time.perf_counter() - start < 5.0
