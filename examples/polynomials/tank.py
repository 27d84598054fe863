"""The HOPE paper's tank-level controller (Fig. 6, Table 3) replaced by its cubic.

    python examples/polynomials/tank.py [--seed 0] [--steps 500]

Trains the controller network on the staircase law of Eq. 74, expands it at ``e = 0`` to order
3, simulates the closed loop ``dh/dt = q1 - h`` with each, and times both at growing batch sizes
(float32, medians of alternating calls in this process; on a CPU, unlike the paper's GPU).
``--steps 3000`` trains a network that learns the steps: its convergence ratios explode and the
cubic no longer replaces it.
"""

from __future__ import annotations

import argparse

import paper_functions as paper
import torch

import hope_attr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=500, help="Adam steps for the controller")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: more threads only add overhead

    controller, loss = paper.train_tank_controller(args.seed, args.steps)
    cubic = hope_attr.expand(controller, torch.zeros(1, dtype=torch.float64), 3, names=["e"])
    surrogate = cubic.to_module()
    e = torch.linspace(-1, 1, 2001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        gap = (surrogate(e) - controller(e)).abs().max().item()
    print(f"controller: training MSE {loss:.4f}; cubic u(e) = {cubic.to_sympy(digits=4)}")
    ratios = [round(r, 3) for r in cubic.convergence_ratios().tolist()]
    print(f"convergence ratios |d^k f| / |d f|, k = 1..3: {ratios}")
    print(f"max |network - cubic| on [-1, 1]: {gap:.4f}")

    levels = [0.0, 5.0, 15.0, 20.0]
    with_network = paper.simulate_tank(controller, levels)
    with_cubic = paper.simulate_tank(surrogate, levels)
    difference = (with_network - with_cubic).abs().max().item()
    outcome = f"{difference:.4f}" if difference == difference else "nan: the cubic's loop diverges"
    print(f"closed loop from h = {levels}: max |h_net - h_cubic| = {outcome}")

    batch_sizes = (1, 4, 16, 64, 256, 1024, 4096)
    times = paper.inference_times({"network": controller, "cubic": surrogate}, batch_sizes)
    print(f"\n{'batch':>6} {'network ms':>11} {'cubic ms':>9} {'ratio':>6}")
    for i, batch in enumerate(batch_sizes):
        network_ms, cubic_ms = times["network"][i], times["cubic"][i]
        print(f"{batch:>6} {network_ms:11.4f} {cubic_ms:9.4f} {network_ms / cubic_ms:6.2f}")


if __name__ == "__main__":
    main()
