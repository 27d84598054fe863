"""The networks of the HOPE paper's Sec. 5.5, trained small and fast, and the tank simulation.

Shared by ``discovery.py`` and ``tank.py`` (runnable scripts in this folder), by
``tests/test_reproductions.py`` and by ``docs/notebooks/function_discovery.ipynb``.

* :func:`train_quadratic`: an MLP fitted to ``y = (x1^2 + x2) / 2`` on ``[-1, 1]^2`` (Eq. 71).
* :func:`train_interactions`: an MLP fitted to
  ``y = 0.5 + x1 + 0.6 x2 x3 - 0.8 x2 x4 + x1 x2 x3 - x3 x5`` on ``[-1, 1]^5`` (the code's
  second discovery example).
* :func:`train_tank_controller`: the level controller of Fig. 6, an MLP fitted to the staircase
  law of Eq. 74 (normalized as in Eq. 75), and :func:`simulate_tank`, the first-order tank
  ``T dh/dt = K q1 - h`` (Eq. 73, K = 1, T = 1) under that controller.

Everything runs in float64 with fixed seeds: the fits are full-batch L-BFGS (the two discovery
examples) or a short full-batch Adam run (the controller: see :func:`train_tank_controller`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

DTYPE = torch.float64

#: The second example's terms, as ``TaylorPolynomial.terms(around_zero=True)`` names them.
INTERACTION_TERMS = {
    "1": 0.5,
    "x1": 1.0,
    "x2 x3": 0.6,
    "x2 x4": -0.8,
    "x1 x2 x3": 1.0,
    "x3 x5": -1.0,
}


def quadratic(x: Tensor) -> Tensor:
    """``y = (x1^2 + x2) / 2`` (the paper's Eq. 71), ``(N, 2) -> (N, 1)``."""
    return 0.5 * x[:, :1] ** 2 + 0.5 * x[:, 1:2]


def interactions(x: Tensor) -> Tensor:
    """``y = 0.5 + x1 + 0.6 x2 x3 - 0.8 x2 x4 + x1 x2 x3 - x3 x5``, ``(N, 5) -> (N, 1)``."""
    x1, x2, x3, x4, x5 = (x[:, i : i + 1] for i in range(5))
    return 0.5 + x1 + 0.6 * x2 * x3 - 0.8 * x2 * x4 + x1 * x2 * x3 - x3 * x5


def mlp(inputs: int, width: int, depth: int = 2) -> nn.Sequential:
    """``depth`` tanh hidden layers of ``width`` units, one output, float64."""
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.Tanh()]
        size = width
    layers.append(nn.Linear(size, 1))
    return nn.Sequential(*layers).to(DTYPE)


def fit_lbfgs(model: nn.Module, x: Tensor, y: Tensor, max_iter: int) -> float:
    """Full-batch L-BFGS on the mean squared error; returns the final training loss.

    A smooth target sampled densely needs no stochasticity, and L-BFGS in float64 drives the
    error an order of magnitude below what Adam reaches in the same time (see the notebook).
    """
    optimizer = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=50,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (model(x) - y).pow(2).mean().item()


def fit_adam(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float) -> float:
    """Full-batch Adam on the mean squared error; returns the final training loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (model(x) - y).pow(2).mean().item()


def rmse_on_box(model: nn.Module, target: Callable[[Tensor], Tensor], inputs: int) -> float:
    """Root mean squared error on 8192 fresh uniform points of ``[-1, 1]^inputs``."""
    generator = torch.Generator().manual_seed(12345)
    x = torch.rand(8192, inputs, generator=generator, dtype=DTYPE) * 2 - 1
    with torch.no_grad():
        return (model(x) - target(x)).pow(2).mean().sqrt().item()


def _samples(count: int, inputs: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, inputs, generator=generator, dtype=DTYPE) * 2 - 1


def train_quadratic(
    seed: int = 0, optimizer: str = "lbfgs", samples: int = 1024
) -> tuple[nn.Sequential, float]:
    """A 2-32-32-1 tanh MLP fitted to :func:`quadratic` on uniform samples of ``[-1, 1]^2``.

    Args:
        seed: seeds the initialization and the samples.
        optimizer: ``"lbfgs"`` (300 iterations, about a second) or ``"adam"`` (2000 steps,
            learning rate 3e-3: a typical, less converged fit, kept to show what it costs).
        samples: training points.

    Returns:
        ``(model, rmse)``: the model in eval mode and its test RMSE over ``[-1, 1]^2``.
    """
    torch.manual_seed(seed)
    model = mlp(2, 32)
    x = _samples(samples, 2, seed)
    if optimizer == "lbfgs":
        fit_lbfgs(model, x, quadratic(x), max_iter=300)
    elif optimizer == "adam":
        fit_adam(model, x, quadratic(x), steps=2000, lr=3e-3)
    else:
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    return model.eval(), rmse_on_box(model, quadratic, 2)


def train_interactions(seed: int = 0, samples: int = 2048) -> tuple[nn.Sequential, float]:
    """A 5-32-32-1 tanh MLP fitted to :func:`interactions` on ``[-1, 1]^5`` (L-BFGS, 400
    iterations, a few seconds). Returns ``(model, test_rmse)``."""
    torch.manual_seed(seed)
    model = mlp(5, 32)
    x = _samples(samples, 5, seed)
    fit_lbfgs(model, x, interactions(x), max_iter=400)
    return model.eval(), rmse_on_box(model, interactions, 5)


# ---------------------------------------------------------------------------- the tank (Fig. 6)
SETPOINT = 10.0  # h_s
SCALE = 10.0  # Eq. 75: inputs e / 10, labels f(e) / 10 - 1


def staircase(e: Tensor) -> Tensor:
    """The training label of Eq. 74: inflow 0, 5, 10, 15, 20 on the level-error bands
    ``(-10, -6], (-6, -2], (-2, 2], (2, 6], (6, 10]``."""
    edges = torch.tensor([-6.0, -2.0, 2.0, 6.0], dtype=e.dtype)
    return 5.0 * torch.bucketize(e, edges).to(e.dtype)  # bucketize: edges[i-1] < e <= edges[i]


def train_tank_controller(
    seed: int = 0, steps: int = 500, width: int = 16
) -> tuple[nn.Sequential, float]:
    """The normalized controller ``u = f(e / 10)`` with ``q1 = 10 (u + 1)`` (Eq. 75).

    A 1-16-16-1 tanh MLP, full-batch Adam (learning rate 1e-2) on 401 evenly spaced errors in
    ``[-10, 10]``. ``steps`` matters: the paper's network is "relatively smooth and not perfectly
    fit" to the staircase, and that is what lets a cubic replace it over ``[-1, 1]``. Trained
    much longer, the network learns the steps, its Taylor series at 0 stops converging on
    ``[-1, 1]`` and no cubic replaces it (the notebook shows both, and how
    ``TaylorPolynomial.convergence_ratios`` tells them apart).

    Returns:
        ``(model, training_mse)``.
    """
    torch.manual_seed(seed)
    model = mlp(1, width)
    e = torch.linspace(-SCALE, SCALE, 401, dtype=DTYPE)[:, None]
    loss = fit_adam(model, e / SCALE, staircase(e) / SCALE - 1, steps=steps, lr=1e-2)
    return model.eval(), loss


def simulate_tank(
    controller: Callable[[Tensor], Tensor],
    initial_levels: Sequence[float],
    duration: float = 5.0,
    dt: float = 0.01,
    gain: float = 1.0,
    time_constant: float = 1.0,
) -> Tensor:
    """Closed loop of Eq. 73, ``T dh/dt = K q1 - h``, ``q1 = 10 (controller(e / 10) + 1)``,
    ``e = h_s - h``, integrated by classic Runge-Kutta (RK4) from each initial level at once.

    Returns:
        ``(len(initial_levels), steps + 1)`` levels, the first column the initial ones.
    """

    def slope(h: Tensor) -> Tensor:
        inflow = SCALE * (controller((SETPOINT - h) / SCALE) + 1)
        return (gain * inflow - h) / time_constant

    h = torch.tensor(initial_levels, dtype=DTYPE)[:, None]
    levels = [h]
    with torch.no_grad():
        for _ in range(round(duration / dt)):
            k1 = slope(h)
            k2 = slope(h + dt / 2 * k1)
            k3 = slope(h + dt / 2 * k2)
            k4 = slope(h + dt * k3)
            h = h + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            levels.append(h)
    return torch.cat(levels, dim=1)


def inference_times(
    modules: dict[str, nn.Module],
    batch_sizes: Sequence[int] = (1, 16, 256, 4096),
    repeats: int = 50,
    dtype: torch.dtype = torch.float32,
) -> dict[str, list[float]]:
    """Median milliseconds per call of each module at each batch size (inputs ``(B, 1)``),
    measured alternately in one process so that the ratios are comparable (the Table 3 setup)."""
    modules = {name: copy.deepcopy(module).to(dtype) for name, module in modules.items()}
    times: dict[str, list[float]] = {name: [] for name in modules}
    with torch.inference_mode():
        for batch in batch_sizes:
            x = torch.rand(batch, 1, dtype=dtype) * 2 - 1
            samples: dict[str, list[float]] = {name: [] for name in modules}
            for _ in range(5):  # warm-up
                for module in modules.values():
                    module(x)
            for _ in range(repeats):
                for name, module in modules.items():
                    start = time.perf_counter()
                    module(x)
                    samples[name].append(time.perf_counter() - start)
            for name in modules:
                times[name].append(1e3 * sorted(samples[name])[repeats // 2])
    return times
