"""Intra-op threads fitted to the cores other processes leave free (hope_attr.engine.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import hope_attr
from hope_attr.engine import threads as _threads

linux_only = pytest.mark.skipif(
    not Path("/proc/loadavg").exists(), reason="reads Linux's /proc/loadavg"
)


@pytest.fixture
def two_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two intra-op threads, adaptation on (the suite turns it off in conftest.py); restored."""
    monkeypatch.delenv("HOPE_ATTR_ADAPT_THREADS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test reads the machine anew (calls in a loop reuse the last reading)."""
    monkeypatch.setattr(_threads, "_last_reading", None)


def _machine(monkeypatch: pytest.MonkeyPatch, cores: int, runnable: list[int], ours: int) -> None:
    """Pretend: ``cores`` CPUs, successive readings ``runnable`` of the machine, ``ours`` ours."""
    readings = iter(runnable)
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(_threads, "_runnable_tasks", lambda: next(readings))
    monkeypatch.setattr(_threads, "_our_runnable_threads", lambda: ours)
    monkeypatch.setattr(_threads, "_SAMPLE_INTERVAL_S", 0.0)
    monkeypatch.setattr(_threads, "_last_reading", None)


def test_free_cores_counts_only_other_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cores=2, runnable=[2], ours=2)  # our reader and a spinning worker
    assert _threads.free_cores() == 2


def test_free_cores_takes_the_fewest_of_several_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cores=4, runnable=[4, 2, 3], ours=1)
    assert _threads.free_cores() == 3  # 1 other task at the quietest reading
    _machine(monkeypatch, cores=4, runnable=[6, 5, 7], ours=1)
    assert _threads.free_cores() == 0
    _machine(monkeypatch, cores=2, runnable=[1], ours=1)  # a quiet machine: one reading suffices
    assert _threads.free_cores() == 2


def test_without_proc_nothing_is_known(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_threads, "_LOADAVG", tmp_path / "missing")
    assert _threads.free_cores() is None


@pytest.mark.parametrize(
    ("cores", "runnable", "inside"),
    [(2, [2, 2, 2], 1), (2, [3, 3, 3], 1), (2, [1], 2), (4, [3, 3, 3], 2), (2, [2, 1], 2)],
)
def test_the_block_runs_on_the_free_cores_and_restores_the_count(
    monkeypatch: pytest.MonkeyPatch, two_threads: None, cores: int, runnable: list, inside: int
) -> None:
    _machine(monkeypatch, cores=cores, runnable=runnable, ours=1)
    with _threads.fitted_to_free_cores():
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == 2
    _machine(monkeypatch, cores=cores, runnable=runnable, ours=1)
    with pytest.raises(RuntimeError, match="inside"), _threads.fitted_to_free_cores():
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def test_the_variable_turns_adaptation_off(
    monkeypatch: pytest.MonkeyPatch, two_threads: None
) -> None:
    _machine(monkeypatch, cores=2, runnable=[3, 3, 3], ours=1)
    monkeypatch.setenv("HOPE_ATTR_ADAPT_THREADS", "0")
    with _threads.fitted_to_free_cores():
        assert torch.get_num_threads() == 2


class _ThreadsSeen(nn.Module):
    """A tanh layer that records the intra-op thread count its forward ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2).double()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return torch.tanh(self.linear(x))


def test_every_public_call_runs_on_the_free_cores(
    monkeypatch: pytest.MonkeyPatch, two_threads: None
) -> None:
    """On a machine with one core taken, the forward passes of each entry point run on one
    thread, the results match those of two fixed threads and the caller's count is restored."""
    torch.manual_seed(0)
    model = _ThreadsSeen().eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    calls = {
        "unmixed_derivatives": lambda: hope_attr.unmixed_derivatives(model, x, 3),
        "mixed_derivatives": lambda: hope_attr.mixed_derivatives(model, x, 2),
        "attribute": lambda: hope_attr.HOPEAttribution(model, order=3).attribute(x, target=0),
        "attribute_all_targets": lambda: hope_attr.HOPEAttribution(
            model, order=3
        ).attribute_all_targets(x),
        "interactions": lambda: hope_attr.interactions(model, x[:1], order=2, target=0),
    }
    for name, call in calls.items():
        with monkeypatch.context() as patched:
            patched.setenv("HOPE_ATTR_ADAPT_THREADS", "0")
            fixed = call()
        model.seen.clear()
        with monkeypatch.context() as patched:
            patched.setattr(_threads, "free_cores", lambda: 1)
            fitted = call()
        assert model.seen and set(model.seen) == {1}, (name, model.seen)
        assert torch.get_num_threads() == 2, name
        for a, b in zip(
            fixed if isinstance(fixed, tuple) else [fixed],
            fitted if isinstance(fitted, tuple) else [fitted],
            strict=True,
        ):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@linux_only
def test_a_busy_process_is_seen() -> None:
    """A CPU-bound process is runnable all the time, scheduled or not: one core fewer is free."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        free = _threads.free_cores()
        assert free is not None and free <= (os.cpu_count() or 1) - 1
    finally:
        busy.kill()
        busy.wait()


@linux_only
def test_the_reader_counts_itself() -> None:
    assert _threads._our_runnable_threads() >= 1


def test_concurrent_blocks_share_one_decision(
    monkeypatch: pytest.MonkeyPatch, two_threads: None
) -> None:
    """The count is process-wide: a block that ends while another runs must not restore it, and
    after the last one the caller's count is back."""
    monkeypatch.setattr(_threads, "free_cores", lambda: 1)
    first_inside, second_done = threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        with _threads.fitted_to_free_cores():
            first_inside.set()
            second_done.wait(timeout=10)
            seen.append(torch.get_num_threads())

    def second() -> None:
        first_inside.wait(timeout=10)
        with _threads.fitted_to_free_cores():
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())  # the first block still runs
        second_done.set()

    workers = [threading.Thread(target=first), threading.Thread(target=second)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == 2


def test_calls_in_a_loop_reuse_the_last_reading(
    monkeypatch: pytest.MonkeyPatch, two_threads: None
) -> None:
    readings: list[int] = []
    monkeypatch.setattr(_threads, "free_cores", lambda: readings.append(1) or 1)
    for _ in range(3):
        with _threads.fitted_to_free_cores():
            assert torch.get_num_threads() == 1
    assert len(readings) == 1
    monkeypatch.setattr(_threads, "_READING_REUSED_FOR_S", 0.0)
    time.sleep(0.01)
    with _threads.fitted_to_free_cores():
        pass
    assert len(readings) == 2
