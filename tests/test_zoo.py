"""The model zoo: real architectures run with no user rule, exact against nested ``jvp``.

Random weights in float64, eval mode, BatchNorm statistics from a few training-mode passes of
random data (default statistics give near-zero signals), weights that start at zero (torchvision's
ViT head, timm's Hiera head, layer scales) randomized. Each model is checked along two random
directions of its input, orders 1-2, against nested ``torch.func.jvp`` with the ops whose native
kernels are wrong under nested forward AD composed (tests/oracle.py).

Some models compute in float32 on purpose inside a float64 run (RMSNorm's ``x.float()`` in Llama,
Gemma and Mamba, efficientvit's attention): both the expansion and the reference then round to
float32 (~5e-8). Those are checked as they are at 1e-6, and at 1e-8 with the casts kept in float64
(:class:`KeepFloat64`, which changes the function for the expansion and the reference alike).

The default run covers every architecture family at a small width (seconds each), the models of
issue 29 and a segmentation model; ``-m zoo`` runs every classification constructor of
``torchvision.models`` at its own width, one representative of every timm family and the Hugging
Face causal and encoder families (tens of minutes on 2 cores):
``python -m pytest tests/test_zoo.py -m zoo``.
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


def check_model(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tol: float = TOL
) -> None:
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
            assert error < tol, f"order {k}, direction {d}: relative error {error:.2e}"


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


# --------------------------------------------------------------------------- issue 29's models
class KeepFloat64(torch.overrides.TorchFunctionMode):
    """Casts to float32 inside a model (``x.float()``, ``x.to(torch.float32)``, and
    ``dtype=torch.float32`` as in Hugging Face's eager attention, ``softmax(s, -1,
    dtype=torch.float32)``) kept in float64, for the expansion and the reference alike, so that
    1e-8 can be checked."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        if func is torch.Tensor.float:  # an integer tensor (positions) still becomes floating
            return args[0] if args[0].is_floating_point() else args[0].double()
        if kwargs.get("dtype") is torch.float32:
            kwargs = {**kwargs, "dtype": torch.float64}
        if func in (torch.Tensor.to, torch.Tensor.type):
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            kwargs = {k: torch.float64 if v is torch.float32 else v for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _randomize_zero_weights(model: nn.Module) -> list[str]:
    """Weights that start at zero (heads, layer scales) made random: else every derivative
    through them is 0. Returns their names."""
    names = [
        name
        for name, p in model.named_parameters()
        if p.dim() >= 1 and not name.endswith("bias") and bool((p == 0).all())
    ]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names:
                nn.init.normal_(p, std=0.2)
    return names


def _timm_issue_models() -> dict[str, Callable[[], nn.Module]]:
    timm = pytest.importorskip("timm")
    m = timm.models
    return {
        "efficientvit_b0": lambda: timm.create_model(
            "efficientvit_b0", pretrained=False, num_classes=5, widths=(4, 8, 16, 32),
            depths=(1, 1, 1, 1), head_dim=4, head_widths=(32, 32),
        ),
        "eva02": lambda: timm.create_model(
            "eva02_tiny_patch14_224", pretrained=False, img_size=28, patch_size=14, depth=1,
            embed_dim=16, num_heads=2, num_classes=5,
        ),
        "hiera": lambda: timm.create_model(
            "hiera_tiny_224", pretrained=False, img_size=64, embed_dim=8, num_heads=1,
            stages=(1, 1, 1, 1), num_classes=5,
        ),
        "volo": lambda: m.volo.VOLO(
            layers=[1, 1, 1, 1], img_size=32, embed_dims=[16] * 4, num_heads=[1] * 4,
            num_classes=5, stem_hidden_dim=8,
        ),
        "mvitv2": lambda: m.mvitv2.MultiScaleVit(
            m.mvitv2.MultiScaleVitCfg(depths=(1, 1, 1, 1), embed_dim=8, num_heads=1),
            img_size=(32, 32), num_classes=5,
        ),
    }  # fmt: skip


_TIMM_SIZES = {"hiera": 64, "eva02": 28}


@pytest.mark.parametrize("name", ["efficientvit_b0", "eva02", "hiera", "volo", "mvitv2"])
def test_timm_models_of_issue_29(name: str) -> None:
    torch.manual_seed(0)
    model = _timm_issue_models()[name]()
    _randomize_zero_weights(model)  # hiera's head
    x = _image(_TIMM_SIZES.get(name, 32))
    model = _realistic(model, x)
    if name == "efficientvit_b0":  # its attention runs in float32 (LiteMLA._attn)
        check_model(model, x, tol=1e-6)
        with KeepFloat64():
            check_model(model, x)
    else:
        check_model(model, x)


def _hf_causal_models() -> dict[str, Callable[[], nn.Module]]:
    transformers = pytest.importorskip("transformers")
    small = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
             "num_hidden_layers": 2, "vocab_size": 30}  # fmt: skip
    return {
        "gemma": lambda: transformers.GemmaForCausalLM(
            transformers.GemmaConfig(head_dim=8, num_key_value_heads=1, **small)
        ),
        "gemma2 (logit soft-capping)": lambda: transformers.Gemma2ForCausalLM(
            transformers.Gemma2Config(head_dim=8, num_key_value_heads=1, **small)
        ),
        "gpt2 (eager attention)": lambda: transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                n_embd=16, n_layer=2, n_head=2, vocab_size=30, bos_token_id=0, eos_token_id=0
            )
        ),
        "mamba": lambda: transformers.MambaForCausalLM(
            transformers.MambaConfig(
                hidden_size=16, num_hidden_layers=2, vocab_size=30, state_size=4, expand=2,
                conv_kernel=3,
            )
        ),
        "llama": lambda: transformers.LlamaForCausalLM(
            transformers.LlamaConfig(num_key_value_heads=1, **small)
        ),
    }  # fmt: skip


def _hf_logits(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    model.config._attn_implementation = "eager"  # the explicit softmax(q k^T) path
    model = model.double().eval()
    return lambda e: model(inputs_embeds=e, use_cache=False).logits


@pytest.mark.parametrize(
    "name", ["gemma", "gemma2 (logit soft-capping)", "gpt2 (eager attention)", "mamba", "llama"]
)
def test_hugging_face_causal_models(name: str) -> None:
    """Mamba runs its reference scan (use_cache=False); Gemma, Llama and Mamba cast to float32
    in their RMSNorm, and Hugging Face's eager attention takes its softmax in float32
    (``softmax(scores, -1, dtype=torch.float32)``): 1e-6 as they are, 1e-8 with the casts kept
    in float64. The float32 softmax alone put Gemma 2 3.4e-8 from the reference, its logit
    soft-capping nothing (3.4e-8 with and without it; 5e-16 once the softmax is kept in
    float64): the expansion and nested jvp both compute it in float32, and round differently."""
    torch.manual_seed(0)
    forward = _hf_logits(_hf_causal_models()[name]())
    embeddings = torch.randn(1, 5, 16, dtype=torch.float64)
    if name != "gpt2 (eager attention)":
        check_model(forward, embeddings, tol=1e-6)
    with KeepFloat64():
        check_model(forward, embeddings)


def _precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].double() / dim))
    freqs = torch.outer(torch.arange(end, dtype=torch.float64), freqs)
    return torch.polar(torch.ones_like(freqs), freqs)


def _apply_rotary_emb(xq: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    x = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    shape = [d if i in (1, x.ndim - 1) else 1 for i, d in enumerate(x.shape)]
    return torch.view_as_real(x * freqs_cis.view(*shape)).flatten(3).type_as(xq)


class MetaStyleBlock(nn.Module):
    """Meta's reference Llama layer (llama/model.py): RMSNorm in float32, rotary embeddings
    through ``view_as_complex``, causal attention, SwiGLU feed-forward."""

    def __init__(self, dim: int = 16, heads: int = 2, length: int = 5) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(dim, 32, bias=False), nn.Linear(dim, 32, bias=False)
        self.w2 = nn.Linear(32, dim, bias=False)
        self.norm_weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.register_buffer("freqs_cis", _precompute_freqs_cis(dim // heads, length))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return normed.type_as(x) * self.norm_weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, length, _ = h.shape
        x = self._norm(h)
        q, k, v = (w(x).view(batch, length, self.heads, self.head_dim) for w in self.qkv())
        q, k = _apply_rotary_emb(q, self.freqs_cis), _apply_rotary_emb(k, self.freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        mask = torch.full((length, length), float("-inf"), dtype=h.dtype).triu(1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim) + mask
        attention = torch.softmax(scores.float(), dim=-1).type_as(q)
        out = torch.matmul(attention, v).transpose(1, 2).contiguous().view(batch, length, -1)
        h = h + self.wo(out)
        x = self._norm(h)
        return h + self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))

    def qkv(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.wq, self.wk, self.wv


def test_meta_style_llama_with_complex_rotary_embeddings() -> None:
    torch.manual_seed(0)
    model = MetaStyleBlock().double().eval()
    embeddings = torch.randn(1, 5, 16, dtype=torch.float64)
    check_model(model, embeddings, tol=1e-6)  # its RMSNorm and softmax run in float32
    with KeepFloat64():
        check_model(model, embeddings)


def test_torchvision_segmentation_through_its_out_key() -> None:
    segmentation = models.segmentation
    torch.manual_seed(0)
    model = segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3
    )
    x = _image(32)
    model = _realistic(model, x)
    check_model(lambda t: model(t)["out"], x)
    with pytest.raises(TypeError, match="OrderedDict"):  # a dict output: select one entry
        Expansion(model, x, 1)


# --------------------------------------------------------------------------- `-m zoo` sweeps
# One representative per timm family (timm.list_modules()): its smallest model by parameter count
# (timm 1.0.31, measured on the meta device), run at 64 px where the model accepts that size.
TIMM_FAMILIES = (
    "beit_base_patch16_224", "halonet_h1", "test_byobnet", "cait_xxs24_224", "coat_tiny",
    "convit_tiny", "convmixer_768_32", "test_convnext", "cpubone_nano", "crossvit_tiny_240",
    "csatv2", "cs3darknet_focus_s", "cspnext_tiny", "davit_tiny", "deepseek_vit_412m",
    "deit_tiny_patch16_224", "densenet121", "dla46x_c", "dpn48b", "edgenext_xx_small",
    "efficientformer_l1", "efficientformerv2_s0", "test_efficientnet", "efficientvim_m1",
    "efficientvit_b0", "efficientvit_m0", "vit_tiny_patch16_dinov3_qkvb", "fasternet_t0",
    "fastvit_t8", "focalnet_tiny_srf", "gcvit_xxtiny", "gemma4_vit_167m", "ghostnet_050",
    "hardcorenas_b", "hgnetv2_b0", "hiera_tiny_224", "sam2_hiera_tiny", "hrnet_w18_small",
    "iformer_t", "inception_next_atto", "inception_resnet_v2", "inception_v3", "inception_v4",
    "lcnetv2_small", "levit_128s", "lowformer_b0", "test_mambaout", "test_coatnet",
    "poolformerv2_s12", "gmlp_ti16_224", "mobilenetv3_small_050", "mobilenetv5_base",
    "mobilevit_xxs", "mvitv2_tiny", "naflexvit_base_patch16_parfac_gap", "nasnetalarge",
    "nest_tiny", "nextvit_small", "test_nfnet", "pit_ti_224", "pnasnet5large", "pvt_v2_b0",
    "qwen3_vit_88m", "rdnet_tiny", "regnetx_002", "repghostnet_050", "repvit_m1", "res2next50",
    "resnest14d", "test_resnet", "resnetv2_18", "rexnet_100", "selecsls42", "legacy_seresnet18",
    "sequencer2d_s", "shvit_s1", "skresnet18", "starnet_s050", "swiftformer_xs",
    "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256", "swinv2_cr_tiny_224",
    "tiny_vit_5m_224", "tnt_s_legacy_patch16_224", "tresnet_m", "twins_svt_small", "vgg11",
    "visformer_tiny", "test_vit", "vit_tiny_r_s16_p8_224", "test_vit_relpos",
    "samvit_base_patch16_224", "vitamin_small_224", "volo_d1_224", "ese_vovnet19b_slim_dw",
    "legacy_xception", "xception41p", "xcit_nano_12_p8_224",
)  # fmt: skip
_TIMM_TOO_BIG = 60_000_000  # parameters: a float64 nested-jvp reference of these takes hours here
# The smallest model of these families is a base-size transformer: one narrow block instead.
_NARROW = {
    "beit_base_patch16_224", "samvit_base_patch16_224", "naflexvit_base_patch16_parfac_gap",
    "qwen3_vit_88m", "deepseek_vit_412m", "gemma4_vit_167m",
}  # fmt: skip


def _timm_small(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model at 64 px if it builds and runs there, else at its own input size."""
    timm = pytest.importorskip("timm")
    narrow = [{"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 64}] * (name in _NARROW)
    for kwargs in (*narrow, {"img_size": 64}, {}):
        try:
            model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
        except Exception:  # noqa: BLE001 - no img_size argument (a CNN), or not this size
            continue
        size = 64 if kwargs or "img_size" not in _arguments(model) else None
        if "depth" in kwargs:
            size = 64
        for side in (size, model.pretrained_cfg["input_size"][-1]):
            if side is None:
                continue
            x = _image(side)
            try:
                with torch.no_grad():
                    model.eval()(x.float())
            except Exception:  # noqa: BLE001, S112 - the model needs another size
                continue
            return model, x
    pytest.fail(f"{name} runs at neither 64 px nor its own input size")


def _arguments(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(type(model).__init__).parameters)


def _with_signal(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """:func:`_realistic`, unless its statistics silence the model (xception41p at 64 px: every
    unit of a block off for any input); then the default statistics, which keep a signal."""
    import copy

    realistic = _realistic(copy.deepcopy(model), x)
    with torch.no_grad():
        if not torch.equal(realistic(x), realistic(x + torch.randn_like(x))):
            return realistic
    print("default BatchNorm statistics: the realistic ones silence the model")
    return model.double().eval()


@pytest.mark.zoo
@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_family_representative(name: str) -> None:
    torch.manual_seed(0)
    model, x = _timm_small(name)
    if sum(p.numel() for p in model.parameters()) > _TIMM_TOO_BIG:
        pytest.skip(f"{name} is too large for a float64 nested-jvp reference on this machine")
    randomized = _randomize_zero_weights(model)
    model = _with_signal(model, x)
    with KeepFloat64():  # efficientvit's and some attention blocks' float32 casts
        check_model(model, x)
    if randomized:
        print(f"{name}: randomized the zero-initialized {randomized}")


_SMALL = {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
          "num_hidden_layers": 2, "vocab_size": 30, "pad_token_id": 0}  # fmt: skip
# Hugging Face families: (model class, config class, config), random weights from the config.
HF_CAUSAL = {
    "GPTNeo": ("GPTNeoForCausalLM", "GPTNeoConfig", {
        "hidden_size": 16, "num_heads": 2, "num_layers": 2, "vocab_size": 30, "window_size": 4,
        "attention_types": [[["global", "local"], 1]]}),
    "GPTJ": ("GPTJForCausalLM", "GPTJConfig",
             {"n_embd": 16, "n_head": 2, "n_layer": 2, "rotary_dim": 4, "vocab_size": 30}),
    "OPT": ("OPTForCausalLM", "OPTConfig", {
        "hidden_size": 16, "num_attention_heads": 2, "ffn_dim": 32, "num_hidden_layers": 2,
        "vocab_size": 30, "word_embed_proj_dim": 16}),
    "Bloom": ("BloomForCausalLM", "BloomConfig",
              {"hidden_size": 16, "n_head": 2, "n_layer": 2, "vocab_size": 30}),
    "Llama": ("LlamaForCausalLM", "LlamaConfig", {"num_key_value_heads": 1, **_SMALL}),
    "Mistral": ("MistralForCausalLM", "MistralConfig", {"num_key_value_heads": 1, **_SMALL}),
    "Qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {"num_key_value_heads": 1, **_SMALL}),
    "Qwen3": ("Qwen3ForCausalLM", "Qwen3Config",
              {"num_key_value_heads": 1, "head_dim": 8, **_SMALL}),
    "Phi": ("PhiForCausalLM", "PhiConfig", _SMALL),
    "Phi3": ("Phi3ForCausalLM", "Phi3Config", {"num_key_value_heads": 2, **_SMALL}),
    "Gemma": ("GemmaForCausalLM", "GemmaConfig",
              {"head_dim": 8, "num_key_value_heads": 1, **_SMALL}),
    "Gemma2": ("Gemma2ForCausalLM", "Gemma2Config",
               {"head_dim": 8, "num_key_value_heads": 1, **_SMALL}),
    "Gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig",
               {"head_dim": 8, "num_key_value_heads": 1, **_SMALL}),
    "Falcon": ("FalconForCausalLM", "FalconConfig",
               {"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2,
                "vocab_size": 30}),
    "StableLm": ("StableLmForCausalLM", "StableLmConfig", {"num_key_value_heads": 2, **_SMALL}),
    "GPTNeoX": ("GPTNeoXForCausalLM", "GPTNeoXConfig", _SMALL),
    "CodeGen": ("CodeGenForCausalLM", "CodeGenConfig",
                {"n_embd": 16, "n_head": 2, "n_layer": 2, "rotary_dim": 4, "vocab_size": 30}),
    "OLMo": ("OlmoForCausalLM", "OlmoConfig", {"num_key_value_heads": 2, **_SMALL}),
    "Mamba2": ("Mamba2ForCausalLM", "Mamba2Config", {
        "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 30, "state_size": 4,
        "expand": 2, "conv_kernel": 3, "num_heads": 4, "head_dim": 8, "n_groups": 1}),
}  # fmt: skip
HF_ENCODERS = {
    "Bert": ("BertModel", "BertConfig", _SMALL),
    "Roberta": ("RobertaModel", "RobertaConfig", _SMALL),
    "XLMRoberta": ("XLMRobertaModel", "XLMRobertaConfig", _SMALL),
    "DistilBert": ("DistilBertModel", "DistilBertConfig",
                   {"dim": 16, "n_heads": 2, "hidden_dim": 32, "n_layers": 2, "vocab_size": 30}),
    "Albert": ("AlbertModel", "AlbertConfig", {"embedding_size": 16, **_SMALL}),
    "Electra": ("ElectraModel", "ElectraConfig", {"embedding_size": 16, **_SMALL}),
    "Deberta": ("DebertaModel", "DebertaConfig", _SMALL),
    "DebertaV2": ("DebertaV2Model", "DebertaV2Config", _SMALL),
    "MPNet": ("MPNetModel", "MPNetConfig", _SMALL),
    "ModernBert": ("ModernBertModel", "ModernBertConfig", {
        "bos_token_id": 0, "eos_token_id": 0, "cls_token_id": 0, "sep_token_id": 0, **_SMALL}),
    "T5Encoder": ("T5EncoderModel", "T5Config", {
        "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 2, "num_heads": 2, "vocab_size": 30}),
    "Funnel": ("FunnelModel", "FunnelConfig", {
        "d_model": 16, "n_head": 2, "d_head": 8, "d_inner": 32, "block_sizes": [1, 1],
        "vocab_size": 30}),
}  # fmt: skip


def _bloom_gelu_as_formula(model: nn.Module) -> None:
    """Bloom's GELU is an autograd.Function that nested jvp cannot run: its formula instead,
    for the expansion and the reference alike."""
    from transformers.models.bloom import modeling_bloom

    for module in model.modules():
        if isinstance(module, modeling_bloom.BloomGelu):
            module.forward = modeling_bloom.bloom_gelu_forward


@pytest.mark.zoo
@pytest.mark.parametrize("name", [*HF_CAUSAL, *HF_ENCODERS])
def test_hugging_face_family(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    model_class, config_class, config = {**HF_CAUSAL, **HF_ENCODERS}[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
    model.config._attn_implementation = "eager"
    model = model.double().eval()
    if name == "Bloom":
        _bloom_gelu_as_formula(model)
    if name in HF_CAUSAL:
        forward = lambda e: model(inputs_embeds=e, use_cache=False).logits  # noqa: E731
    else:
        forward = lambda e: model(inputs_embeds=e).last_hidden_state  # noqa: E731
    embeddings = torch.randn(1, 5, model.get_input_embeddings().embedding_dim).double()
    # RMSNorm's x.float() (Llama, Mistral, Qwen, Phi-3, Gemma, T5, Mamba 2), the float32 softmax
    # of the eager attention (Gemma 2 and 3 were 3e-8 off through it, not their soft-capping).
    with KeepFloat64():
        check_model(forward, embeddings)
