"""hope_attr: exact high-order Taylor expansions of PyTorch networks, served as Captum attributions.

The jet convention (normalized Taylor coefficients) is stated once in :mod:`hope_attr._jet`.
"""

import importlib.metadata

from hope_attr._attribution import HOPEAttribution
from hope_attr._convergence import ConvergenceWarning, Diagnostics, PiecewiseLinearWarning
from hope_attr._derivatives import unmixed_derivatives
from hope_attr._jet import Jet
from hope_attr._mixed import mixed_derivatives
from hope_attr._registry import (
    TrainingModeError,
    UnsupportedOperationError,
    register_rule,
    unregister_rule,
)
from hope_attr.polynomial import TaylorPolynomial, discover, expand

try:  # the version lives in pyproject.toml alone
    __version__ = importlib.metadata.version("hope_attr")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ConvergenceWarning",
    "Diagnostics",
    "HOPEAttribution",
    "PiecewiseLinearWarning",
    "Jet",
    "TaylorPolynomial",
    "TrainingModeError",
    "discover",
    "expand",
    "mixed_derivatives",
    "UnsupportedOperationError",
    "register_rule",
    "unmixed_derivatives",
    "unregister_rule",
]
