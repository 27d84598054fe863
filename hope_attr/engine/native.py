"""Compiled series kernels: the Riccati recurrence in one pass over memory.

:func:`hope_attr.engine.jet.riccati_series` (tanh, sigmoid, exp of a series) runs about ``n^2``
eager operations, each a pass over the whole series: 85 at order 10. On a CPU each pass is
cheap, but the passes are the time: the second tanh of the MNIST CNN at order 10 was 38% of an
all-classes attribution. The C kernel in ``native_series.c`` computes every order of a block of
64 elements in a few KiB of stack, so the series are read once and written once (2-2.5x faster on
that tanh; ``benchmarks/default_env.py`` measures the whole call).

The kernel is compiled once per machine with the system's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) into ``$HOPE_ATTR_CACHE_DIR`` (default ``~/.cache/hope_attr``) and loaded
with :mod:`ctypes`; a compile takes a fraction of a second. Where there is no compiler, the
compile fails, or ``HOPE_ATTR_NATIVE=0`` is set, :func:`riccati` declines and the caller runs the
eager loops: the same numbers up to rounding, only slower. Tensors on other devices, other
dtypes than float32/float64, orders above 32 and tensors that need gradients take the eager path
as well.

Threads: ``ctypes`` releases the GIL, so a large series is split between as many Python threads
as torch has intra-op threads (which :mod:`hope_attr.engine.threads` fits to the free cores).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "riccati"]

_log = logging.getLogger("hope_attr")
_SOURCE = Path(__file__).with_name("native_series.c")
_BLOCK = 64  # the kernel's block of elements (BLOCK in the C source): thread ranges align to it
_MAX_ORDER = 32  # MAX_ORDER in the C source (the library reports its own; checked on loading)
# Below this many values (elements x orders) one thread does the whole series: handing a range to
# another thread costs tens of microseconds.
_THREADED_VALUES = 2**17
_FUNCTIONS = {torch.float32: "hope_riccati_float32", torch.float64: "hope_riccati_float64"}

_lock = threading.Lock()
_state: dict[str, object] = {}  # "library": CDLL | None, "reason": why there is none
_pool: ThreadPoolExecutor | None = None


def available() -> bool:
    """Whether the compiled kernels can run here (compiling them on the first call)."""
    return _library() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is false (``None`` when it is true)."""
    _library()
    return _state.get("reason")  # type: ignore[return-value]


def riccati(
    y0: Tensor,
    slope0: Tensor,
    u: Tensor,
    out: Tensor,
    linear: float,
    quadratic: float,
) -> bool:
    """Fill ``out`` (``(n, *shape)``, contiguous) with coefficients ``1..n`` of ``g(x0 + u(t))``
    for ``g' = a + linear g + quadratic g^2``, as :func:`hope_attr.engine.jet.riccati_series`
    defines them; ``False`` (and ``out`` untouched) where the compiled kernel does not apply.

    ``u`` is ``(m, *shape)``; ``y0`` (``g(x0)``) and ``slope0`` (``g'(x0)``) broadcast to
    ``shape``.
    """
    order, shape = out.shape[0], tuple(out.shape[1:])
    dtype = out.dtype
    if (
        out.device.type != "cpu"
        or dtype not in _FUNCTIONS
        or not 1 <= order <= _MAX_ORDER
        or any(t.dtype != dtype or t.device != out.device for t in (y0, slope0, u))
        or tuple(u.shape[1:]) != shape  # u broadcast over an axis: rare, left to the eager loops
        or not out.is_contiguous()
        or (torch.is_grad_enabled() and any(t.requires_grad for t in (y0, slope0, u)))
        or os.environ.get("HOPE_ATTR_NATIVE", "1") == "0"
    ):
        return False
    library = _library()
    if library is None:
        return False
    m = min(u.shape[0], order)
    u = u[:m].contiguous()
    y0, slope0, period = _periodic(y0, slope0, shape)
    elements = math.prod(shape)
    if elements == 0:
        return True
    kernel = getattr(library, _FUNCTIONS[dtype])
    arguments = (
        out.data_ptr(), u.data_ptr(), y0.data_ptr(), slope0.data_ptr(),
        elements, period, m, order, float(linear), float(quadratic),
    )  # fmt: skip
    threads = min(torch.get_num_threads(), max(1, elements * order // _THREADED_VALUES))
    cuts = [elements * i // threads // _BLOCK * _BLOCK for i in range(threads)] + [elements]
    if threads == 1:
        kernel(*arguments, 0, elements)
        return True
    pool = _thread_pool(threads - 1)
    others = [pool.submit(kernel, *arguments, cuts[i], cuts[i + 1]) for i in range(1, threads)]
    kernel(*arguments, cuts[0], cuts[1])
    for future in others:
        future.result()
    return True


def _periodic(y0: Tensor, slope0: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor, int]:
    """``y0`` and ``slope0`` as contiguous blocks that repeat with one period over ``shape``.

    A primal broadcast over the series' leading axes (directions, batch) is passed as it is, with
    the period of its own size; anything else is expanded to the whole shape first.
    """

    def period(t: Tensor) -> int | None:
        own = list(t.shape)
        while own and own[0] == 1:
            own.pop(0)  # leading ones broadcast like missing axes
        if len(own) > len(shape) or tuple(own) != shape[len(shape) - len(own) :]:
            return None
        return math.prod(own)

    p0, p1 = period(y0), period(slope0)
    if p0 is not None and p0 == p1:
        return y0.contiguous(), slope0.contiguous(), p0
    full = math.prod(shape)
    return y0.expand(shape).contiguous(), slope0.expand(shape).contiguous(), full


def _forget_threads_in_child() -> None:
    # A forked child (DataLoader workers, multiprocessing) inherits the pool object but not its
    # threads: work handed to it would wait forever.
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_in_child)


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hope_attr")
        return _pool


def _library() -> ctypes.CDLL | None:
    if "library" in _state:
        return _state["library"]  # type: ignore[return-value]
    with _lock:
        if "library" not in _state:
            try:
                _state["library"] = _load()
            except (OSError, subprocess.SubprocessError, ValueError) as error:
                _state["library"] = None
                _state["reason"] = f"{type(error).__name__}: {error}"
                _log.info("hope_attr: compiled series kernels unavailable (%s)", error)
    return _state["library"]  # type: ignore[return-value]


def find_compiler() -> str | None:
    """The C compiler the kernel is built with: ``$CC``, else ``cc``, ``gcc`` or ``clang``."""
    return os.environ.get("CC") or next(
        (found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None
    )


def _load() -> ctypes.CDLL:
    compiler = find_compiler()
    if compiler is None:
        raise ValueError("no C compiler found (set CC to one)")
    # No fused multiply-adds: GCC fused some of a block's vectors and not others, so an element's
    # last bit depended on where in its block it sat, and results on internal_batch_size.
    flags = ["-O3", "-std=gnu99", "-fPIC", "-shared", "-ffp-contract=off"]
    if platform.machine().lower() in ("x86_64", "amd64") and _cpu_has_avx2():
        flags += ["-mavx2", "-mfma"]
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), *map(str.encode, flags)]))
    directory = Path(
        os.environ.get("HOPE_ATTR_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hope_attr"
    )
    path = directory / f"series-{key.hexdigest()[:16]}.so"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        # Compile beside the target and rename: processes that compile at once never load a
        # half-written file.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(handle)
        try:
            subprocess.run(
                [compiler, *flags, str(_SOURCE), "-o", partial],
                check=True,
                capture_output=True,
                timeout=120,
            )
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    library = ctypes.CDLL(str(path))
    pointer, integer = ctypes.c_void_p, ctypes.c_long
    for name in _FUNCTIONS.values():
        function = getattr(library, name)
        function.restype = None
        # (y, u, y0, slope0, E, P, m, n, linear, quadratic, start, stop)
        function.argtypes = [
            *(pointer,) * 4, integer, integer, ctypes.c_int, ctypes.c_int,
            ctypes.c_double, ctypes.c_double, integer, integer,
        ]  # fmt: skip
    if library.hope_max_order() != _MAX_ORDER:
        raise ValueError("the compiled kernel does not match this version of hope_attr")
    return library


def _cpu_has_avx2() -> bool:
    """Whether this CPU runs AVX2 and FMA (torch's own dispatch reads the same)."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")()
    return capability in ("AVX2", "AVX512")
