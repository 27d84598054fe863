"""Benchmarks of hope_attr.

``derivatives`` times the derivative engine (a script); ``attribution`` is the harness that
compares HOPE with Captum's attribution methods (a library, used by examples/mnist/tutorial.py).
"""
