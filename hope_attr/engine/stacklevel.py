"""Where hope_attr's warnings point: at the user's line that called into the library.

A fixed ``stacklevel`` breaks as soon as a decorator (:mod:`hope_attr.engine.threads`, Captum's
``log_usage``) or another entry point adds a frame: the warning then names a wrapper inside a
library, which the user can neither read nor filter by. :func:`user_stacklevel` counts the frames
instead.
"""

from __future__ import annotations

import os
import sys

import captum

__all__ = ["user_stacklevel"]

# The package roots: hope_attr/ (this file is hope_attr/engine/stacklevel.py) and captum/.
_INTERNAL = tuple(
    os.path.dirname(os.path.realpath(path)) + os.sep
    for path in (
        os.path.dirname(os.path.dirname(__file__)) + os.sep + "__init__.py",
        captum.__file__,
    )
)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes the caller's ``warnings.warn`` name the first frame outside
    hope_attr and Captum (whose attribution wrappers and NoiseTunnel call our methods).

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
