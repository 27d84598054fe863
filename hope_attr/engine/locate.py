"""Where in the user's code an operation runs: the module and the source line, for messages."""

from __future__ import annotations

import linecache
import os
import sys
import types

import torch
from torch import nn

from hope_attr.engine import scope as _scope

__all__ = ["where"]

_SKIPPED_ROOTS = tuple(
    os.path.dirname(os.path.realpath(m.__file__)) + os.sep
    for m in (torch, sys.modules[__name__.split(".", 1)[0]])  # torch/ and hope_attr/
)


def where() -> str:
    """``(in module 'layer1.0.conv1', source: File "net.py", line 12: y = f(x))``."""
    state = _scope.current().run
    frame = sys._getframe(1)
    module_path = None
    source = None
    while frame is not None:
        if module_path is None and state is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module):
                name = state.module_name(owner)
                if name is not None:
                    module_path = f"module '{name}'" if name else "the model"
                    module_path += f" ({type(owner).__name__})"
        if source is None:
            raw = frame.f_code.co_filename
            filename = os.path.realpath(raw)
            if not filename.startswith(_SKIPPED_ROOTS) and not raw.startswith("<frozen"):
                source = _source_line(frame)
        frame = frame.f_back
    parts = [f"in {module_path}" if module_path else "called in the forward"]
    if source:
        parts.append(f"source: {source}")
    return "(" + "; ".join(parts) + ")"


def _source_line(frame: types.FrameType) -> str:
    code = frame.f_code
    text = linecache.getline(code.co_filename, frame.f_lineno).strip()
    return f'File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}: {text}'
