"""Benchmark: peak memory and time of re-centering a Taylor polynomial (issue 12, item 3).

A full Taylor polynomial of ``p`` variables and order ``n`` (all ``M = C(p + n, n)`` monomials,
random coefficients, ``--outputs`` outputs) is re-centered, printed around zero with
``terms(around_zero=True)``, and re-centered in a batch of points as ``discover`` does. Each
measurement runs in a fresh process (``ru_maxrss`` only grows) and reports the peak resident
memory above the process's state right before the call, and the wall time.

Run from the repository root: ``OMP_NUM_THREADS=1 python -m benchmarks.recenter_memory`` (each
measurement is printed as a line of JSON; ``--markdown PATH`` also writes them as a table).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: this checkout's benchmarks and hope_attr
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _harness  # noqa: E402

WHAT = ("recenter", "terms_around_zero", "recenter_many")


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


def page(results: list[dict], session: _harness.Run) -> str:
    """The measurements as a markdown page."""
    # The time first: a case is named by the cells before its first time (compare.py).
    header = ["what", "variables", "order", "monomials", "outputs", "time (s)"]
    rows = [[str(r[key]) for key in ("what", "variables", "order", "monomials", "outputs")]
            + [f"{r['seconds']:.3f}", f"{r['extra_peak_MiB']:.1f}"] for r in results]  # fmt: skip
    lines = ["# Re-centering a Taylor polynomial: peak memory and time", ""]
    lines += [f"- command: `python -m benchmarks.recenter_memory {' '.join(sys.argv[1:])}`"]
    lines += [f"- {_harness.revision()}; {_harness.versions()}", f"- {session.load_line()}", ""]
    return "\n".join([*lines, _harness.table([*header, "extra peak [MiB]"], rows)]) + "\n"


def main() -> None:
    parser = _harness.parser(__doc__)
    parser.add_argument("--variables", type=int, default=8)
    parser.add_argument("--order", type=int, default=6)
    parser.add_argument("--outputs", type=int, default=1)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _harness.reply(_measure(**json.loads(args.child)))
        return
    session = _harness.Run()
    sizes = {key: getattr(args, key) for key in ("variables", "order", "outputs", "points")}
    results = []
    for what in WHAT:  # each in a fresh process: ru_maxrss only grows
        results.append(_harness.run_child(Path(__file__).resolve(), {"what": what, **sizes}))
        print(json.dumps(results[-1]), flush=True)
    _harness.save(args, page(results, session))


if __name__ == "__main__":
    main()
