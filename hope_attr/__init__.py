"""hope_attr: exact high-order Taylor expansions of PyTorch networks, served as Captum attributions.

The jet convention (normalized Taylor coefficients) is stated once in :mod:`hope_attr._jet`.
"""

from hope_attr._attribution import HOPEAttribution
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

__version__ = "0.1.0"

__all__ = [
    "HOPEAttribution",
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
