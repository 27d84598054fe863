"""The HOPE paper's function discovery (Sec. 5.5, Eq. 71-72, and its code's second example).

    python examples/polynomials/discovery.py [--seed 0]

Trains the two networks of ``paper_functions.py`` (a few seconds), prints the first one's order-2
polynomials at (0, 0), (0.5, 0.5) and (-0.5, -0.5), written in powers of ``x``, and the terms
discovered in the second one from order-3 expansions around the origin (mean and spread).
"""

from __future__ import annotations

import argparse

import paper_functions as paper
import torch

import hope_attr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: more threads only add overhead

    model, rmse = paper.train_quadratic(args.seed)
    print(f"y = (x1^2 + x2) / 2: 2-32-32-1 tanh MLP, test RMSE {rmse:.2e}")
    for point in [(0.0, 0.0), (0.5, 0.5), (-0.5, -0.5)]:
        poly = hope_attr.expand(model, torch.tensor(point, dtype=torch.float64), order=2)
        local = poly.to_sympy(threshold=0.01, digits=3)
        global_ = poly.to_sympy(around_zero=True, threshold=0.01, digits=3)
        print(f"  at {point}: y = {local}\n  {' ' * len(str(point))}      = {global_}")

    model, rmse = paper.train_interactions(args.seed)
    print(f"\ny = 0.5 + x1 + 0.6 x2 x3 - 0.8 x2 x4 + x1 x2 x3 - x3 x5: test RMSE {rmse:.2e}")
    found = hope_attr.discover(model, torch.zeros(5, dtype=torch.float64), 0.5, 30, order=3)
    for mean, spread, monomial in found.terms()[:8]:
        print(f"  {monomial:>10}: {mean:+.3f} +- {spread:.3f}")
    print(f"  y = {found.mean.to_sympy(threshold=0.1, digits=3)}")


if __name__ == "__main__":
    main()
