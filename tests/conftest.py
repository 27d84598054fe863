"""Shared fixtures and the Hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

# CI must not fail on an example no earlier run drew: by default the property tests draw the same
# examples every run (and keep no database). `HYPOTHESIS_PROFILE=explore python -m pytest` draws
# fresh random examples to hunt for new failures; a failure prints the example to add with
# `@example(...)`.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead, and spin-waiting makes a busy 2-core
    machine several times slower. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
