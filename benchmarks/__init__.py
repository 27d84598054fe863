"""Benchmarks of hope_attr: scripts, run from the repository root (``python benchmarks/X.py``).

Every script shares :mod:`benchmarks._harness` (timing, the run's environment, the report written
with ``--markdown PATH`` and its results with ``--json PATH``); ``benchmarks/compare.py`` runs one
script for two source trees and prints their results side by side. :mod:`benchmarks.methods` and
:mod:`benchmarks.attribution` are also a library: the attribution methods compared and the scores
of ``examples/mnist/tutorial.py``. The committed results are in ``benchmarks/results/``.
"""
