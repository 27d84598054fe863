"""Where hope_attr's warnings point: at the user's line that called into the library.

A fixed ``stacklevel`` breaks as soon as a decorator (Captum's ``log_usage``), another entry point
or a torch frame adds a frame: a rule that warns runs under ``Jet.__torch_function__``, which
torch's Python functions (``F.layer_norm``, ``F.gumbel_softmax``) and ``nn.Module.__call__`` reach
through frames of their own. The warning would then name a wrapper inside a library, which the
user can neither read nor filter by. :func:`user_stacklevel` counts the frames instead.
"""

from __future__ import annotations

import os
import sys

import captum
import torch

__all__ = ["user_stacklevel"]

# The package roots whose frames a warning looks past: hope_attr/ (this file is
# hope_attr/engine/stacklevel.py), captum/ (its attribution wrappers and NoiseTunnel call our
# methods) and torch/ (its modules, functions and overrides call our rules).
_INTERNAL = tuple(
    os.path.dirname(os.path.realpath(path)) + os.sep
    for path in (
        os.path.dirname(os.path.dirname(__file__)) + os.sep + "__init__.py",
        captum.__file__,
        torch.__file__,
    )
)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes the caller's ``warnings.warn`` name the first frame outside
    hope_attr, Captum and torch.

    Example:
        >>> import warnings
        >>> from hope_attr.engine.stacklevel import user_stacklevel
        >>> def library_function():
        ...     warnings.warn("careful", UserWarning, stacklevel=user_stacklevel())
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     library_function()
        >>> caught[0].filename.endswith("stacklevel.py")  # a doctest frame is outside hope_attr
        False
    """
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame is not None and os.path.realpath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level
