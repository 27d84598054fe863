"""What the rules refuse, and what they warn about, said in one voice.

A refusal names the operation, the reason it cannot be expanded, where it runs (the module path
and the user's source line, from the engine's :func:`~hope_attr.engine.dispatch.where`) and what
to write instead. A warning points at the user's line (:func:`user_stacklevel`).

:class:`BatchCouplingWarning` is the cheap part of a harder question: does an example's output
depend on the other examples of its batch? Derivatives are per example only if it does not. The
rules cannot follow every path between batch entries (``h @ h.T`` couples them too), but a
reduction or a cumulative operation over axis 0 of a jet with more than one example is a
coupling the rule sees at once, and warns about.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from hope_attr.engine import modules as _modules
from hope_attr.engine import registry as _registry
from hope_attr.engine.jet import Jet
from hope_attr.engine.registry import UnsupportedOperationError
from hope_attr.engine.stacklevel import user_stacklevel

__all__ = ["BatchCouplingWarning", "refusal", "reduced_dims", "warn_if_batch_coupled"]


class BatchCouplingWarning(UserWarning):
    """An operation combines the examples of a batch (a reduction over axis 0, ``h - h.mean(0)``,
    a full reduction such as ``h.max()`` used as a number): each example's output then depends on
    the others, and its "derivatives" are those of the whole batch moved together along a
    feature, not its own. Expand one example at a time, or reduce over the other axes."""


def refusal(op: str, reason: str, fix: str) -> UnsupportedOperationError:
    """An :class:`~hope_attr.UnsupportedOperationError` for ``op`` that says why and what to do.

    Args:
        op: the operation as the user wrote it (``"torch.fft.fft with norm='forward'"``).
        reason: why it has no Taylor expansion here.
        fix: what to write instead.

    Returns:
        The error (the caller raises it), with the module path and the user's source line.

    Example:
        >>> from hope_attr.rules.checks import refusal
        >>> str(refusal("torch.frobnicate", "it is not smooth", "Use torch.tanh."))[:36]
        'hope_attr cannot expand torch.frobni'
    """
    return UnsupportedOperationError(f"hope_attr cannot expand {op} {_where()}: {reason}. {fix}")


def _where() -> str:
    """The module path and the user's source line (once the engine is loaded: always, when a
    rule runs on jets)."""
    try:
        return _registry.engine().where()
    except RuntimeError:
        return "(outside a model's forward)"


def reduced_dims(ndim: int, dim: int | Sequence[int] | None) -> tuple[int, ...]:
    """The axes a reduction with argument ``dim`` reduces, non-negative (all for ``None``).

    Example:
        >>> from hope_attr.rules.checks import reduced_dims
        >>> reduced_dims(3, -1), reduced_dims(3, None), reduced_dims(3, (0, -2))
        ((2,), (0, 1, 2), (0, 1))
    """
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % max(ndim, 1) for d in dims)


def warn_if_batch_coupled(x: object, dims: Sequence[int] | None, op: str) -> None:
    """Warn if ``op`` over ``dims`` (``None``: all) of jet ``x`` mixes its batch entries.

    Axis 0 of a jet is the batch the model was called with, unless the model moved it (a
    sequence-first layout); the warning says so.

    Example:
        >>> import warnings
        >>> import torch
        >>> from hope_attr import Jet
        >>> from hope_attr.rules.checks import BatchCouplingWarning, warn_if_batch_coupled
        >>> batch = Jet(torch.zeros(3, 2), torch.ones(1, 1, 1, 2), order=1)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_if_batch_coupled(batch, (1,), "a sum over axis 1")  # per example: quiet
        ...     warn_if_batch_coupled(batch, None, "a sum over everything")
        >>> [w.category is BatchCouplingWarning for w in caught]
        [True]
    """
    if not isinstance(x, Jet) or x.primal.dim() == 0 or x.primal.shape[0] <= 1:
        return
    if dims is not None and 0 not in reduced_dims(x.primal.dim(), dims):
        return
    batch = x.primal.shape[0]
    run = _modules.current_run()
    if run is not None and run.batch is not None and run.batch != batch:
        return  # axis 0 is not the batch the forward started from (e.g. a stack of branches)
    warnings.warn(
        f"hope_attr: {op} {_where()} combines the {batch} entries of axis 0, "
        "the batch axis: every example's output then depends on the other examples (also "
        "through a branch decided on this value), and its expansion moves a feature in all of "
        "them at once, so the derivatives are not per example. Reduce over the other axes, or "
        "expand one example at a time. If axis 0 is not the batch here (a sequence-first "
        "layout), the expansion is right: silence this with warnings.filterwarnings('ignore', "
        "category=hope_attr.BatchCouplingWarning).",
        BatchCouplingWarning,
        stacklevel=user_stacklevel(),
    )
