"""The attribution methods the benchmarks compare, and how each is called on a model.

A :class:`Method` says how to build an explainer (HOPE at an order, or one of Captum's methods,
with the settings these benchmarks use: baseline 0 where one exists) and which keyword arguments
its ``attribute`` gets; a :class:`Budget` holds the sample counts. :mod:`benchmarks.attribution`
(timing and scores) and :mod:`benchmarks.quantus_eval` (Quantus's metrics) both use them.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    >>> maps = attribute(method_by_name("Saliency"), model, torch.rand(2, 1, 4, 4), [0, 2])
    >>> tuple(maps.shape)
    (2, 1, 4, 4)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.attr import (
    LRP,
    Attribution,
    DeepLift,
    FeatureAblation,
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    KernelShap,
    Lime,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ShapleyValueSampling,
)
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import Tensor, nn

from hope_attr import HOPEAttribution

BASELINE = 0.0  # every method ablates towards (or integrates from) the black image
REFERENCE = "FeatureAblation"


@dataclass(frozen=True)
class Budget:
    """Sample counts and sizes of the methods and metrics (a run's cost knobs)."""

    ig_steps: int = 32
    noise_samples: int = 10
    noise_stdev: float = 0.1
    gradient_shap_samples: int = 10
    shapley_permutations: int = 4
    lime_samples: int = 100
    superpixel: int = 4
    occlusion_window: int = 4
    occlusion_stride: int = 2
    perturbations_per_eval: int = 64
    infidelity_samples: int = 8
    sensitivity_samples: int = 3
    curve_steps: int = 20

    @classmethod
    def tiny(cls) -> Budget:
        """A smoke-test budget: every method runs, few samples each."""
        return cls(
            ig_steps=4,
            noise_samples=2,
            gradient_shap_samples=2,
            shapley_permutations=1,
            lime_samples=16,
            infidelity_samples=2,
            sensitivity_samples=1,
            curve_steps=5,
        )


Options = Callable[[Tensor, Budget], dict[str, Any]]


def _no_options(inputs: Tensor, budget: Budget) -> dict[str, Any]:
    return {}


def _baseline(inputs: Tensor, budget: Budget) -> dict[str, Any]:
    return {"baselines": BASELINE}


def _always(model: nn.Module) -> bool:
    return True


@dataclass(frozen=True)
class Method:
    """One row of the registry: how to build the explainer and call its ``attribute``.

    Attributes:
        name: the label in tables and figures.
        make: builds the Captum attribution object for a model.
        options: the keyword arguments of ``attribute`` besides ``inputs`` and ``target``.
        applies: whether the method is meant for a model (LRP: ReLU networks only).
    """

    name: str
    make: Callable[[nn.Module], Attribution]
    options: Options = _no_options
    applies: Callable[[nn.Module], bool] = _always


def superpixel_mask(shape: Sequence[int], size: int) -> Tensor:
    """Feature ids ``(1, 1, H, W)`` of ``size x size`` blocks (shared by all channels)."""
    height, width = shape[-2], shape[-1]
    rows = torch.arange(height) // size
    columns = torch.arange(width) // size
    ids = rows[:, None] * math.ceil(width / size) + columns[None, :]
    return ids.reshape(1, 1, height, width)


def _superpixels(samples: Callable[[Budget], int]) -> Options:
    def options(inputs: Tensor, budget: Budget) -> dict[str, Any]:
        return {
            "baselines": BASELINE,
            "feature_mask": superpixel_mask(inputs.shape, budget.superpixel),
            "n_samples": samples(budget),
        }

    return options


def _integrated_gradients(inputs: Tensor, budget: Budget) -> dict[str, Any]:
    return {"baselines": BASELINE, "n_steps": budget.ig_steps}


def _gradient_shap(inputs: Tensor, budget: Budget) -> dict[str, Any]:
    return {
        "baselines": torch.full_like(inputs[:1], BASELINE),
        "n_samples": budget.gradient_shap_samples,
        "stdevs": budget.noise_stdev,
    }


def _smoothgrad(inputs: Tensor, budget: Budget) -> dict[str, Any]:
    return {
        "nt_type": "smoothgrad",
        "nt_samples": budget.noise_samples,
        "stdevs": budget.noise_stdev,
    }


def _feature_ablation(inputs: Tensor, budget: Budget) -> dict[str, Any]:
    return {"baselines": BASELINE, "perturbations_per_eval": budget.perturbations_per_eval}


def _occlusion(inputs: Tensor, budget: Budget) -> dict[str, Any]:
    channels = inputs.shape[1]
    window, stride = budget.occlusion_window, budget.occlusion_stride
    return {
        "sliding_window_shapes": (channels, window, window),
        "strides": (channels, stride, stride),
        "baselines": BASELINE,
        "perturbations_per_eval": budget.perturbations_per_eval,
    }


class _CopiedModelLRP(LRP):
    """Captum's LRP on a copy of the model, with epsilon rules for ``nn.Flatten``.

    Captum writes ``rule`` attributes onto the modules it is given, has no default rule for
    ``nn.Flatten`` (epsilon-LRP of a reshape passes relevance through) and deletes every rule,
    user-set ones included, after each call: the rules are attached again before each call.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(copy.deepcopy(model))

    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        for module in self.model.modules():
            if isinstance(module, nn.Flatten):
                module.rule = EpsilonRule()
        return super().attribute(inputs, *args, **kwargs)


def is_relu_network(model: nn.Module) -> bool:
    """True when every activation module of ``model`` is a ReLU."""
    activations = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.Softplus, nn.LeakyReLU)
    found = [type(m) for m in model.modules() if isinstance(m, activations)]
    return bool(found) and all(kind is nn.ReLU for kind in found)


CAPTUM_METHODS: tuple[Method, ...] = (
    Method("Saliency", Saliency),
    Method("InputXGradient", InputXGradient),
    Method("IntegratedGradients", IntegratedGradients, _integrated_gradients),
    Method("DeepLift", DeepLift, _baseline),
    Method("GradientShap", GradientShap, _gradient_shap),
    Method("NoiseTunnel(Saliency)", lambda model: NoiseTunnel(Saliency(model)), _smoothgrad),
    Method(REFERENCE, FeatureAblation, _feature_ablation),
    Method("Occlusion", Occlusion, _occlusion),
    Method(
        "ShapleyValueSampling",
        ShapleyValueSampling,
        _superpixels(lambda budget: budget.shapley_permutations),
    ),
    Method("Lime", Lime, _superpixels(lambda budget: budget.lime_samples)),
    Method("KernelShap", KernelShap, _superpixels(lambda budget: budget.lime_samples)),
    Method("LRP", _CopiedModelLRP, applies=is_relu_network),
)
"""Captum's methods, each with the settings this benchmark uses (baseline 0 where one exists)."""


def hope_method(order: int, kind: str = "exact") -> Method:
    """HOPE at ``order`` with ``kind`` ``"exact"`` or ``"diagonal"`` (the paper's rule)."""
    return Method(
        f"HOPE {kind} n={order}",
        lambda model: HOPEAttribution(model, order=order, method=kind),
        _baseline,
    )


def hope_paper_method(order: int = 4, dx: float = 1.0, kind: str = "diagonal") -> Method:
    """HOPE's heat map as the paper draws it (its Eq. 77): every pixel moved by ``+dx``.

    In FeatureAblation's sign (``f(x) - f(x + dx e_i)``, the paper's map negated); the default
    ``kind`` is the paper's own derivative rule.
    """

    def options(inputs: Tensor, budget: Budget) -> dict[str, Any]:
        return {"baselines": inputs + dx}

    return Method(
        f"HOPE paper map dx={dx:g} ({kind} n={order})",
        lambda model: HOPEAttribution(model, order=order, method=kind),
        options,
    )


def hope_methods(
    orders: Sequence[int] = (1, 2, 4, 8), kinds: Sequence[str] = ("exact", "diagonal")
) -> list[Method]:
    """HOPE at every order of ``orders`` for every kind of ``kinds``."""
    return [hope_method(order, kind) for kind in kinds for order in orders]


def all_methods() -> list[Method]:
    """The benchmark's default registry: HOPE (orders 1, 2, 4, 8; both kinds) and Captum's."""
    return [*hope_methods(), *CAPTUM_METHODS]


def method_by_name(name: str, methods: Sequence[Method] | None = None) -> Method:
    """Look a method up by its table name."""
    for method in methods if methods is not None else all_methods():
        if method.name == name:
            return method
    raise KeyError(f"no method named {name!r}")


@dataclass
class Explainer:
    """A method bound to a model: ``explainer(inputs, target)`` returns the attributions."""

    method: Method
    model: nn.Module
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        self.attribution = self.method.make(self.model)

    def __call__(self, inputs: Tensor, target: Any = None, **overrides: Any) -> Tensor:
        # Captum's metrics pass inputs as a 1-tuple; the options only need the tensor's shape.
        first = inputs[0] if isinstance(inputs, tuple) else inputs
        options = {**self.method.options(first, self.budget), **overrides}
        return self.attribution.attribute(inputs, target=target, **options)

    @property
    def multiplies_by_inputs(self) -> bool:
        return bool(self.attribution.multiplies_by_inputs)

    def convergence_delta(self, inputs: Tensor, target: Any) -> Tensor | None:
        """The method's own completeness delta per example, or ``None`` if it has none.

        Sampling methods (GradientShap) give one delta per sample: their mean is taken.
        """
        if not self.attribution.has_convergence_delta():
            return None
        _, delta = self(inputs, target, return_convergence_delta=True)
        return delta.detach().reshape(inputs.shape[0], -1).mean(1)


def attribute(
    method: Method, model: nn.Module, inputs: Tensor, target: Any, budget: Budget | None = None
) -> Tensor:
    """One method's attributions of ``target`` at ``inputs`` (a detached tensor)."""
    return Explainer(method, model, budget or Budget())(inputs, target).detach()
