"""HF export: the exported transformers model computes our logits (within 1e-4) and loads offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from echo_megatron.config import ConfigError
from echo_megatron.rollout.reference import full_logits

BASE = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.ffn_hidden_size=96",
    "model.vocab_size=200",  # padded to 256 by megatron: the export keeps the padding
    "model.seq_length=64",
    "model.init_method_std=0.05",
    "parallel.device=cpu",
]


def build(extra: list[str]):
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model

    cfg = load_config(None, [*BASE, *extra])
    initialize(cfg)
    model = build_model(cfg, cfg.model.vocab_size)
    with torch.no_grad():  # non-trivial norm gains and biases, so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith(("layernorm.weight", ".bias")):
                p.add_(0.1 * torch.randn_like(p))
    return cfg, model.eval()


@pytest.mark.parametrize(
    "extra,arch",
    [
        ([], "OlmoForCausalLM"),
        (["model.num_query_groups=2", "model.untie_embeddings_and_output_weights=false"], "OlmoForCausalLM"),
        (["model.normalization=RMSNorm", "model.num_query_groups=2"], "LlamaForCausalLM"),
        (
            ["model.normalization=RMSNorm", "model.add_bias_linear=true", "model.rotary_base=500000"],
            "LlamaForCausalLM",
        ),
        (
            [
                "model.normalization=RMSNorm",
                "model.num_query_groups=1",
                "model.untie_embeddings_and_output_weights=false",
            ],
            "LlamaForCausalLM",
        ),
    ],
)
def test_exported_logits_match(extra, arch):
    from echo_megatron.checkpoint.hf_export import build_hf_model

    cfg, model = build(extra)
    hf = build_hf_model(model, cfg.model, eod_id=199, pad_id=0)
    assert type(hf).__name__ == arch
    assert hf.config.vocab_size == 256
    ids = torch.randint(0, 200, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = full_logits(model, ids), hf(ids).logits
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=0), (theirs - ours).abs().max()


def test_hf_greedy_generate_matches_sampler():
    from echo_megatron.checkpoint.hf_export import build_hf_model
    from echo_megatron.rollout.sampler import Sampler

    cfg, model = build(["model.normalization=RMSNorm", "model.num_query_groups=2"])
    hf = build_hf_model(model, cfg.model, eod_id=199, pad_id=0)
    prompt = [3, 14, 15, 92, 65]
    ours = Sampler(model, eod_id=199, pad_id=0, max_seq_len=64).generate(
        [prompt], max_new_tokens=12, temperature=0.0, ignore_eos=True
    )[0]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12, min_new_tokens=12)
    assert out[0, len(prompt) :].tolist() == ours.response_ids


def test_split_qkv_follows_megatron_group_layout():
    from echo_megatron.checkpoint.hf_export import split_qkv

    heads, groups, d = 4, 2, 3
    # rows labelled by (group, slot) where slot 0..1 = query heads of the group, 2 = k, 3 = v
    rows = [(g, slot, r) for g in range(groups) for slot in range(heads // groups + 2) for r in range(d)]
    w = torch.tensor([[100 * g + 10 * slot + r] for g, slot, r in rows], dtype=torch.float32)
    q, k, v = split_qkv(w, heads, groups)
    assert q[:, 0].tolist() == [0, 1, 2, 10, 11, 12, 100, 101, 102, 110, 111, 112]  # head h = g*2 + slot
    assert k[:, 0].tolist() == [20, 21, 22, 120, 121, 122]
    assert v[:, 0].tolist() == [30, 31, 32, 130, 131, 132]


@pytest.mark.parametrize(
    "override,reason",
    [
        ("model.activation=gelu", "SwiGLU"),
        ("model.position_embedding_type=learned_absolute", "RoPE"),
        ("model.normalization=LayerNorm", "NonParametricLayerNorm -> OLMo"),
        ("model.add_bias_linear=true", "OLMo has no MLP biases"),
    ],
)
def test_unsupported_architectures_are_refused(override, reason):
    from echo_megatron.checkpoint.hf_export import hf_architecture
    from echo_megatron.config import load_config

    with pytest.raises(ConfigError, match=reason):
        hf_architecture(load_config(None, [*BASE, override]).model)


def test_export_hf_command_with_tokenizer(tmp_path, data_dir):
    """`echo-megatron export-hf RUN OUT` (a fresh process): model + tokenizer load offline and agree with ours."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from echo_megatron.checkpoint import save_checkpoint

    tok_path = str(data_dir / "tokenizers" / "gpt2" / "gpt2_tokenizer.json")
    cfg, model = build(
        [
            "model.hidden_size=32",
            "model.num_attention_heads=2",
            "model.vocab_size=50257",
            f"data.tokenizer.path={tok_path}",
        ]
    )
    run = tmp_path / "run"
    os.makedirs(run)
    OmegaConf.save(cfg, run / "config.yaml")
    save_checkpoint(str(run / "checkpoints"), 3, [model])
    out = tmp_path / "hf"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "export-hf", str(run), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        os.listdir(out)
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["OlmoForCausalLM"] and config["vocab_size"] == 50304
    assert config["eos_token_id"] == 50256
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "Natalia sold clips to 48 of her friends.\n\n"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and tok.eos_token_id == 50256
    with torch.no_grad():
        ours = full_logits(model, torch.tensor([ids]))
        assert torch.allclose(hf(torch.tensor([ids])).logits, ours, atol=1e-4, rtol=0)


def test_export_refuses_a_torchrun_launch(monkeypatch):
    from echo_megatron.commands.export_hf import export_hf

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        export_hf("/nonexistent", "/tmp/unused")


@pytest.mark.parametrize("norm", ["RMSNorm", "NonParametricLayerNorm"])
def test_transformer_engine_key_names_map_the_same(norm):
    """A TE-spec state dict (norms fused into linear_qkv / linear_fc1, frozen LN gains) maps like the local one."""
    from echo_megatron.checkpoint.hf_export import megatron_state_dict, to_hf_state_dict

    cfg, model = build([f"model.normalization={norm}"])
    local = megatron_state_dict(model)
    te = {}
    for k, v in local.items():
        k = k.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
        k = k.replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")
        te[k] = v
    if norm == "NonParametricLayerNorm":  # TE's LayerNorm has (frozen) gain and bias parameters
        for i in range(cfg.model.num_layers):
            for mod in ("self_attention.linear_qkv", "mlp.linear_fc1"):
                te[f"decoder.layers.{i}.{mod}.layer_norm_weight"] = torch.ones(cfg.model.hidden_size)
                te[f"decoder.layers.{i}.{mod}.layer_norm_bias"] = torch.zeros(cfg.model.hidden_size)
    want, got = to_hf_state_dict(local, cfg.model), to_hf_state_dict(te, cfg.model)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
