"""Compiled series kernels: the Riccati recurrence in one pass over memory.

What: :func:`hope_attr.engine.jet.riccati_series` (tanh, sigmoid, exp of a series) runs about
``n^2`` eager operations, each a pass over the whole series: 85 at order 10. The C kernel in
``_series_kernel.c`` computes every order of a block of 64 elements in a few KiB of stack, so the
series are read once and written once.

Why: on a CPU each eager pass is cheap, but the passes are the time: the second tanh of the MNIST
CNN at order 10 was 38% of an all-classes attribution (``benchmarks/default_env.py`` measures the
whole call with and without the kernel).

How it is built: at install time, as the optional extension module
``hope_attr.engine._series_kernel`` (``setup.py``; ``pip install .`` and ``pip install -e .`` both
build it where a C compiler works, and install without it where none does). Nothing is compiled
at run time and no cache folder or environment path is read: the file is the one Python's import
system finds inside this package directory. Before it is loaded with :mod:`ctypes` it must be a
regular file (not a link) in that directory, owned by you or root, writable by no other user (a
group-writable file passes only where the group is the owner's own, as a umask of 002 leaves it),
and a complete shared library of this platform's format (a truncated file would be mapped past its
end and kill the process). After loading, every symbol and the kernel's ABI number are checked. The
outcome, loaded or refused, is decided once per process and never raised from a derivative call.

When it declines (:func:`riccati` returns ``False`` and the caller runs the same recurrence as
torch operations: the same numbers up to rounding, only slower): the kernel was not built, failed
its checks, or is switched off by the resource policy
(``hope_attr.resources(native_kernel=False)``; ``HOPE_ATTR_NATIVE=0`` makes off the default);
and per call for tensors on other devices, dtypes other than float32/float64, orders above 32 and
tensors that need gradients. :func:`status` says which, in words.

Threads: ``ctypes`` releases the GIL, so a large series is split between as many Python threads
as torch has intra-op threads (read, never set).

Example:
    >>> from hope_attr.engine import native
    >>> native.status().startswith(("active (", "off: "))
    True
"""

from __future__ import annotations

import ctypes
import errno
import importlib.machinery
import importlib.util
import logging
import math
import os
import stat
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from hope_attr.engine import resources as _resources

__all__ = ["available", "riccati", "status", "unavailable_reason"]

_log = logging.getLogger("hope_attr")
_MODULE = "hope_attr.engine._series_kernel"
_ABI = 2  # HOPE_KERNEL_ABI in the C source: bump both when a signature or meaning changes
_BLOCK = 64  # the kernel's block of elements (BLOCK in the C source): thread ranges align to it
_MAX_ORDER = 32  # MAX_ORDER in the C source (the library reports its own; checked on loading)
# Below this many values (elements x orders) one thread does the whole series: handing a range to
# another thread costs tens of microseconds.
_THREADED_VALUES = 2**17
_FUNCTIONS = {torch.float32: "hope_riccati_float32", torch.float64: "hope_riccati_float64"}
_FORMAT = {"darwin": "Mach-O", "win32": "PE", "cygwin": "PE"}.get(sys.platform, "ELF")
_REBUILD = (
    "rebuild it with a C compiler present: `pip install --force-reinstall --no-deps -e .` in "
    "the checkout (`pip install --force-reinstall --no-deps .` for a non-editable install)"
)
_POLICY_OFF = (
    "off: switched off by the resource policy (Resources.native_kernel is False; "
    "HOPE_ATTR_NATIVE=0 makes that the default)"
)

_lock = threading.Lock()
# "library": CDLL | None once decided; "path": the file loaded; "reason": why there is none.
_state: dict[str, object] = {}
_pool: ThreadPoolExecutor | None = None


class _Refused(Exception):
    """The kernel file may not or cannot be used; the message says why and what to do."""


def status() -> str:
    """Whether the compiled kernel runs for calls made now in this thread, and if not, why.

    Returns:
        ``"active (<path of the loaded file>)"`` or ``"off: <reason>"``: not built at install
        time, switched off by the resource policy, failed validation, unsupported platform.

    Example:
        >>> from hope_attr.engine import native
        >>> from hope_attr.engine.resources import resources
        >>> with resources(native_kernel=False):
        ...     native.status().startswith("off: switched off by the resource policy")
        True
    """
    if not _resources.current().native_kernel:
        return _POLICY_OFF  # the file is not even opened
    if _library() is None:
        return f"off: {_state['reason']}"
    return f"active ({_state['path']})"


def available() -> bool:
    """Whether :func:`riccati` runs the compiled kernel now (built, valid, allowed)."""
    return status().startswith("active")


def unavailable_reason() -> str | None:
    """Why :func:`available` is false, as :func:`status` words it (``None`` when it is true)."""
    text = status()
    return None if text.startswith("active") else text.removeprefix("off: ")


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
        or not _resources.current().native_kernel
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
    """The loaded kernel, or ``None``; decided on the first call of the process, then kept."""
    if "library" in _state:
        return _state["library"]  # type: ignore[return-value]
    with _lock:
        if "library" not in _state:
            try:
                path, directory = _locate()
                _state["library"], _state["path"] = _load(path, directory), path
            except _Refused as error:
                _decline(str(error))
            except Exception as error:  # the loader's own errors, or anything: torch loops, once
                _decline(f"failed to load: {type(error).__name__}: {error}")
    return _state["library"]  # type: ignore[return-value]


def _decline(reason: str) -> None:
    _state["library"], _state["reason"] = None, reason
    # A refused file is worth a warning (someone else's, or a broken build); a kernel that was
    # never built is the ordinary state of a machine without a compiler (status() tells).
    level = logging.INFO if reason.startswith("not built") else logging.WARNING
    _log.log(level, "hope_attr: compiled series kernel off: %s", reason)


def _locate() -> tuple[Path, Path]:
    """The built extension's file, as Python's import system finds it, and this package folder."""
    if sys.platform in ("emscripten", "wasi"):
        raise _Refused(f"unsupported platform ({sys.platform}): no shared libraries to load")
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or spec.origin is None:
        raise _Refused(f"not built at install time (no working C compiler then?); {_REBUILD}")
    return Path(spec.origin), Path(os.path.abspath(os.path.dirname(__file__)))


def _load(path: Path, directory: Path) -> ctypes.CDLL:
    """Check the kernel file at ``path`` and load it; raise :class:`_Refused` saying why not.

    ``path`` must be an extension module file directly in ``directory``. The checks run on one
    open file descriptor, and on Linux the loader maps that same file (``/proc/self/fd``), so a
    file swapped in after the checks is never the one loaded. Called once per process, from
    :func:`_library`.
    """
    if not str(path).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise _Refused(f"failed validation: {path} is not an extension module file")
    if Path(os.path.abspath(os.path.dirname(path))) != Path(os.path.abspath(directory)):
        raise _Refused(f"failed validation: {path} is not in the package folder {directory}")
    # O_NOFOLLOW: a link (to a file anywhere) is refused; O_NONBLOCK: a FIFO does not hang open().
    flags = os.O_RDONLY
    for name in ("O_NONBLOCK", "O_NOFOLLOW", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)  # each missing on some platform
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _Refused(
                f"failed validation: {path} is a symbolic link, which is never followed (a strict "
                "editable install links every file: `pip install -e .` in the default mode copies "
                "the built kernel instead)"
            ) from None
        raise _Refused(f"failed validation: cannot open {path} ({error.strerror})") from None
    try:
        info = os.fstat(descriptor)
        _check_owner(info, path)
        _check_complete(descriptor, info.st_size, path)
        same_file = f"/proc/self/fd/{descriptor}"
        by_descriptor = os.path.exists(same_file)
        library = ctypes.CDLL(same_file if by_descriptor else str(path))
    except BaseException:
        os.close(descriptor)
        raise
    if not by_descriptor:
        os.close(descriptor)
    # Otherwise the descriptor stays open while the library stays loaded (for the process): the
    # loader knows the library by the name /proc/self/fd/N and would hand out this one again for
    # a later file opened under the same number.
    _bind(library, path)
    return library


def _check_owner(info: os.stat_result, path: Path) -> None:
    """Refuse what is not a regular file or what a user other than you or root could write."""
    if not stat.S_ISREG(info.st_mode):
        raise _Refused(f"failed validation: {path} is not a regular file")
    if not hasattr(os, "geteuid"):
        return  # Windows: no POSIX owners; the folder's ACL is what guards the installed package
    if info.st_uid not in (os.geteuid(), 0):
        raise _Refused(
            f"failed validation: {path} is owned by uid {info.st_uid}, neither you nor root (a "
            f"file another user may have planted); {_REBUILD}"
        )
    if info.st_mode & stat.S_IWOTH or (
        info.st_mode & stat.S_IWGRP and not _private_group(info.st_gid, info.st_uid)
    ):
        raise _Refused(
            f"failed validation: {path} is writable by other users (mode "
            f"{stat.filemode(info.st_mode)}); `chmod go-w {path}` if you trust its content, "
            f"else {_REBUILD}"
        )


def _private_group(gid: int, uid: int) -> bool:
    """Whether group ``gid`` is the user-private group of ``uid`` alone.

    Where each user has a group of their own (Debian's and Ubuntu's default), the umask makes
    every file group-writable; that group holds nobody else, so the bit lets no one else write.
    """
    try:
        import grp
        import pwd

        group, owner = grp.getgrgid(gid), pwd.getpwuid(uid)
        others = [user for user in pwd.getpwall() if user.pw_gid == gid and user.pw_uid != uid]
    except (ImportError, KeyError):
        return False
    return group.gr_name == owner.pw_name and set(group.gr_mem) <= {owner.pw_name} and not others


def _bind(library: ctypes.CDLL, path: Path) -> None:
    """Declare the kernels' signatures; refuse a library that lacks one or has another ABI."""
    pointer, integer = ctypes.c_void_p, ctypes.c_long
    try:
        for name in (*_FUNCTIONS.values(), "hope_max_order", "hope_kernel_abi"):
            getattr(library, name)
    except AttributeError:
        raise _Refused(f"failed validation: {path} lacks the symbol {name}; {_REBUILD}") from None
    for name in _FUNCTIONS.values():
        function = getattr(library, name)
        function.restype = None
        # (y, u, y0, slope0, E, P, m, n, linear, quadratic, start, stop)
        function.argtypes = [
            *(pointer,) * 4, integer, integer, ctypes.c_int, ctypes.c_int,
            ctypes.c_double, ctypes.c_double, integer, integer,
        ]  # fmt: skip
    abi, order = library.hope_kernel_abi(), library.hope_max_order()
    if (abi, order) != (_ABI, _MAX_ORDER):
        raise _Refused(
            f"failed validation: {path} was built from another version (kernel ABI {abi}, "
            f"highest order {order}; this hope_attr needs {_ABI}, {_MAX_ORDER}); {_REBUILD}"
        )


def _check_complete(descriptor: int, size: int, path: Path, expected: str = _FORMAT) -> None:
    """Refuse a file that is not a shared library of the ``expected`` format, or whose headers
    point past its end (a truncated file: mapping it kills the process with SIGBUS)."""
    head = _read(descriptor, 0, min(size, 64))
    found = (
        "ELF" if head[:4] == b"\x7fELF"
        else "PE" if head[:2] == b"MZ"
        else "Mach-O" if head[:4] in _MACH_O_MAGIC
        else None
    )  # fmt: skip
    if found != expected:
        raise _Refused(f"failed validation: {path} is not an {expected} shared library")
    extents = {"ELF": _elf_extents, "PE": _pe_extents, "Mach-O": _mach_o_extents}[found]
    try:
        ends = extents(descriptor, size)
    except (struct.error, EOFError):
        ends = [size + 1]  # a header cut off mid-way
    if max(ends, default=0) > size:
        raise _Refused(
            f"failed validation: {path} is truncated (its headers reach byte {max(ends)}, the "
            f"file has {size}); {_REBUILD}"
        )


def _read(descriptor: int, offset: int, count: int) -> bytes:
    os.lseek(descriptor, offset, os.SEEK_SET)
    data = os.read(descriptor, count)
    if len(data) < count:
        raise EOFError
    return data


def _elf_extents(descriptor: int, size: int) -> list[int]:
    """Where the program headers, the segments they describe and the section table end."""
    ident = _read(descriptor, 0, 16)
    wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
    fields = order + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH")
    header = struct.unpack(fields, _read(descriptor, 16, struct.calcsize(fields)))
    phoff, shoff, phentsize, phnum, shentsize, shnum = (*header[4:6], *header[8:12])
    if header[0] != 3:  # ET_DYN
        raise _Refused("failed validation: an ELF file that is not a shared library")
    ends = [phoff + phnum * phentsize, shoff + shnum * shentsize if shoff else 0]
    if ends[0] > size:
        return ends
    layout = order + ("IIQQQQQQ" if wide else "IIIIIIII")
    for index in range(phnum):
        entry = struct.unpack(
            layout, _read(descriptor, phoff + index * phentsize, 56 if wide else 32)
        )
        offset, filesz = (entry[2], entry[5]) if wide else (entry[1], entry[4])
        ends.append(offset + filesz)
    return ends


_MACH_O_MAGIC = {b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xca\xfe\xba\xbe"}


def _mach_o_extents(descriptor: int, size: int) -> list[int]:
    """Where the load commands and the segments (or a universal file's slices) end."""
    magic = _read(descriptor, 0, 4)
    if (
        magic == b"\xca\xfe\xba\xbe"
    ):  # universal: big-endian (cputype, subtype, offset, size, align)
        (count,) = struct.unpack(">I", _read(descriptor, 4, 4))
        slices = [struct.unpack(">5I", _read(descriptor, 8 + 20 * i, 20)) for i in range(count)]
        return [8 + 20 * count, *(offset + length for _, _, offset, length, _ in slices)]
    wide = magic == b"\xcf\xfa\xed\xfe"
    start = 32 if wide else 28
    ncmds, sizeofcmds = struct.unpack("<II", _read(descriptor, 16, 8))
    ends, offset = [start + sizeofcmds], start
    for _ in range(ncmds):
        command, length = struct.unpack("<II", _read(descriptor, offset, 8))
        if command == 0x19:  # LC_SEGMENT_64: fileoff, filesize after name and vm range
            ends.append(sum(struct.unpack("<QQ", _read(descriptor, offset + 40, 16))))
        elif command == 0x1:  # LC_SEGMENT
            ends.append(sum(struct.unpack("<II", _read(descriptor, offset + 32, 8))))
        if length < 8:
            raise EOFError
        offset += length
    return ends


def _pe_extents(descriptor: int, size: int) -> list[int]:
    """Where the section table and each section's raw data end."""
    (pe,) = struct.unpack("<I", _read(descriptor, 0x3C, 4))
    if _read(descriptor, pe, 4) != b"PE\0\0":
        raise EOFError
    sections, optional = struct.unpack("<2xH12xH2x", _read(descriptor, pe + 4, 20))
    table = pe + 24 + optional
    ends = [table + 40 * sections]
    for index in range(sections):
        length, offset = struct.unpack("<II", _read(descriptor, table + 40 * index + 16, 8))
        ends.append(offset + length)
    return ends
