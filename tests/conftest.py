"""Shared fixtures and the Hypothesis profiles."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import settings

import hope_attr
from hope_attr.engine.resources import Resources

# CI must not fail on an example no earlier run drew: by default the property tests draw the same
# examples every run (and keep no database). `HYPOTHESIS_PROFILE=explore python -m pytest` draws
# fresh random examples to hunt for new failures; a failure prints the example to add with
# `@example(...)`.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture
def policy() -> Iterator[Callable[..., Resources]]:
    """``policy(**changes)`` changes this thread's resource policy (:func:`hope_attr.resources`)
    for the rest of the test; the policy in force before comes back at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(hope_attr.resources(**changes))


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add overhead, and spin-waiting makes a busy 2-core
    machine several times slower. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def chunk_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many directions each chunk of an expansion propagated, in order (a spy on
    ``Expansion._propagate``, removed after the test)."""
    from hope_attr.engine import expansion as _derivatives

    sizes: list[int] = []
    propagate = _derivatives.Expansion._propagate

    def spy(self, args, num_directions, probe=None):  # noqa: ANN001, ANN202
        sizes.append(num_directions)
        return propagate(self, args, num_directions, probe)

    monkeypatch.setattr(_derivatives.Expansion, "_propagate", spy)
    return sizes
