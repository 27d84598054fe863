"""NeuronHOPEAttribution against Captum's NeuronFeatureAblation and the primary method.

* ``method="continuation"`` with ``rtol=1e-12`` equals Captum's ``NeuronFeatureAblation`` to
  1e-10 in float64: a neuron of a CNN stage (smooth and ReLU; int tuples, slices and functions
  as selectors; feature masks and baselines), of a transformer encoder layer, of a layer with
  tuple outputs, of a layer's inputs.
* ``method="exact"`` equals :class:`~hope_attr.HOPEAttribution` on the model cut at the layer,
  the neuron selected (the series themselves are checked against nested ``torch.func.jvp`` by
  the primary method's tests).
* ``attribute_all_neurons`` holds every neuron's attributions: NeuronFeatureAblation's for each
  neuron (continuation), each neuron's ``attribute`` (exact, tuple inputs, a layer's inputs).
* An ``nn.DataParallel`` model is run as its wrapped module.
* The forward stops after the layer (what follows may be anything), the model is unchanged
  afterwards, after an error mid-call too, and selectors that do not fit the layer are refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from captum.attr import NeuronFeatureAblation
from torch import Tensor

import hope_attr
from tests.test_layer import (
    DTYPE,
    FailsAfterLayer,
    ScatteringDataParallel,
    StagedCNN,
    TinyText,
    TupleNet,
    TwoInputLayerNet,
    _assert_close,
    _model,
    _same,
    model_state,
)

ORDER = 5

pytestmark = pytest.mark.usefixtures("single_thread")


def _continuation(model: object, layer: torch.nn.Module) -> hope_attr.NeuronHOPEAttribution:
    return hope_attr.NeuronHOPEAttribution(
        model, layer, order=ORDER, method="continuation", rtol=1e-12
    )


def _compare(model: object, layer: torch.nn.Module, x: object, **kwargs: object) -> None:
    expected = NeuronFeatureAblation(model, layer).attribute(x, **kwargs)
    actual = _continuation(model, layer).attribute(x, **kwargs)
    _assert_close(actual, expected)


# ------------------------------------------------------ continuation = NeuronFeatureAblation
SELECTORS: dict[str, object] = {
    "index": (1, 2, 3),
    "slices": (slice(0, 2), 1, slice(None)),
    "function": lambda out: (out[:, 0] * out[:, 3]).sum((1, 2)),
}


@pytest.mark.parametrize("activation", [torch.nn.Softplus, torch.nn.ReLU], ids=["smooth", "relu"])
@pytest.mark.parametrize("selector", list(SELECTORS), ids=list(SELECTORS))
def test_continuation_equals_neuron_feature_ablation_on_a_cnn_stage(
    activation: type[torch.nn.Module], selector: str
) -> None:
    model = _model(StagedCNN, activation)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    quadrants = torch.arange(4).reshape(2, 2).repeat_interleave(4, 0).repeat_interleave(4, 1)
    for kwargs in ({}, {"feature_mask": quadrants[None, None], "baselines": 0.4}):
        _compare(model, model.stage, x, neuron_selector=SELECTORS[selector], **kwargs)


def test_continuation_equals_neuron_feature_ablation_in_a_transformer() -> None:
    text = _model(TinyText)
    embedded = torch.randn(2, 6, 8, dtype=DTYPE)
    tokens = torch.arange(6).reshape(1, 6, 1)
    for selector in ((2, 3), lambda out: out[:, -1, :3].sum(1)):  # not all dims: LayerNorm
        _compare(text.after_embedding, text.encoder, embedded, neuron_selector=selector)
        _compare(
            text.after_embedding, text.encoder, embedded, neuron_selector=selector,
            feature_mask=tokens, baselines=0.1,
        )  # fmt: skip


def test_continuation_equals_neuron_feature_ablation_on_tuple_outputs_and_inputs() -> None:
    pair = _model(TupleNet)
    x = torch.randn(3, 4, dtype=DTYPE)
    _compare(pair, pair.split, x, neuron_selector=lambda out: out[0][:, 1] * out[1][:, 0])
    two = _model(TwoInputLayerNet)
    x = torch.randn(3, 3, dtype=DTYPE)
    _compare(
        two, two.combine, x, neuron_selector=lambda args: args[0][:, 1] - args[1][:, 2] ** 2,
        attribute_to_neuron_input=True,
    )  # fmt: skip
    cnn = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    _compare(cnn, cnn.stage, x, neuron_selector=(2, 5, 4), attribute_to_neuron_input=True)
    _compare((lambda a, b: cnn(a + b)), cnn.stage, (x, 0.5 * x), neuron_selector=(0, 1, 1))


# --------------------------------------------------- exact = the model cut at the layer
def test_exact_equals_the_primary_method_on_the_model_cut_at_the_layer() -> None:
    model = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    cases: list[tuple[object, Callable[[Tensor], Tensor]]] = [
        ((1, 2, 3), lambda h: h[:, 1, 2, 3]),
        ((slice(0, 2), 1, slice(None)), lambda h: h[:, 0:2, 1].sum((1, 2))),
    ]
    for selector, select in cases:
        actual = hope_attr.NeuronHOPEAttribution(model, model.stage, order=ORDER).attribute(
            x, neuron_selector=selector, baselines=0.7 * x
        )
        expected = hope_attr.HOPEAttribution(
            lambda x, select=select: select(model.stage(model.stem(x))), order=ORDER
        ).attribute(x, baselines=0.7 * x)
        _assert_close(actual, expected)


# ------------------------------------------------------------------------ every neuron at once
def test_all_neurons_hold_neuron_feature_ablation_of_every_neuron() -> None:
    model = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    quadrants = torch.arange(4).reshape(2, 2).repeat_interleave(4, 0).repeat_interleave(4, 1)
    kwargs = {"feature_mask": quadrants[None, None], "baselines": 0.4}
    every = _continuation(model, model.stage).attribute_all_neurons(x, **kwargs)
    assert every.shape == (2, 4, 4, 4, 1, 8, 8)  # (B, *layer output, *input)
    ablation = NeuronFeatureAblation(model, model.stage)
    for neuron in itertools.product(range(4), range(4), range(4)):
        expected = ablation.attribute(x, neuron_selector=neuron, **kwargs)
        _assert_close(every[(slice(None), *neuron)], expected)


# Exact against exact: a baseline outside a series' radius changes both alike.
@pytest.mark.filterwarnings("ignore::hope_attr.ConvergenceWarning")
def test_all_neurons_hold_each_neurons_attribute() -> None:
    cnn, mlp = _model(StagedCNN), _model(FailsAfterLayer)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    cases = [  # (forward_func, layer, inputs, attribute_to_neuron_input, the neurons' shape)
        ((lambda a, b: cnn(a + b)), cnn.stage, (x, 0.5 * x), False, (4, 4, 4)),
        (mlp, mlp.act, torch.randn(3, 3, dtype=DTYPE), True, (4,)),
    ]
    for model, layer, inputs, to_input, shape in cases:
        hope = hope_attr.NeuronHOPEAttribution(model, layer, order=ORDER)
        kwargs = {"baselines": (0.3, 0.1) if isinstance(inputs, tuple) else 0.3}
        every = hope.attribute_all_neurons(inputs, attribute_to_neuron_input=to_input, **kwargs)
        every = every if isinstance(every, tuple) else (every,)
        for neuron in itertools.product(*map(range, shape)):
            expected = hope.attribute(
                inputs, neuron_selector=neuron, attribute_to_neuron_input=to_input, **kwargs
            )
            expected = expected if isinstance(expected, tuple) else (expected,)
            _assert_close(tuple(e[(slice(None), *neuron)] for e in every), expected)
    pair = _model(TupleNet)
    with pytest.raises(ValueError, match="2 tensors; attribute_all_neurons needs one"):
        hope_attr.NeuronHOPEAttribution(pair, pair.split).attribute_all_neurons(
            torch.randn(2, 4, dtype=DTYPE)
        )


# ------------------------------------------------------------------------------ DataParallel
def test_a_data_parallel_model_is_run_as_its_module() -> None:
    model = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    expected = NeuronFeatureAblation(model, model.stage).attribute(x, neuron_selector=(1, 2, 3))
    unwrapped = _continuation(model, model.stage).attribute(x, neuron_selector=(1, 2, 3))
    for wrapper in (torch.nn.DataParallel, ScatteringDataParallel):
        hope = hope_attr.NeuronHOPEAttribution(
            wrapper(model), model.stage, order=ORDER, method="continuation", rtol=1e-12,
            device_ids=[0, 1],
        )  # fmt: skip
        actual = hope.attribute(x, neuron_selector=(1, 2, 3))
        assert torch.equal(actual, unwrapped)
        _assert_close(actual, expected)


# --------------------------------------------- the forward stops, the model stays unchanged
def test_the_forward_stops_after_the_layer_and_the_model_is_unchanged() -> None:
    model = _model(FailsAfterLayer)
    x = torch.randn(3, 3, dtype=DTYPE)
    before = model_state(model)
    # Past the layer the forward raises on jets: it is never reached.
    for method in ("exact", "continuation"):
        hope = hope_attr.NeuronHOPEAttribution(model, model.act, order=3, method=method)
        assert hope.attribute(x, neuron_selector=1).shape == x.shape
    assert _same(before, model_state(model))
    with pytest.raises(RuntimeError, match="no jets past this point"):  # before the layer
        hope_attr.NeuronHOPEAttribution(model, model.head).attribute(x, neuron_selector=0)
    assert _same(before, model_state(model))


def test_selectors_that_do_not_fit_the_layer_are_refused() -> None:
    model = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    hope = hope_attr.NeuronHOPEAttribution(model, model.stage)
    with pytest.raises(ValueError, match="has 2 indices.*3 axes besides the batch"):
        hope.attribute(x, neuron_selector=(1, 2))
    with pytest.raises(ValueError, match="out of range on axis 1"):
        hope.attribute(x, neuron_selector=(4, 0, 0))
    with pytest.raises(TypeError, match="an int, a tuple of ints and slices, or a function"):
        hope.attribute(x, neuron_selector=[1, 2, 3])
    with pytest.raises(ValueError, match="one value per example"):
        hope.attribute(x, neuron_selector=lambda out: out[:, 0])
    text = _model(TinyText)
    with pytest.raises(TypeError, match="inputs\\[0\\] has dtype torch.int64.*embeddings"):
        hope_attr.NeuronHOPEAttribution(text, text.encoder).attribute(
            torch.randint(0, 20, (2, 6)), neuron_selector=(0, 0)
        )
    pair = _model(TupleNet)
    with pytest.raises(ValueError, match="2 tensors.*pass a function"):
        hope_attr.NeuronHOPEAttribution(pair, pair.split).attribute(
            torch.randn(2, 4, dtype=DTYPE), neuron_selector=0
        )
