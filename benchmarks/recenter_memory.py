"""Benchmark: peak memory and time of re-centering a Taylor polynomial (issue 12, item 3).

A full Taylor polynomial of ``p`` variables and order ``n`` (all ``M = C(p + n, n)`` monomials,
random coefficients, ``--outputs`` outputs) is re-centered, printed around zero with
``terms(around_zero=True)``, and re-centered in a batch of points as ``discover`` does. Each
measurement runs in a fresh process (``ru_maxrss`` only grows) and reports the peak resident
memory above the process's state right before the call, and the wall time.

Run from the repository root: ``OMP_NUM_THREADS=1 python -m benchmarks.recenter_memory``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _measure(what: str, variables: int, order: int, outputs: int, points: int) -> dict:
    import torch

    from hope_attr import TaylorPolynomial
    from hope_attr.derivatives.monomials import multi_indices

    exponents = [(0,) * variables]
    for degree in range(1, order + 1):
        exponents.extend(multi_indices(variables, degree))
    generator = torch.Generator().manual_seed(0)
    coefficients = torch.randn(len(exponents), outputs, generator=generator, dtype=torch.float64)
    center = torch.rand(variables, generator=generator, dtype=torch.float64)
    poly = TaylorPolynomial(center, torch.tensor(exponents), coefficients)
    target = torch.rand(variables, generator=generator, dtype=torch.float64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if what == "recenter":
        poly.recenter(target)
    elif what == "terms_around_zero":
        poly.terms(around_zero=True)
    elif what == "recenter_many":  # what `discover` does with its points
        for _ in range(points):
            poly.recenter(target)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "what": what,
        "variables": variables,
        "order": order,
        "monomials": len(exponents),
        "outputs": outputs,
        "extra_peak_MiB": round((peak - before) / 1024, 1),  # ru_maxrss is in KiB on Linux
        "seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", type=int, default=8)
    parser.add_argument("--order", type=int, default=6)
    parser.add_argument("--outputs", type=int, default=1)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = _measure(args.one, args.variables, args.order, args.outputs, args.points)
        print(json.dumps(result))
        return
    for what in ("recenter", "terms_around_zero", "recenter_many"):
        command = [sys.executable, "-m", "benchmarks.recenter_memory", "--one", what]
        command += ["--variables", str(args.variables), "--order", str(args.order)]
        command += ["--outputs", str(args.outputs), "--points", str(args.points)]
        print(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip())


if __name__ == "__main__":
    main()
