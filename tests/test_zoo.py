"""The model zoo: real architectures run with no user rule, exact against nested ``jvp``.

Random weights in float64, eval mode, BatchNorm statistics from a few training-mode passes of
random data (default statistics give near-zero signals), torchvision's ViT head randomized (it
starts at zero). Each model is checked along two random directions of its input, orders 1-2,
against nested ``torch.func.jvp`` with the ops whose native kernels are wrong under nested
forward AD composed (tests/oracle.py).

The default run covers every architecture family at a small width (seconds each); ``-m zoo``
runs every classification constructor of ``torchvision.models`` at its own width (tens of
minutes on 2 cores): ``python -m pytest tests/test_zoo.py -m zoo``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from hope_attr.engine.expansion import Expansion
from tests.oracle import directional_reference

torchvision = pytest.importorskip("torchvision")
models = torchvision.models
pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-8


def _realistic(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Float64, BatchNorm statistics of random data, eval mode."""
    torch.manual_seed(0)
    model = model.double().train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn_like(example).repeat(4, *[1] * (example.dim() - 1)))
    return model.eval()


def check_model(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    torch.manual_seed(1)
    order, num = 2, 2
    directions = torch.randn(num, *x.shape, dtype=x.dtype)
    coefficients = Expansion(forward, x, order).directional_coefficients((directions,))
    for k in range(1, order + 1):
        for d in range(num):
            expected = directional_reference(forward, x, directions[d], k)
            got = coefficients[k - 1, d] * math.factorial(k)
            scale = expected.abs().max().item()
            assert scale > 0 or k > 1, "the model's output does not depend on its input"
            error = (got - expected).abs().max().item() / max(scale, 1e-300)
            assert error < TOL, f"order {k}, direction {d}: relative error {error:.2e}"


def _image(size: int = 32) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(1, 3, size, size, dtype=torch.float64)


def _vit_head_randomized(model: nn.Module) -> nn.Module:
    for parameter in model.heads.parameters():
        nn.init.normal_(parameter, std=0.5)
    return model


# Every family at a small width: the default run.
def _tiny_builders() -> dict[str, Callable[[], tuple[nn.Module, int]]]:
    from torchvision.models.convnext import CNBlockConfig
    from torchvision.models.efficientnet import MBConvConfig

    return {
        "resnet": lambda: (models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1], 10), 32),
        "resnext": lambda: (
            models.ResNet(models.resnet.Bottleneck, [1, 1, 1, 1], 10, groups=4, width_per_group=4),
            32,
        ),
        "mobilenet_v2": lambda: (models.mobilenet_v2(num_classes=10, width_mult=0.25), 32),
        "mobilenet_v3": lambda: (models.mobilenet_v3_small(num_classes=10, width_mult=0.25), 32),
        "efficientnet": lambda: (
            models.EfficientNet(
                [MBConvConfig(1, 3, 1, 8, 8, 1), MBConvConfig(4, 3, 2, 8, 16, 1)], 0.2, 1000
            ),
            32,
        ),
        "convnext": lambda: (
            models.ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=10),
            32,
        ),
        "swin": lambda: (
            models.SwinTransformer([4, 4], 16, [1, 1], [2, 2], [2, 2], num_classes=10), 32
        ),
        "swin_v2": lambda: (
            models.SwinTransformer(
                [4, 4], 16, [1, 1], [2, 2], [2, 2], num_classes=10,
                block=models.swin_transformer.SwinTransformerBlockV2,
                downsample_layer=models.swin_transformer.PatchMergingV2,
            ),
            32,
        ),
        "vit": lambda: (
            _vit_head_randomized(models.VisionTransformer(32, 8, 2, 2, 16, 32, num_classes=10)),
            32,
        ),
        "maxvit": lambda: (
            models.MaxVit(
                (32, 32), 8, 2, [8, 16], [1, 1], head_dim=4, stochastic_depth_prob=0.0,
                num_classes=10,
            ),
            32,
        ),
        "regnet": lambda: (models.regnet_x_400mf(num_classes=10), 32),
        "shufflenet": lambda: (models.shufflenet_v2_x0_5(num_classes=10), 32),
        "squeezenet": lambda: (models.squeezenet1_1(num_classes=10), 32),
        "densenet": lambda: (models.DenseNet(8, (1, 1), 8, num_classes=10), 32),
        "mnasnet": lambda: (models.mnasnet0_5(num_classes=10), 32),
        "googlenet": lambda: (
            models.googlenet(num_classes=10, aux_logits=False, init_weights=True), 32
        ),
    }  # fmt: skip


@pytest.mark.parametrize("family", list(_tiny_builders()))
def test_every_architecture_family_at_small_width(family: str) -> None:
    model, size = _tiny_builders()[family]()
    x = _image(size)
    check_model(_realistic(model, x), x)


# Every torchvision classification constructor at its own width: `-m zoo`.
_SIZE = {"swin": 64, "maxvit": 224, "inception": 80, "alexnet": 64, "vit_h_14": 28}
_TOO_BIG = 150_000_000  # parameters: vit_h_14, regnet_y_128gf... (float64 nested jvp)


def _constructors() -> list[str]:
    try:
        return sorted(models.list_models(module=models))
    except Exception:  # noqa: BLE001 - an old torchvision: skip the zoo
        return []


@pytest.mark.zoo
@pytest.mark.parametrize("name", _constructors())
def test_torchvision_constructor(name: str) -> None:
    size = next((s for prefix, s in _SIZE.items() if name.startswith(prefix)), 32)
    kwargs: dict[str, object] = {"num_classes": 10}
    if name.startswith("vit"):
        kwargs["image_size"] = size
    if name.startswith(("inception", "googlenet")):
        kwargs.update(aux_logits=False, init_weights=True)
    model = models.get_model(name, **kwargs)
    if sum(p.numel() for p in model.parameters()) > _TOO_BIG:
        pytest.skip(f"{name} is too large for a float64 nested-jvp reference on this machine")
    if name.startswith("vit"):
        _vit_head_randomized(model)
    x = _image(size)
    check_model(_realistic(model, x), x)


def test_timm_vit_and_convnext() -> None:
    timm = pytest.importorskip("timm")
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
        num_classes=10,
    )  # fmt: skip
    convnext = timm.create_model(
        "convnext_atto", pretrained=False, depths=(1, 1, 1, 1), num_classes=10
    )
    for model in (vit, convnext):
        x = _image(32)
        check_model(_realistic(model, x), x)


def test_hugging_face_bert_distilbert_vit() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    small = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}
    bert = transformers.BertForSequenceClassification(
        transformers.BertConfig(vocab_size=30, num_hidden_layers=2, num_labels=3, **small)
    )
    distil = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=30, dim=16, n_layers=2, n_heads=2, hidden_dim=32, num_labels=3
        )
    )
    vit = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            image_size=32, patch_size=8, num_hidden_layers=2, num_labels=3, **small
        )
    )
    embeddings = torch.randn(1, 5, 16, dtype=torch.float64)
    for model in (bert, distil):
        model = model.double().eval()
        check_model(lambda e, model=model: model(inputs_embeds=e).logits, embeddings)
    vit = vit.double().eval()
    check_model(lambda p: vit(pixel_values=p).logits, _image(32))
