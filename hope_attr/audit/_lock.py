"""One writer per store: an exclusive lock file in the store's folder.

The lock file is created atomically (``O_CREAT | O_EXCL``) and holds its owner's pid, host and
start time, so that a second writer's error names them. Where ``fcntl`` exists, the owner also
holds an exclusive ``flock`` on it for as long as it runs: the kernel releases it when the
process ends, however it ends, so a lock left by a killed run is recognised without trusting pid
numbers alone. A lock is taken over only when its owner is certainly gone: same host, the
``flock`` free, and no process with its pid. A lock from another host is never taken over: its
owner may still be running there.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from hope_attr.audit._manifest import LOCK

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL file and the pid check alone
    fcntl = None  # type: ignore[assignment]


class StoreLockedError(RuntimeError):
    """Another run is writing the store (or a lock file says so); the message names its owner."""


class StoreLock:
    """The exclusive write lock of a store's folder, held from ``__enter__`` to ``__exit__``.

    Args:
        root: the store's folder (it must exist).
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK
        self._handle: int | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or take over a stale one.

        Raises:
            StoreLockedError: another live run holds it (or may: a lock from another host).
        """
        for _ in range(10):  # retried only when the file was replaced between open and lock
            created, handle = self._open()
            if handle is None:
                continue
            if not _try_flock(handle):
                owner = _read_owner(handle)
                os.close(handle)
                raise StoreLockedError(self._held_message(owner))
            if not self._is_current(handle):
                os.close(handle)  # its owner released and removed it meanwhile: start over
                continue
            if not created:
                self._take_over(handle)
            _write_owner(handle)
            self._handle = handle
            return
        raise StoreLockedError(f"{self.path} kept changing while this run tried to lock it")

    def release(self) -> None:
        """Remove the lock file (if it is still this run's) and release the lock."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            if self._is_current(handle):
                os.unlink(self.path)
        finally:
            os.close(handle)  # releases the flock, after the unlink: see _is_current

    def _open(self) -> tuple[bool, int | None]:
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
            return True, os.open(self.path, flags, 0o666)
        except FileExistsError:
            try:
                return False, os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                return False, None  # released between the two calls

    def _is_current(self, handle: int) -> bool:
        """Whether the path still names the file ``handle`` has open.

        A run that opened the file just before its owner removed it gets its flock once the
        owner closes it; the file it locked is then no longer the lock, and it must start over.
        """
        try:
            mine, now = os.fstat(handle), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)

    def _take_over(self, handle: int) -> None:
        owner = _read_owner(handle)
        # An unreadable owner with the flock free: its creator died before writing it, or has
        # not taken the flock yet (it then fails to, and stops). Without flock: unknown, so held.
        if not (_is_gone(owner) if owner is not None else fcntl is not None):
            os.close(handle)
            raise StoreLockedError(self._held_message(owner))
        warnings.warn(
            f"{self.path} was left by a run that is no longer running "
            f"({_describe(owner)}); this run takes it over and resumes from the manifest",
            RuntimeWarning,
            stacklevel=5,  # the caller of attribute_dataset
        )

    def _held_message(self, owner: dict[str, Any] | None) -> str:
        return (
            f"{self.path.parent} is being written by another run ({_describe(owner)}): two "
            "writers would mix their maps in one store. Use another out folder, or wait for "
            "that run to finish (or stop it) and run again: the run resumes. If no audit runs "
            f"as that process any more, delete the lock file {self.path} and run again."
        )


def _try_flock(handle: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock: the pid check alone decides
        return True
    return True


def _write_owner(handle: int) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    os.ftruncate(handle, 0)
    os.pwrite(handle, json.dumps(owner).encode(), 0)
    os.fsync(handle)


def _read_owner(handle: int) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads(os.pread(handle, 4096, 0))
        if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
            return owner
    return None  # being written by its creator this instant, or damaged


def _is_gone(owner: dict[str, Any]) -> bool:
    """Whether the owner certainly no longer runs: same host and no process with its pid."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _describe(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "owner unknown: the lock file is empty or unreadable"
    started = owner.get("started")
    since = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        if isinstance(started, (int, float))
        else "an unknown time"
    )
    return f"pid {owner.get('pid')} on host {owner.get('host')!r}, since {since}"
