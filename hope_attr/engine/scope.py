"""What the current call has active in this thread: one place for per-call state.

The engine records the forward it is running (:mod:`hope_attr.engine.modules`). An expansion
activates, for each chunk of directions it propagates, the primal memo
(:mod:`hope_attr.engine.memo`) and the workspace (:mod:`hope_attr.engine.workspace`); an
attribution watches for piecewise-linear decisions (:mod:`hope_attr.engine.kinks`). The rules
deep inside a model's forward read them here, so that nothing has to be threaded through the
user's ``forward``. The state is per thread, so calls in several threads do not see each other's,
and :func:`active` restores the previous state when its block ends, also after an error.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Scope", "active", "current"]


@dataclass(frozen=True)
class Scope:
    """The per-call state in force: each field ``None`` where nothing is active."""

    memo: Any = None  # hope_attr.engine.memo.PrimalMemo
    workspace: Any = None  # hope_attr.engine.workspace.Workspace
    watch: Any = None  # hope_attr.engine.kinks's recorder of piecewise-linear decisions
    run: Any = None  # hope_attr.engine.modules.Run: the forward being run on jets


_EMPTY = Scope()
_local = threading.local()


def current() -> Scope:
    """The state in force in this thread."""
    return getattr(_local, "scope", _EMPTY)


@contextmanager
def active(**fields: Any) -> Iterator[Scope]:
    """Set some fields of this thread's scope inside the block (the others stay as they are)."""
    previous = current()
    _local.scope = replace(previous, **fields)
    try:
        yield _local.scope
    finally:
        _local.scope = previous
