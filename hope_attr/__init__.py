"""hope_attr: exact high-order Taylor expansions of PyTorch networks, served as Captum attributions.

The jet convention (normalized Taylor coefficients) is stated once in :mod:`hope_attr.engine.jet`.
The public names are imported on first use (PEP 562), so that ``hope-attr --help`` and
``import hope_attr.cli`` do not pay for importing torch and captum.
"""

import importlib
import importlib.metadata
from typing import TYPE_CHECKING

try:  # the version lives in pyproject.toml alone
    __version__ = importlib.metadata.version("hope_attr")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# Public name -> the module that defines it.
_EXPORTS = {
    "BatchCouplingWarning": "hope_attr.rules.checks",
    "ConvergenceWarning": "hope_attr.attribution.convergence",
    "DerivativeRangeWarning": "hope_attr.engine.factorials",
    "Diagnostics": "hope_attr.attribution.convergence",
    "DroppedDependenceWarning": "hope_attr.engine.registry",
    "HOPEAttribution": "hope_attr.attribution.hope",
    "HOPEResult": "hope_attr.attribution.result",
    "Jet": "hope_attr.engine.jet",
    "LayerHOPEAttribution": "hope_attr.attribution.layer",
    "NeuronHOPEAttribution": "hope_attr.attribution.neuron",
    "PiecewiseLinearWarning": "hope_attr.attribution.convergence",
    "Resources": "hope_attr.engine.resources",
    "ReverseModeWarning": "hope_attr.engine.reverse",
    "TaylorPolynomial": "hope_attr.polynomial",
    "TrainingModeError": "hope_attr.engine.registry",
    "UnsupportedOperationError": "hope_attr.engine.registry",
    "discover": "hope_attr.polynomial",
    "expand": "hope_attr.polynomial",
    "interactions": "hope_attr.interaction.indices",
    "mixed_derivatives": "hope_attr.derivatives.mixed",
    "register_rule": "hope_attr.engine.registry",
    "resources": "hope_attr.engine.resources",
    "show_config": "hope_attr.engine.configuration",
    "unmixed_derivatives": "hope_attr.derivatives.unmixed",
    "unregister_rule": "hope_attr.engine.registry",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from hope_attr.attribution.convergence import (
        ConvergenceWarning,
        Diagnostics,
        PiecewiseLinearWarning,
    )
    from hope_attr.attribution.hope import HOPEAttribution
    from hope_attr.attribution.layer import LayerHOPEAttribution
    from hope_attr.attribution.neuron import NeuronHOPEAttribution
    from hope_attr.attribution.result import HOPEResult
    from hope_attr.derivatives.mixed import mixed_derivatives
    from hope_attr.derivatives.unmixed import unmixed_derivatives
    from hope_attr.engine.configuration import show_config
    from hope_attr.engine.factorials import DerivativeRangeWarning
    from hope_attr.engine.jet import Jet
    from hope_attr.engine.registry import (
        DroppedDependenceWarning,
        TrainingModeError,
        UnsupportedOperationError,
        register_rule,
        unregister_rule,
    )
    from hope_attr.engine.resources import Resources, resources
    from hope_attr.engine.reverse import ReverseModeWarning
    from hope_attr.interaction.indices import interactions
    from hope_attr.polynomial import TaylorPolynomial, discover, expand
    from hope_attr.rules.checks import BatchCouplingWarning


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hope_attr' has no attribute {name!r}")
    # The built-in rules first: a user's register_rule(torch.tanh, override=...) must meet them.
    importlib.import_module("hope_attr.engine.expansion")  # the engine and every built-in rule
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [  # the keys of _EXPORTS, spelled out for linters and `from hope_attr import *`
    "BatchCouplingWarning",
    "ConvergenceWarning",
    "DerivativeRangeWarning",
    "Diagnostics",
    "DroppedDependenceWarning",
    "HOPEAttribution",
    "HOPEResult",
    "Jet",
    "LayerHOPEAttribution",
    "NeuronHOPEAttribution",
    "PiecewiseLinearWarning",
    "Resources",
    "ReverseModeWarning",
    "TaylorPolynomial",
    "TrainingModeError",
    "UnsupportedOperationError",
    "discover",
    "expand",
    "interactions",
    "mixed_derivatives",
    "register_rule",
    "resources",
    "show_config",
    "unmixed_derivatives",
    "unregister_rule",
]
assert sorted(__all__) == sorted(_EXPORTS)
