"""What the benchmark scripts share: timing, the run's environment, the report and its results.

* timing: :func:`repeat` (a warm-up, then the wall and CPU times of up to ``repeats`` calls, or
  where a :class:`BudgetExceeded` stopped them), :class:`Budget` (the time and memory a call may
  take, checked by the call as it goes), :func:`interleaved_rounds` (methods interleaved per
  round, so that a burst of load hits all of them alike), :func:`timed_median`,
  :func:`per_call_seconds` (calls too short to time one by one);
* memory: :func:`proc_status_mib`, :func:`rss_mib`, and the peak of a call in a fresh process
  (:func:`reset_peak_rss`, :func:`peak_rss_mib`);
* environment: :class:`Run` (start time and load average), :func:`revision`, :func:`versions`,
  :func:`variables`, :func:`cpu_name`, and :func:`environment` (all of it, for ``--json``);
* command line and outputs: :func:`parser` / :func:`add_outputs` (``--markdown PATH``, ``--json
  PATH``), :func:`table`, :func:`save`;
* results: ``--json`` holds what :func:`benchmarks._results.results_from_markdown` reads from the
  page the script wrote (every time in its tables, every target's verdict), the function
  ``benchmarks/compare.py`` reads the pages of scripts that predate ``--json`` with: a case has
  the same name either way;
* child processes: :func:`clean_environment`, :func:`run_child`, :func:`reply`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks._results import results_from_markdown

ROOT = Path(__file__).resolve().parents[1]
ALLOCATOR_AND_OPENMP = ("MALLOC_", "OMP_")
Key = TypeVar("Key")


# =============================================================================== timing
class BudgetExceeded(Exception):
    """A call passed its time or memory budget with ``progress`` (a fraction) of its work done."""

    def __init__(self, progress: float, reason: str = "", elapsed: float | None = None) -> None:
        super().__init__(reason or f"stopped after {progress:.1%} of the work")
        self.progress, self.reason, self.elapsed = progress, reason, elapsed


class Budget:
    """The time (seconds) and extra memory (GiB of resident memory) one call may take, counted
    from the budget's creation; the call checks it as it goes.

    Example:
        >>> try:
        ...     Budget(seconds=0.0).check(1, 4)
        ... except BudgetExceeded as stop:
        ...     print(stop.progress, stop.reason)
        0.25 stopped past 0 s
    """

    def __init__(self, seconds: float = math.inf, memory_gib: float = math.inf) -> None:
        self.seconds, self.memory_gib = seconds, memory_gib
        # /proc is read at each check only where memory is limited: some loops check per feature.
        limited = math.isfinite(memory_gib)
        self.start, self.base_rss_gib = time.perf_counter(), _rss_gib() if limited else 0.0

    def check(self, done: int, total: int) -> None:
        """Raise :class:`BudgetExceeded` (with ``done / total`` of the work done) once past."""
        elapsed = time.perf_counter() - self.start
        if elapsed > self.seconds:
            raise BudgetExceeded(done / total, f"stopped past {self.seconds:.0f} s", elapsed)
        if math.isfinite(self.memory_gib) and _rss_gib() - self.base_rss_gib > self.memory_gib:
            reason = f"stopped past {self.memory_gib:g} GiB of extra memory"
            raise BudgetExceeded(done / total, reason, elapsed)


def _rss_gib() -> float:
    """Resident memory of this process (Linux), 0 where unknown."""
    return (proc_status_mib("VmRSS") or 0.0) / 1024


@dataclass
class Timing:
    """Wall and process CPU seconds (all threads) of the timed calls, or why they stopped."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    stopped_after: float | None = None  # seconds, when a budget stopped a call
    progress: float = 0.0  # the share of its work the stopped call had done
    reason: str = ""

    @property
    def completed(self) -> bool:
        return bool(self.wall)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


def time_call(call: Callable[[], Any], pause_gc: bool = False) -> tuple[float, float, Any]:
    """Wall and process CPU seconds of one call, and its result.

    ``pause_gc`` turns the garbage collector off during the call, as ``timeit`` does: a collection
    walks the ~300,000 objects torch keeps, which costs a short call a millisecond.
    """
    enabled = gc.isenabled()
    if pause_gc:
        gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        result = call()
        return time.perf_counter() - wall, time.process_time() - cpu, result
    finally:
        if enabled:
            gc.enable()


def repeat(
    call: Callable[[], Any],
    repeats: int,
    *,
    warm_up: bool = True,
    cap_s: float = math.inf,
    pause_gc: bool = False,
) -> tuple[Timing, Any]:
    """A warm-up call, then up to ``repeats`` timed calls (none once they took ``cap_s``).

    A :class:`BudgetExceeded` from a call ends the timing: the result is then ``None``.

    Example:
        >>> timing, result = repeat(lambda: sum(range(100)), 3)
        >>> len(timing.wall), result
        (3, 4950)
    """
    timing, result = Timing(), None
    try:
        if warm_up:
            call()
        while len(timing.wall) < repeats and sum(timing.wall) < cap_s:
            wall, cpu, result = time_call(call, pause_gc)
            timing.wall.append(wall)
            timing.cpu.append(cpu)
    except BudgetExceeded as stop:
        timing = Timing(stopped_after=stop.elapsed, progress=stop.progress, reason=stop.reason)
        result = None
    return timing, result


def timed_median(
    call: Callable[[], Any],
    repeats: int = 3,
    *,
    warm_up: bool = True,
    synchronize: Callable[[], None] | None = None,
) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls after a warm-up, and the last call's result.

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before and after each timed call.
    """
    result = call() if warm_up else None
    seconds = []
    for _ in range(repeats):
        if synchronize is not None:
            synchronize()
        start = time.perf_counter()
        result = call()
        if synchronize is not None:
            synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def interleaved_rounds(calls: Mapping[Key, Callable[[], Any]], rounds: int) -> dict[Key, list]:
    """Wall seconds per call: a warm-up each, then ``rounds`` rounds that run every call once.

    Example:
        >>> times = interleaved_rounds({"a": lambda: None, "b": lambda: None}, 2)
        >>> {name: len(values) for name, values in times.items()}
        {'a': 2, 'b': 2}
    """
    for call in calls.values():
        call()
    times: dict[Key, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def per_call_seconds(call: Callable[[], Any], target_s: float) -> float:
    """Median over 5 rounds of the mean time per call, each round about ``target_s / 5`` long
    (after one warm-up call): for calls far shorter than the timer's and Python's overheads.

    Example:
        >>> per_call_seconds(lambda: None, 0.01) < 1e-3
        True
    """
    call()
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= target_s / 5 or loops >= 1 << 20:
            break
        loops *= 4
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        rounds.append((time.perf_counter() - start) / loops)
    return statistics.median(rounds)


# =============================================================================== memory
def proc_status_mib(name: str) -> float | None:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in MiB (None off Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return None


def rss_mib() -> float:
    """Resident memory of this process in MiB (``VmRSS``; psutil off Linux)."""
    current = proc_status_mib("VmRSS")
    if current is not None:
        return current
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where it cannot.

    Needed because ``ru_maxrss`` of a subprocess starts at its parent's RSS (fork then exec), so
    it would report the benchmark's own memory instead of the method's.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status_mib("VmHWM") is not None


def peak_rss_mib(reset: bool) -> float:
    """The peak RSS in MiB: since :func:`reset_peak_rss` where it ``reset``, else the process's
    ``ru_maxrss`` (which may include the parent's RSS)."""
    if reset:
        return proc_status_mib("VmHWM") or 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# =============================================================================== environment
class Run:
    """One run of a script: when it started and the load average (1 min) then."""

    def __init__(self) -> None:
        self.started, self.load_at_start = time.perf_counter(), os.getloadavg()[0]

    def load_line(self) -> str:
        return (
            f"load average (1 min) at the start: {self.load_at_start:.2f}, at the end: "
            f"{os.getloadavg()[0]:.2f}; total wall time {time.perf_counter() - self.started:.0f} s"
        )


def revision(paths: Sequence[str] = ("hope_attr",)) -> str:
    """The version and git commit of the hope_attr this process imported (its checkout), and
    whether ``paths`` of that checkout differ from the commit."""
    import hope_attr

    root = Path(hope_attr.__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"hope_attr {hope_attr.__version__} (not a git checkout)"
    changed = git("status", "--porcelain", "--", *paths)
    return f"hope_attr {hope_attr.__version__}, git {commit}" + (
        f" (with uncommitted changes in {', '.join(paths)})" if changed else ""
    )


def versions(threads: int | None = None) -> str:
    """torch, Python, the machine, its CPUs and the torch threads (by default this process's
    count), in one line."""
    import torch

    return (
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {threads or torch.get_num_threads()}"
    )


def variables(names: Sequence[str] | None = None) -> str:
    """``NAME=value`` of ``names`` (``(unset)`` where unset); by default every ``MALLOC_*`` and
    ``OMP_*`` variable that is set.

    Example:
        >>> variables(["HOPE_ATTR_NO_SUCH_SETTING"])
        'HOPE_ATTR_NO_SUCH_SETTING=(unset)'
    """
    if names is not None:
        return ", ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in names)
    found = [
        f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(ALLOCATOR_AND_OPENMP)
    ]
    return ", ".join(found) or "default (no MALLOC_*/OMP_* variable)"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment() -> dict[str, Any]:
    """Everything above as one dict (the ``environment`` of ``--json``)."""
    import torch

    import hope_attr

    prefixes = (*ALLOCATOR_AND_OPENMP, "HOPE_ATTR_")
    return {
        "hope_attr": revision(),
        "hope_attr_file": hope_attr.__file__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "variables": {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefixes)},
        "load_average": os.getloadavg()[0],
    }


# =============================================================================== outputs
def add_outputs(parser: argparse.ArgumentParser, *markdown_flags: str) -> None:
    """``--markdown PATH`` (or ``markdown_flags``) and ``--json PATH`` (see :func:`save`)."""
    parser.add_argument(
        *(markdown_flags or ("--markdown",)), dest="markdown", type=Path,
        help="also write the report as markdown here",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, help="also write the results (every time, every target) as JSON here"
    )


def parser(doc: str, quick: str | None = None) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with the outputs and, given its help
    text, ``--quick``.

    Example:
        >>> args = parser("A benchmark.", quick="a smoke test").parse_args(["--json", "r.json"])
        >>> args.quick, args.markdown, str(args.json)
        (False, None, 'r.json')
    """
    result = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_outputs(result)
    if quick is not None:
        result.add_argument("--quick", action="store_true", help=quick)
    return result


def table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = True) -> str:
    """A markdown table, or (``markdown=False``) columns aligned for a terminal.

    Example:
        >>> print(table(["a", "b"], [["1", "2"]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, ["-" * w for w in widths], *rows]
    )


def save(args: argparse.Namespace, page: str) -> None:
    """Write ``page`` to ``args.markdown`` and its results to ``args.json``, where given."""
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(page)
    if args.json:
        results = {"command": ["python", *sys.argv], "environment": environment()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, **results_from_markdown(page)}, indent=1))


# =============================================================================== children
def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without any allocator or OpenMP setting, plus ``extra``; the
    checkout of this harness first on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ALLOCATOR_AND_OPENMP)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def run_child(
    script: str | Path, spec: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``script --child SPEC`` (the spec as JSON) from the checkout; the JSON of the last line
    it prints (see :func:`reply`). Raises ``RuntimeError`` with its error output if it fails."""
    command = [sys.executable, str(script), "--child", json.dumps(spec)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(script).name} --child failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def reply(result: Mapping[str, Any]) -> None:
    """A child's answer to :func:`run_child`: one line of JSON, the last it prints."""
    print(json.dumps(result), flush=True)
