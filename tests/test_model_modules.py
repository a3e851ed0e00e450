"""The local spec's own modules equal megatron-core's: SDPA core attention vs ``DotProductAttention`` and the
SwiGLU ``GatedMLP`` vs ``MLP`` (outputs and gradients), and whole models built with either give the same loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from echo_megatron.config import load_config
from echo_megatron.config.loader import ConfigError


def cfg_of(*overrides: str):
    return load_config(
        None,
        [
            "model.num_layers=2",
            "model.hidden_size=64",
            "model.num_attention_heads=4",
            "model.ffn_hidden_size=96",
            "model.vocab_size=256",
            "model.seq_length=32",
            "parallel.device=cpu",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def tc():
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import transformer_config

    cfg = cfg_of()
    initialize(cfg)
    return transformer_config(cfg)


def _attention_pair(tc, heads_kv: int):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from echo_megatron.model.attention import SDPAttention

    s, b, heads, d = 12, 3, 4, 16
    g = torch.Generator().manual_seed(heads_kv)
    q = torch.randn(s, b, heads, d, generator=g)
    k, v = (torch.randn(s, b, heads_kv, d, generator=g) for _ in range(2))
    mods = [cls(tc, 1, AttnMaskType.causal, "self") for cls in (DotProductAttention, SDPAttention)]
    return mods, (q, k, v)


def _run(mod, qkv, mask, grad):
    leaves = [t.clone().requires_grad_() for t in qkv]
    out = mod(*leaves, mask)
    out.backward(grad)
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize("heads_kv", [4, 2])  # MHA, GQA
@pytest.mark.parametrize("explicit_mask", [False, True])
def test_sdpa_attention_equals_megatron_dot_product_attention(tc, heads_kv, explicit_mask):
    import dataclasses

    tc = dataclasses.replace(tc, num_query_groups=heads_kv)
    (megatron, ours), qkv = _attention_pair(tc, heads_kv)
    s, b = qkv[0].shape[:2]
    mask = None
    if explicit_mask:  # megatron's convention: True = not attended; causal plus 3 left-padded keys in row 0
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1).expand(b, 1, s, s).clone()
        mask[0, :, :, :3] = True
        mask[0, :, torch.arange(3), torch.arange(3)] = False  # a padded query still attends to itself
    grad = torch.randn(s, b, 4 * 16)
    out_m, grads_m = _run(megatron, qkv, mask, grad)
    out_o, grads_o = _run(ours, qkv, mask, grad)
    assert out_o.shape == out_m.shape == (s, b, 64)
    torch.testing.assert_close(out_o, out_m, rtol=1e-5, atol=1e-5)
    for a, e in zip(grads_o, grads_m):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_sdpa_attention_is_causal(tc):
    (_, ours), (q, k, v) = _attention_pair(tc, 4)
    out = ours(q, k, v, None)
    k2, v2 = k.clone(), v.clone()
    k2[-1], v2[-1] = 7.0, -3.0  # change only the last position's key/value
    out2 = ours(q, k2, v2, None)
    torch.testing.assert_close(out2[:-1], out[:-1])  # earlier queries cannot see it
    assert not torch.allclose(out2[-1], out[-1])


def test_gated_mlp_equals_megatron_mlp(tc):
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLP, MLPSubmodules

    from echo_megatron.model.mlp import GatedMLP

    assert tc.gated_linear_unit and tc.activation_func is F.silu
    torch.manual_seed(0)
    ref = MLP(tc, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear))
    ours = GatedMLP(tc)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(10, 2, 64)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    (y_ref, _), (y, _) = ref(xs[0]), ours(xs[1])
    g = torch.randn_like(y)
    y_ref.backward(g)
    y.backward(g)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(xs[1].grad, xs[0].grad)
    for (n, p_ref), (_, p) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=n)


def test_models_with_either_core_attention_give_the_same_loss():
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model

    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(32).expand(2, 32)
    losses = {}
    for core in ("megatron", "sdpa"):
        cfg = cfg_of(f"model.core_attention={core}")
        initialize(cfg)
        torch.manual_seed(3)
        model = build_model(cfg, 256)
        kinds = {type(layer.self_attention.core_attention).__name__ for layer in model.decoder.layers}
        assert kinds == {"DotProductAttention" if core == "megatron" else "SDPAttention"}
        assert {type(layer.mlp).__name__ for layer in model.decoder.layers} == {"GatedMLP"}
        losses[core] = model(tokens, pos, None, labels=tokens.roll(-1, 1)).mean()
    torch.testing.assert_close(losses["sdpa"], losses["megatron"], rtol=1e-6, atol=1e-6)


def test_unknown_core_attention_is_a_config_error():
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model

    cfg = cfg_of("model.core_attention=flash")
    initialize(cfg)
    with pytest.raises(ConfigError, match=r"model.core_attention: unknown value 'flash'"):
        build_model(cfg, 256)


def test_swiglu_function_gradients():
    from echo_megatron.model.mlp import SwiGLU

    h = torch.randn(3, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (h,))
    gate, up = h.detach().chunk(2, dim=-1)
    torch.testing.assert_close(SwiGLU.apply(h), F.silu(gate) * up)
