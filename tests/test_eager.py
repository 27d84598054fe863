"""The eager engine: the model's own forward runs on jets (hooks, branches, threads, wrappers).

Every result is compared with nested ``torch.func.jvp`` in float64 (tests/oracle.py), which runs
the same Python (hooks included) on ordinary tensors.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hope_attr
from hope_attr.engine.expansion import Expansion
from tests.oracle import (
    ComposedReference,
    directional_reference,
    relative_error,
    unmixed_reference,
)

pytestmark = pytest.mark.usefixtures("single_thread")
TOL = 1e-10


def _mlp(features: int = 4, outputs: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 6), nn.Tanh(), nn.Linear(6, outputs)).double().eval()


def _check(model, x: torch.Tensor, order: int = 3) -> None:
    got = hope_attr.unmixed_derivatives(model, x, order)
    with ComposedReference():
        expected = unmixed_reference(model, x, order)
    assert relative_error(got, expected) < TOL


def _check_directions(model, x: torch.Tensor, order: int = 3, num: int = 2) -> None:
    """Against the reference along a few random directions (for larger inputs)."""
    torch.manual_seed(1)
    directions = torch.randn(num, *x.shape, dtype=x.dtype)
    coefficients = Expansion(model, x, order).directional_coefficients((directions,))
    factorial = 1.0
    for k in range(1, order + 1):
        factorial *= k
        for d in range(num):
            expected = directional_reference(model, x, directions[d], k)
            got = coefficients[k - 1, d] * factorial
            scale = expected.abs().max().clamp_min(1e-300)
            assert ((got - expected).abs().max() / scale).item() < 1e-8, (k, d)


class Branchy(nn.Module):
    """Shape asserts, `if` on a dimension and on a value, a varargs reshape, a reused module."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = _mlp(4, 6)
        self.head = nn.Linear(6, 3).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 4, "expects 4 features"
        h = self.mlp(x)
        if x.dim() == 2:
            h = h.reshape(x.shape[0], 2, 3).reshape(x.shape[0], 6)
        if h.sum() > 0:  # decided at the expansion point, like a ReLU's kink
            h = torch.sin(h)
        else:
            h = torch.cos(h)
        return self.head(torch.tanh(self.head(h).repeat(1, 2)))


def test_python_control_flow_runs_on_the_primal() -> None:
    x = torch.randn(2, 4, dtype=torch.float64)
    _check(Branchy().eval(), x)


def test_output_changing_forward_hook_and_pre_hook_take_effect() -> None:
    model = _mlp()
    x = torch.randn(2, 4, dtype=torch.float64)
    plain = hope_attr.unmixed_derivatives(model, x, 3)
    scale = model[1].register_forward_pre_hook(lambda m, args: (args[0] * 1.7,))
    shift = model[0].register_forward_hook(lambda m, args, out: out * out)
    try:
        hooked = hope_attr.unmixed_derivatives(model, x, 3)
        assert relative_error(hooked, unmixed_reference(model, x, 3)) < TOL
        assert (hooked - plain).abs().max() > 1e-3  # the hooks changed the function
    finally:
        scale.remove()
        shift.remove()
    assert not model[0]._forward_hooks and not model[1]._forward_pre_hooks


def test_global_module_hooks_take_effect_and_ours_are_gone_afterwards() -> None:
    model = _mlp()
    x = torch.randn(2, 4, dtype=torch.float64)

    def square_linear_outputs(module, args, out):  # noqa: ANN001, ANN202
        return out * out if isinstance(module, nn.Linear) else None

    handle = nn.modules.module.register_module_forward_hook(square_linear_outputs)
    try:
        _check(model, x)
    finally:
        handle.remove()
    mod = nn.modules.module
    assert not mod._global_forward_hooks and not mod._global_forward_pre_hooks


class Cube(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x**3


class WithCube(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _mlp(4, 4)
        self.cube = Cube()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cube(self.inner(x)).sum(-1, keepdim=True)


def test_a_user_module_rule_is_used_inside_an_eager_forward_and_its_hooks_fire() -> None:
    calls = []

    @hope_attr.register_rule(Cube)
    def cube_rule(module: Cube, x: hope_attr.Jet) -> hope_attr.Jet:
        calls.append(module)
        return x * x * x

    model = WithCube().eval()
    handle = model.cube.register_forward_hook(lambda m, args, out: out + 2 * out)
    try:
        x = torch.randn(2, 4, dtype=torch.float64)
        _check(model, x)
        assert calls and all(c is model.cube for c in calls)
    finally:
        handle.remove()
        hope_attr.unregister_rule(Cube)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5).double()
        self.b = nn.Linear(5, 2).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + torch.tanh(self.a(x))
        h += 0.5 * x  # in place on a value that depends on the input
        return self.b(F.silu(h))


def _fresh(weights: dict) -> Residual:
    model = Residual()
    model.load_state_dict(weights)
    return model.eval()


def test_threads_get_the_sequential_results_and_leave_the_process_intact() -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    weights = Residual().state_dict()  # the RNG is shared by threads: seed nothing in them
    expected = hope_attr.unmixed_derivatives(_fresh(weights), x, 3)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                got = hope_attr.unmixed_derivatives(_fresh(weights), x, 3)
                assert torch.equal(got, expected)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    assert type(Residual()(x)) is torch.Tensor
    mod = nn.modules.module
    assert not mod._global_forward_hooks and not mod._global_forward_pre_hooks


def test_compiled_and_data_parallel_modules_are_unwrapped() -> None:
    model = Residual().eval()
    x = torch.randn(2, 5, dtype=torch.float64)
    expected = hope_attr.unmixed_derivatives(model, x, 2)
    for wrapped in (torch.compile(model), nn.DataParallel(model)):
        assert torch.equal(hope_attr.unmixed_derivatives(wrapped, x, 2), expected)


@pytest.mark.parametrize(
    "activation", [F.hardswish, F.hardsigmoid, F.silu, F.mish, F.softsign, torch.special.expm1]
)
def test_ops_without_own_rules_run_through_decompositions(activation) -> None:
    lin = _mlp(4, 3)
    x = torch.randn(2, 4, dtype=torch.float64)
    _check(lambda t: lin(activation(lin[0](t) * 3)[:, :4]), x)


def test_stochastic_depth_in_eval_mode() -> None:
    torchvision = pytest.importorskip("torchvision")
    block = torchvision.ops.StochasticDepth(0.5, "row").eval()
    model = _mlp()
    x = torch.randn(2, 4, dtype=torch.float64)
    _check(lambda t: model(t) + block(model(t)), x)


def test_attention_modules_and_recurrent_layers() -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    encoder = (
        nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 1
        )
        .double()
        .eval()
    )
    lstm = nn.LSTM(8, 6, num_layers=2, batch_first=True).double().eval()
    gru = nn.GRU(8, 6, batch_first=True).double().eval()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    causal = nn.Transformer.generate_square_subsequent_mask(4, dtype=torch.float64)
    for model in (
        lambda t: attention(t, t, t, need_weights=False)[0],
        lambda t: attention(t, t, t, attn_mask=causal)[0],
        encoder,
        lambda t: lstm(t)[0],
        lambda t: gru(t)[1].transpose(0, 1),
        lambda t: F.scaled_dot_product_attention(t, t * 2, t, is_causal=True),
    ):
        _check_directions(model, x, order=3)


class Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(3, 3), Lgamma())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class Lgamma(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lgamma(x + 5)  # the line the error must point at


def test_unsupported_op_names_op_module_source_line_and_fix() -> None:
    with pytest.raises(hope_attr.UnsupportedOperationError) as info:
        hope_attr.unmixed_derivatives(Unsupported().eval(), torch.rand(2, 3), 2)
    message = str(info.value)
    assert "torch.lgamma" in message
    assert "module 'inner.1' (Lgamma)" in message
    assert "test_eager.py" in message and "the line the error must point at" in message
    assert "register_rule" in message


def test_normalize_of_a_zero_vector_has_no_nan() -> None:
    # SwinV2's cosine attention normalizes padded (all-zero) keys: the norm's kink at 0 takes
    # PyTorch's slope 0, and the NaN of sqrt's series at 0 must not leak (found by the zoo).
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    x[0, 1] = 0
    _check(
        lambda t: F.normalize(t, dim=-1) * torch.linalg.vector_norm(t + 1, dim=1, keepdim=True),
        x,
        order=2,
    )


def test_einsum_of_two_jets_is_a_product_not_a_linear_map() -> None:
    # MaxViT's attention: einsum(q, k) with both depending on the input (0.97 off before).
    torch.manual_seed(0)
    lin = nn.Linear(4, 6).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    _check(lambda t: torch.einsum("b i d, b j d -> b i j", lin(t), torch.tanh(lin(t))), x)
    _check(lambda t: torch.einsum("bid,de->bie", lin(t), lin.weight), x)


@pytest.mark.parametrize(
    "select",
    [
        lambda h: h[:, torch.tensor([4, 0, 2])],
        lambda h: h[:, torch.tensor([True, False, True, True, False])],
        lambda h: torch.gather(h, 1, torch.tensor([[4, 0, 2], [1, 1, 3]])),
        lambda h: h.index_select(1, torch.tensor([3, 3, 0])),
        lambda h: torch.einsum("bi,ij->bj", h, torch.arange(15.0, dtype=h.dtype).reshape(5, 3)),
        lambda h: torch.cat([h, torch.ones(2, 1, dtype=h.dtype)], 1),
    ],
    ids=["long index", "bool mask", "gather", "index_select", "einsum with a weight", "cat"],
)
def test_tensor_indices_and_factors_are_kept(select) -> None:
    # Tensor constants among the arguments of a selection are indices or factors: zeroing them
    # (right only for the blocks of cat/stack) picked index 0 silently.
    x = torch.randn(2, 5, dtype=torch.float64)
    _check(lambda t: select(torch.tanh(t)), x)
