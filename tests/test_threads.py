"""Torch's thread count is the user's: no hope_attr call changes it, from any thread.

(hope_attr used to lower the count while other processes were busy. In torch 2.14 the count is
process-wide for ``torch.get_num_threads`` -- a worker's ``set_num_threads`` is what the main
thread reads next -- so any library-side change races with the application's own threads.)
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import hope_attr


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()


def _every_public_call(model: nn.Module, x: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings are beside the point here
        hope_attr.unmixed_derivatives(model, x, 3)
        hope_attr.HOPEAttribution(model, order=3).attribute(x, target=0)
        hope_attr.HOPEAttribution(model, order=3, method="continuation").attribute(x, target=0)
        hope_attr.HOPEAttribution(model, order=3).attribute_all_targets(x)
        hope_attr.mixed_derivatives(model, x, 2)
        hope_attr.expand(model, x[0], 2)


@pytest.fixture
def recorded_settings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``torch.set_num_threads`` call made while the test runs."""
    seen: list[int] = []
    original = torch.set_num_threads

    def recording(n: int) -> None:
        seen.append(n)
        original(n)

    monkeypatch.setattr(torch, "set_num_threads", recording)
    return seen


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="a busy process, seen by Linux")
def test_no_call_changes_the_thread_count_even_on_a_busy_machine(recorded_settings) -> None:
    """The old code lowered the count while another process was busy: now nothing touches it."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    before = torch.get_num_threads()
    try:
        time.sleep(0.3)
        _every_public_call(_model(), torch.randn(2, 6, dtype=torch.float64))
        assert recorded_settings == [] and torch.get_num_threads() == before
    finally:
        busy.kill()
        busy.wait()


def test_calls_from_several_threads_leave_the_count_alone(recorded_settings) -> None:
    """A call in the main thread while another runs in a worker, then several workers at once:
    every thread reads the count it read before, and nothing set it."""
    model, x = _model(), torch.randn(2, 6, dtype=torch.float64)
    before = torch.get_num_threads()
    seen: dict[str, tuple[int, int]] = {}
    failures: list[BaseException] = []
    started = threading.Event()

    def worker(name: str) -> None:
        try:
            first = torch.get_num_threads()
            started.set()
            for _ in range(3):
                _every_public_call(model, x)
            seen[name] = (first, torch.get_num_threads())
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    workers = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    workers[0].start()
    started.wait()
    _every_public_call(model, x)  # the main thread calls while a worker's call runs
    for w in workers[1:]:
        w.start()
    for w in workers:
        w.join()
    assert not failures, failures[0]
    assert len(seen) == 3 and all(a == b == before for a, b in seen.values()), seen
    assert recorded_settings == [] and torch.get_num_threads() == before
