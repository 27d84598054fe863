"""LayerHOPEAttribution against Captum's LayerFeatureAblation and the primary method.

* ``method="continuation"`` with ``rtol=1e-12`` equals Captum's ``LayerFeatureAblation`` (the
  independent reference: Captum's own hooks and forward passes) to 1e-10 in float64: on a CNN
  stage (smooth and ReLU), a transformer's embedding layer of a model called on token ids (a
  small torch model, and Hugging Face's BERT), a layer with tuple outputs, a layer's inputs;
  with layer masks, layer baselines, per-example targets.
* ``method="exact"`` equals :class:`~hope_attr.HOPEAttribution` on the model rewritten to start
  at the layer (the series themselves are checked against nested ``torch.func.jvp`` by the
  primary method's tests).
* ``attribute_all_targets`` holds every target's ``attribute``.
* An ``nn.DataParallel`` model is run as its wrapped module (its own forward, which would
  scatter the jets over replicas, never runs): the same attributions as the module's, and
  Captum's ``device_ids`` is taken, as Captum's constructors take it.
* The model is unchanged afterwards, after an error mid-call too; a layer that runs twice, or not
  at all, an integer or batch-less activation are refused with messages that say what to do.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.modules.module as module_globals
from captum.attr import LayerFeatureAblation, NeuronFeatureAblation
from torch import Tensor, nn

import hope_attr

DTYPE = torch.float64
ORDER = 5
EXACT = 1e-10

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------------- models
class StagedCNN(nn.Module):
    """A stem, one stage (the layer attributed to) and a head, like a ResNet's stages."""

    def __init__(self, activation: type[nn.Module] = nn.Softplus) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh())
        self.stage = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), activation())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))

    def after_stage(self, h: Tensor) -> Tensor:
        return self.head(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.after_stage(self.stage(self.stem(x)))


class TinyText(nn.Module):
    """A text classifier called on token ids: embedding, one encoder layer, mean pooling."""

    def __init__(self, vocab: int = 20, dim: int = 8, length: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(0.1 * torch.randn(1, length, dim))
        self.encoder = nn.TransformerEncoderLayer(
            dim, nhead=2, dim_feedforward=16, dropout=0.0, activation="gelu", batch_first=True
        )
        self.head = nn.Linear(dim, classes)

    def after_embedding(self, embedded: Tensor) -> Tensor:
        return self.head(self.encoder(embedded + self.position).mean(1))

    def forward(self, ids: Tensor) -> Tensor:
        return self.after_embedding(self.embedding(ids))


class TwoWay(nn.Module):
    """A layer with tuple outputs."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, 3)
        self.value = nn.Linear(width, 2)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sigmoid(self.gate(h)), torch.tanh(self.value(h))


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 5)
        self.split = TwoWay(5)
        self.head = nn.Linear(5, 3)

    def after_split(self, gate: Tensor, value: Tensor) -> Tensor:
        return self.head(torch.cat([gate * gate.sum(1, keepdim=True), value.exp()], 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.after_split(*self.split(torch.tanh(self.encoder(x))))


class Combine(nn.Module):
    """A layer with two positional inputs (attribute_to_layer_input)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.tanh(a) * torch.sigmoid(b)


class TwoInputLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Linear(3, 4), nn.Linear(3, 4)
        self.combine = Combine()
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.combine(self.left(x), self.right(x)))


def _model(cls: type[nn.Module], *args: object) -> nn.Module:
    torch.manual_seed(0)
    return cls(*args).to(DTYPE).eval()


def _continuation(model: object, layer: nn.Module) -> hope_attr.LayerHOPEAttribution:
    # rtol=1e-12: a series is kept only where it has converged to rounding; elsewhere the
    # model is evaluated at the baseline, as FeatureAblation does.
    return hope_attr.LayerHOPEAttribution(
        model, layer, order=ORDER, method="continuation", rtol=1e-12
    )


def _assert_close(actual: object, expected: object) -> None:
    actual = actual if isinstance(actual, tuple) else (actual,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        assert e.abs().max() > 1e-4  # the comparison is not between zeros
        torch.testing.assert_close(a, e, rtol=0, atol=EXACT)


# -------------------------------------------------------- continuation = LayerFeatureAblation
STAGE_CASES = {
    "each neuron, zero": {},
    "channels, a number": {
        "layer_mask": torch.arange(4).reshape(1, 4, 1, 1),
        "layer_baselines": 0.5,
    },
    "quadrants, a tensor": {
        "layer_mask": torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])[None],
        "layer_baselines": torch.linspace(-1, 1, 64, dtype=DTYPE).reshape(1, 4, 4, 4),
    },
}


@pytest.mark.parametrize("activation", [nn.Softplus, nn.ReLU], ids=["smooth", "relu"])
@pytest.mark.parametrize("case", list(STAGE_CASES), ids=list(STAGE_CASES))
def test_continuation_equals_layer_feature_ablation_on_a_cnn_stage(
    activation: type[nn.Module], case: str
) -> None:
    model = _model(StagedCNN, activation)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    kwargs = STAGE_CASES[case]
    for target in (1, [2, 0]):
        expected = LayerFeatureAblation(model, model.stage).attribute(x, target=target, **kwargs)
        actual = _continuation(model, model.stage).attribute(x, target=target, **kwargs)
        _assert_close(actual, expected)


def test_continuation_equals_layer_feature_ablation_on_the_embedding_of_a_token_model() -> None:
    model = _model(TinyText)
    ids = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(1))
    tokens = torch.arange(6).reshape(1, 6, 1)  # a group per token: all of its embedding
    for kwargs in ({"layer_mask": tokens}, {"layer_mask": tokens, "layer_baselines": 0.1}, {}):
        expected = LayerFeatureAblation(model, model.embedding).attribute(ids, target=2, **kwargs)
        actual = _continuation(model, model.embedding).attribute(ids, target=2, **kwargs)
        assert actual.shape == (2, 6, 8)
        _assert_close(actual, expected)


@pytest.mark.slow
def test_continuation_equals_layer_feature_ablation_on_bert_embeddings() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    bert = transformers.BertForSequenceClassification(config).to(DTYPE).eval()

    def logits(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return bert(input_ids, attention_mask=attention_mask).logits

    ids = torch.randint(1, 30, (2, 7), generator=torch.Generator().manual_seed(2))
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0  # padding in the second example: an additional argument per example
    tokens = torch.arange(7).reshape(1, 7, 1)
    layer = bert.bert.embeddings
    expected = LayerFeatureAblation(logits, layer).attribute(
        ids, target=[1, 2], additional_forward_args=(attention,), layer_mask=tokens
    )
    hope = _continuation(logits, layer)
    actual = hope.attribute(
        ids, target=[1, 2], additional_forward_args=(attention,), layer_mask=tokens
    )
    _assert_close(actual, expected)
    every = hope.attribute_all_targets(ids, additional_forward_args=(attention,), layer_mask=tokens)
    _assert_close((every[0, 1], every[1, 2]), (expected[0], expected[1]))


def test_continuation_equals_layer_feature_ablation_on_tuple_outputs() -> None:
    model = _model(TupleNet)
    x = torch.randn(3, 4, dtype=DTYPE)
    masks = (torch.tensor([[0, 1, 1]]), torch.tensor([[2, 0]]))  # group 0 spans both tensors
    for kwargs in ({}, {"layer_mask": masks, "layer_baselines": (0.5, -0.2)}):
        expected = LayerFeatureAblation(model, model.split).attribute(x, target=1, **kwargs)
        actual = _continuation(model, model.split).attribute(x, target=1, **kwargs)
        assert isinstance(actual, tuple) and len(actual) == 2
        _assert_close(actual, expected)


def test_continuation_equals_layer_feature_ablation_on_a_layers_inputs() -> None:
    model = _model(TwoInputLayerNet)
    x = torch.randn(3, 3, dtype=DTYPE)
    expected = LayerFeatureAblation(model, model.combine).attribute(
        x, target=0, attribute_to_layer_input=True, layer_baselines=(0.3, -0.3)
    )
    actual = _continuation(model, model.combine).attribute(
        x, target=0, attribute_to_layer_input=True, layer_baselines=(0.3, -0.3)
    )
    _assert_close(actual, expected)
    # A one-input layer's input: what the stage receives is the stem's output.
    model = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    expected = LayerFeatureAblation(model, model.stage).attribute(
        x, target=1, attribute_to_layer_input=True
    )
    actual = _continuation(model, model.stage).attribute(x, target=1, attribute_to_layer_input=True)
    _assert_close(actual, expected)


# ------------------------------------------------------ exact = the model started at the layer
def test_exact_equals_the_primary_method_on_the_model_started_at_the_layer() -> None:
    cnn = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    with torch.no_grad():
        stage_out = cnn.stage(cnn.stem(x))
    mask = torch.arange(4).reshape(1, 4, 1, 1)
    for kwargs in ({"layer_baselines": 0.9 * stage_out}, {"layer_mask": mask}):
        actual = hope_attr.LayerHOPEAttribution(cnn, cnn.stage, order=ORDER).attribute(
            x, target=2, **kwargs
        )
        expected = hope_attr.HOPEAttribution(cnn.after_stage, order=ORDER).attribute(
            stage_out, target=2, baselines=kwargs.get("layer_baselines"),
            feature_mask=kwargs.get("layer_mask"),
        )  # fmt: skip
        _assert_close(actual, expected)

    text = _model(TinyText)
    ids = torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(1))
    embedded = text.embedding(ids).detach()
    tokens = torch.arange(6).reshape(1, 6, 1)
    actual = hope_attr.LayerHOPEAttribution(
        text, text.embedding, order=ORDER
    ).attribute_all_targets(ids, layer_baselines=0.8 * embedded, layer_mask=tokens)
    expected = hope_attr.HOPEAttribution(text.after_embedding, order=ORDER).attribute_all_targets(
        embedded, baselines=0.8 * embedded, feature_mask=tokens
    )
    _assert_close(actual, expected)

    pair = _model(TupleNet)
    x = torch.randn(3, 4, dtype=DTYPE)
    outputs = tuple(t.detach() for t in pair.split(torch.tanh(pair.encoder(x))))
    actual = hope_attr.LayerHOPEAttribution(pair, pair.split, order=ORDER).attribute(x, target=0)
    expected = hope_attr.HOPEAttribution(pair.after_split, order=ORDER).attribute(outputs, target=0)
    _assert_close(actual, expected)


def test_all_targets_hold_every_targets_attributions() -> None:
    model = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    hope = _continuation(model, model.stage)
    every = hope.attribute_all_targets(x, layer_baselines=0.2)
    assert every.shape == (2, 3, 4, 4, 4)
    for target in range(3):
        expected = LayerFeatureAblation(model, model.stage).attribute(
            x, target=target, layer_baselines=0.2
        )
        _assert_close(every[:, target], expected)


# ------------------------------------------------------------------------------ DataParallel
class ScatteringDataParallel(nn.DataParallel):
    """``nn.DataParallel`` as it behaves with several GPUs, on a CPU: its forward scatters the
    batch over replicas, which jets cannot take (here it raises). On a machine without GPUs a
    plain ``nn.DataParallel`` calls its module, so it cannot tell whether it was run at all."""

    def forward(self, *inputs: object, **kwargs: object) -> Tensor:
        raise RuntimeError("DataParallel.forward ran: the batch was scattered over replicas")


def test_a_data_parallel_model_is_run_as_its_module() -> None:
    model = _model(StagedCNN)
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    expected = LayerFeatureAblation(model, model.stage).attribute(x, target=1, layer_baselines=0.3)
    unwrapped = _continuation(model, model.stage).attribute(x, target=1, layer_baselines=0.3)
    before = model_state(model)
    for wrapper in (nn.DataParallel, ScatteringDataParallel):
        for device_ids in (None, [0, 1]):  # Captum's: not needed for the model itself
            hope = hope_attr.LayerHOPEAttribution(
                wrapper(model), model.stage, order=ORDER, method="continuation", rtol=1e-12,
                device_ids=device_ids,
            )  # fmt: skip
            assert hope.device_ids == device_ids
            actual = hope.attribute(x, target=1, layer_baselines=0.3)
            assert torch.equal(actual, unwrapped)
            _assert_close(actual, expected)
            every = hope.attribute_all_targets(x, layer_baselines=0.3)
            _assert_close(every[:, 1], expected)
    assert _same(before, model_state(model))


def test_device_ids_is_captums_argument_and_several_devices_around_a_function_are_refused() -> None:
    model = _model(StagedCNN)
    parallel = nn.DataParallel(model)

    def around(x: Tensor) -> Tensor:  # a function that applies the parallel model
        return parallel(x)[:, 0]

    for ours, captums in (
        (hope_attr.LayerHOPEAttribution, LayerFeatureAblation),
        (hope_attr.NeuronHOPEAttribution, NeuronFeatureAblation),
    ):
        theirs = inspect.signature(captums.__init__).parameters
        assert set(theirs) <= set(inspect.signature(ours.__init__).parameters)
        assert "device_ids:" in inspect.getdoc(ours.__init__)
        with pytest.raises(ValueError, match="over 2 devices.*pass the DataParallel model itself"):
            ours(around, model.stage, device_ids=[0, 1])
        with pytest.raises(TypeError, match="list of device ids"):
            ours(parallel, model.stage, device_ids="cuda:0")
        # One device: DataParallel calls its module there (a jet, not a tensor, passes as is).
        assert ours(around, model.stage, device_ids=[0]).device_ids == [0]


# ------------------------------------------------------------------------ the model unchanged
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")  # fmt: skip


def model_state(model: nn.Module) -> list[object]:
    """Every hook (per module and global), parameter, buffer and mode of ``model``."""
    state: list[object] = []
    for name, module in model.named_modules():
        state.append((name, module.training, *(list(getattr(module, h)) for h in _HOOKS)))
    for name, value in model.state_dict().items():
        state.append((name, value.clone()))
    for name in sorted(dir(module_globals)):
        value = getattr(module_globals, name)
        if name.startswith("_global") and isinstance(value, dict):
            state.append((name, list(value)))
    return state


def _same(before: list[object], after: list[object]) -> bool:
    if len(before) != len(after):
        return False
    for a, b in zip(before, after, strict=True):
        if isinstance(a[1], Tensor):
            if a[0] != b[0] or not torch.equal(a[1], b[1]):
                return False
        elif a != b:
            return False
    return True


class FailsAfterLayer(nn.Module):
    """Raises in the middle of a forward pass on jets, after the layer's hook has run."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act, self.head = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.lin(x))
        if not isinstance(h, Tensor):
            raise RuntimeError("no jets past this point")
        return self.head(h)


def test_the_model_is_unchanged_after_calls_and_after_an_error_mid_call() -> None:
    model = _model(StagedCNN)
    model.stem.register_forward_hook(lambda module, args, output: None)  # the user's own hook
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    before = model_state(model)
    for method in ("exact", "continuation"):
        hope = hope_attr.LayerHOPEAttribution(model, model.stage, order=3, method=method)
        hope.attribute(x, target=0)
        hope.attribute_all_targets(x, attribute_to_layer_input=True)
    assert _same(before, model_state(model))

    failing = _model(FailsAfterLayer)
    before = model_state(failing)
    with pytest.raises(RuntimeError, match="no jets past this point"):
        hope_attr.LayerHOPEAttribution(failing, failing.act).attribute(
            torch.randn(2, 3, dtype=DTYPE), target=0
        )
    assert _same(before, model_state(failing))
    assert not failing.act._forward_hooks


# ---------------------------------------------------------------------------------- refusals
class Reuses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act = nn.Linear(3, 3), nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.lin(self.act(x))).sum(1, keepdim=True)


class SequenceFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x.transpose(0, 1)).transpose(0, 1).sum((1, 2))


def test_layers_without_one_batch_first_floating_activation_are_refused() -> None:
    x = torch.randn(2, 3, dtype=DTYPE)
    model = _model(Reuses)
    before = model_state(model)
    with pytest.raises(ValueError, match="runs 2 times in one forward pass.*its own module"):
        hope_attr.LayerHOPEAttribution(model, model.act).attribute(x)
    with pytest.raises(ValueError, match="was not called by forward_func"):
        hope_attr.LayerHOPEAttribution(model, nn.Tanh()).attribute(x)
    text = _model(TinyText)
    ids = torch.randint(0, 20, (2, 6))
    with pytest.raises(TypeError, match="embedding layer's output instead of its input"):
        hope_attr.LayerHOPEAttribution(text, text.embedding).attribute(
            ids, target=0, attribute_to_layer_input=True
        )
    sequence_first = _model(SequenceFirst)
    with pytest.raises(ValueError, match="first axis is not the batch"):
        hope_attr.LayerHOPEAttribution(sequence_first, sequence_first.inner).attribute(
            torch.randn(2, 5, 3, dtype=DTYPE)
        )
    with pytest.raises(TypeError, match="layer must be a torch.nn.Module"):
        hope_attr.LayerHOPEAttribution(model, "act")
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        hope_attr.LayerHOPEAttribution(model, model.lin).attribute(x, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="method"):
        hope_attr.LayerHOPEAttribution(model, model.lin, method="taylor")
    assert _same(before, model_state(model))


def test_a_list_output_is_attributed_like_the_same_tuple() -> None:
    class ListWay(TwoWay):
        def forward(self, h: Tensor) -> list[Tensor]:  # type: ignore[override]
            return list(super().forward(h))

    tuple_model = _model(TupleNet)
    list_model = _model(TupleNet)
    list_model.split = ListWay(5).to(DTYPE)
    list_model.split.load_state_dict(tuple_model.split.state_dict())  # the same layer, a list
    x = torch.randn(2, 4, dtype=DTYPE)
    expected = _continuation(tuple_model, tuple_model.split).attribute(x, target=2)
    actual = _continuation(list_model, list_model.split).attribute(x, target=2)
    _assert_close(actual, expected)
