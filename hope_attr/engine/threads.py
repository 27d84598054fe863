"""Intra-op threads on a shared CPU: no more than the cores other processes leave free.

PyTorch runs every large operation on all its intra-op (OpenMP) threads and waits at its end for
the slowest one. When another process keeps a core busy, the thread that shares that core runs
only in the scheduler's time slices, and every operation waits for it. An expansion runs thousands
of operations, so it suffers more than most: beside one CPU-bound process, the MNIST CNN's order-4
attribution of 16 digits took 3.3-10x its quiet time on 2 threads and 1.6-1.8x on 1 thread
(``python benchmarks/default_env.py``, 2-core machine, several runs).

So while an expansion runs on a CPU, :func:`fitted_to_free_cores` lowers torch's intra-op
thread count to the cores that were free when it started, and restores it afterwards.
"Free" comes from Linux's count of runnable tasks in ``/proc/loadavg`` less this process's own
runnable threads (``/proc/self/task``; OpenMP workers spin for a few milliseconds after each
operation), the fewest of a few samples a millisecond apart (a task that wakes for a moment
should not count), reused by the calls of the next quarter second. The count only ever goes
down, never below one. Where ``/proc/loadavg`` does not exist, or with
``HOPE_ATTR_ADAPT_THREADS=0`` in the environment, nothing changes.

Torch's thread count is one per process: expansions running in several Python threads share one
decision (the first lowers the count, the last restores it), and other work the process runs
meanwhile also runs on the lowered count. Results may differ in the last bits between calls that
ran on different counts (a reduction split differently); the test suite turns adaptation off.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

import torch

__all__ = ["fitted_to_free_cores", "free_cores", "on_free_cores"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_LOADAVG = Path("/proc/loadavg")
_OUR_TASKS = Path("/proc/self/task")
_SAMPLES = 3
_SAMPLE_INTERVAL_S = 1e-3
# The blocks open now in any thread, and the count the last to leave restores.
_lock = threading.Lock()
_depth = 0
_restore_to: int | None = None
# Calls in a loop reuse the last reading for a moment: a tiny model's call takes a few
# milliseconds, and reading costs 0.05 ms, or 2 ms where it must wait out a burst.
_READING_REUSED_FOR_S = 0.25
_last_reading: tuple[float, int | None] | None = None


def _runnable_tasks() -> int | None:
    """Tasks runnable on the whole machine now, ours included; ``None`` if unknown."""
    try:
        # "0.52 0.58 0.59 3/467 12345": the fourth field is runnable/existing scheduling entities.
        return int(_LOADAVG.read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def _our_runnable_threads() -> int:
    """Threads of this process that are runnable now: the reader, and OpenMP workers that still
    spin for a few milliseconds after an operation (they are not competition)."""
    try:
        tasks = os.listdir(_OUR_TASKS)
    except OSError:
        return 1  # the reader
    running = 0
    for task in tasks:
        try:
            with open(f"{_OUR_TASKS}/{task}/stat") as stat:
                # "pid (comm) S ...": the state follows the last parenthesis (comm may hold any).
                running += stat.read().rpartition(")")[2].split()[0] == "R"
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
    return running


def free_cores() -> int | None:
    """Cores that no other process wants: the CPU count less the runnable tasks that are not
    ours, or ``None`` where Linux's counts are not available.

    Our runnable threads are read on both sides of the machine's count, so that a worker of ours
    that stops spinning in between is not taken for another process. One reading when it finds
    every core free (the common case costs no wait); otherwise the fewest other tasks of a few
    readings a millisecond apart, so that a task that runs for a moment does not count.
    """
    cores = os.cpu_count() or 1
    fewest_others = None
    for i in range(_SAMPLES):
        if i:
            time.sleep(_SAMPLE_INTERVAL_S)
        ours = _our_runnable_threads()
        runnable = _runnable_tasks()
        if runnable is None:
            return None
        if runnable > ours:  # others, or a worker of ours that woke in between
            ours = max(ours, _our_runnable_threads())
        others = max(runnable - ours, 0)
        fewest_others = others if fewest_others is None else min(fewest_others, others)
        if fewest_others == 0:
            break
    return max(cores - fewest_others, 0)


@contextmanager
def fitted_to_free_cores() -> Iterator[None]:
    """Inside the block, torch uses at most as many intra-op threads as there are free cores.

    The count is process-wide, so blocks in several Python threads share one decision: the first
    to enter lowers the count, the last to leave restores it.
    """
    global _depth, _restore_to
    with _lock:
        if _depth == 0:
            _restore_to = _fitted_count()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _restore_to is not None:
                torch.set_num_threads(_restore_to)
                _restore_to = None


def _fitted_count() -> int | None:
    """Lower the thread count to the free cores; the count to restore, or ``None`` if unchanged."""
    wanted = torch.get_num_threads()
    if wanted <= 1 or os.environ.get("HOPE_ATTR_ADAPT_THREADS", "1") == "0":
        return None
    global _last_reading
    now = time.monotonic()
    if _last_reading is None or now - _last_reading[0] > _READING_REUSED_FOR_S:
        _last_reading = (now, free_cores())
    free = _last_reading[1]
    threads = wanted if free is None else max(1, min(wanted, free))
    if threads == wanted:
        return None
    torch.set_num_threads(threads)
    return wanted


def on_free_cores(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a public entry point: the whole call runs :func:`fitted_to_free_cores`."""

    @functools.wraps(function)
    def fitted(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with fitted_to_free_cores():
            return function(*args, **kwargs)

    return fitted
