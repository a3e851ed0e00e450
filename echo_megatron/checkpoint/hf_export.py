"""Export a checkpoint to a HuggingFace ``transformers`` model directory (config.json + model.safetensors).

Architecture: non-parametric LayerNorm (OLMo-1 style) -> ``OlmoForCausalLM``; RMSNorm -> ``LlamaForCausalLM``.
Both are pre-norm decoders with SwiGLU and non-interleaved RoPE over the whole head (megatron's default and
HF's ``rotate_half``), so only the fused matrices need rearranging:

* ``linear_qkv``: megatron stores, per query group g, [q heads of g ; k_g ; v_g] (rows of head_dim each);
  HF has separate q/k/v with query head h served by kv head h // (heads / groups): the same order.
* ``linear_fc1`` with SwiGLU: [gate ; up] stacked (megatron's glu: silu(first half) * second half).

The vocabulary keeps megatron's padding (``vocab_size`` = the padded size), so the exported model computes
the same logits, and log-probs, as ours; the tokenizer never produces the padding ids. A model imported with
``import-hf`` whose HF embedding megatron had to pad further (``model.hf_vocab_size``) is sliced back to the
source's rows, so import -> export gives the source's tensors byte for byte. RoPE scaling (``model.rope_scaling``)
is written as transformers' ``linear`` / ``llama3`` rope parameters. The command (``commands/export_hf.py``)
loads the checkpoint at TP = 1, PP = 1 in one process (dist_checkpointing reshards any saved layout) and hands
the model here.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from echo_megatron.config import ConfigError


def hf_architecture(model_cfg) -> str:
    """``OlmoForCausalLM`` | ``LlamaForCausalLM`` for ``cfg.model``; a clear error when none matches."""
    m = model_cfg
    problems = []
    if m.activation != "swiglu":
        problems.append(f"model.activation={m.activation} (both targets use SwiGLU)")
    if m.position_embedding_type != "rope":
        problems.append(f"model.position_embedding_type={m.position_embedding_type} (both targets use RoPE)")
    if m.rope_scaling is not None and m.normalization != "RMSNorm":
        problems.append(f"model.rope_scaling={m.rope_scaling} (OLMo has no RoPE scaling; Llama does)")
    if m.normalization == "NonParametricLayerNorm":
        if m.add_bias_linear:
            problems.append("model.add_bias_linear=true (OLMo has no MLP biases)")
        if abs(m.layernorm_epsilon - 1e-5) > 1e-12:
            problems.append(f"model.layernorm_epsilon={m.layernorm_epsilon} (OLMo's LayerNorm uses 1e-5)")
        arch = "OlmoForCausalLM"
    elif m.normalization == "RMSNorm":
        arch = "LlamaForCausalLM"
    else:
        problems.append(
            f"model.normalization={m.normalization} (NonParametricLayerNorm -> OLMo, RMSNorm -> Llama)"
        )
        arch = ""
    if problems:
        raise ConfigError("export-hf: no matching transformers architecture: " + "; ".join(problems))
    return arch


def rope_parameters(model_cfg) -> dict:
    """transformers' ``rope_parameters`` for ``model.rotary_base`` / ``model.rope_scaling``."""
    m = model_cfg
    params: dict = {"rope_type": m.rope_scaling or "default", "rope_theta": float(m.rotary_base)}
    if m.rope_scaling is not None:
        params["factor"] = float(m.rope_scaling_factor)
    if m.rope_scaling == "llama3":  # megatron-core's fixed constants (RotaryEmbedding._apply_scaling)
        params.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    return params


def hf_config(model_cfg, vocab_size: int, eod_id: int, pad_id: int, dtype: torch.dtype):
    """The ``transformers`` config matching ``cfg.model`` (``vocab_size``: the embedding rows written)."""
    from transformers import LlamaConfig, OlmoConfig

    m = model_cfg
    arch = hf_architecture(m)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size or 4 * m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups or m.num_attention_heads,
        hidden_act="silu",
        max_position_embeddings=m.seq_length,
        initializer_range=m.init_method_std,
        rope_parameters=rope_parameters(m),
        attention_bias=bool(m.add_bias_linear),
        tie_word_embeddings=not m.untie_embeddings_and_output_weights,
        bos_token_id=None,
        eos_token_id=eod_id,
        pad_token_id=pad_id,
        dtype=dtype,
    )
    if arch == "OlmoForCausalLM":
        cfg = OlmoConfig(**common)
    else:
        cfg = LlamaConfig(**common, rms_norm_eps=m.layernorm_epsilon, mlp_bias=bool(m.add_bias_linear))
    cfg.architectures = [arch]
    return cfg


def split_qkv(w: torch.Tensor, heads: int, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron fused QKV (weight [groups*(heads/groups+2)*d, h] or bias [...]) -> (q, k, v) in HF order."""
    per = heads // groups
    rest = w.shape[1:]
    d = w.shape[0] // (groups * (per + 2))
    w = w.reshape(groups, per + 2, d, *rest)
    q = w[:, :per].reshape(heads * d, *rest)
    k = w[:, per].reshape(groups * d, *rest)
    v = w[:, per + 1].reshape(groups * d, *rest)
    return q, k, v


def to_hf_state_dict(sd: dict[str, torch.Tensor], model_cfg) -> dict[str, torch.Tensor]:
    """Megatron GPTModel state dict (TP = 1; local or TransformerEngine layer spec) -> HF Llama/OLMo state dict."""
    m = model_cfg
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    rows = slice(None, m.hf_vocab_size)  # an import's source rows, when megatron padded further
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][rows]}
    if m.untie_embeddings_and_output_weights:
        out["lm_head.weight"] = sd["output_layer.weight"][rows]
    rms = m.normalization == "RMSNorm"  # OLMo's LayerNorm has no weights (TE's frozen ones are dropped)
    if rms:
        out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    for i in range(m.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            key = f"{src}self_attention.linear_qkv.{kind}"
            if key in sd:
                q, k, v = split_qkv(sd[key], heads, groups)
                out[f"{dst}self_attn.q_proj.{kind}"] = q
                out[f"{dst}self_attn.k_proj.{kind}"] = k
                out[f"{dst}self_attn.v_proj.{kind}"] = v
            key = f"{src}self_attention.linear_proj.{kind}"
            if key in sd:
                out[f"{dst}self_attn.o_proj.{kind}"] = sd[key]
            key = f"{src}mlp.linear_fc1.{kind}"
            if key in sd:
                gate, up = torch.chunk(sd[key], 2, dim=0)
                out[f"{dst}mlp.gate_proj.{kind}"] = gate
                out[f"{dst}mlp.up_proj.{kind}"] = up
            key = f"{src}mlp.linear_fc2.{kind}"
            if key in sd:
                out[f"{dst}mlp.down_proj.{kind}"] = sd[key]
        if rms:  # local spec: separate norm modules; TransformerEngine spec: fused into the next linear
            for ours, te, theirs in (
                ("input_layernorm", "self_attention.linear_qkv", "input_layernorm"),
                ("pre_mlp_layernorm", "mlp.linear_fc1", "post_attention_layernorm"),
            ):
                w = sd.get(f"{src}{ours}.weight", sd.get(f"{src}{te}.layer_norm_weight"))
                out[f"{dst}{theirs}.weight"] = w
    return {k: v.contiguous() for k, v in out.items()}


def megatron_state_dict(model) -> dict[str, torch.Tensor]:
    """Plain tensors of a TP = 1 GPTModel (megatron's ``_extra_state`` entries dropped)."""
    return {
        k: v.detach().cpu()
        for k, v in model.state_dict().items()
        if torch.is_tensor(v) and "_extra_state" not in k
    }


def build_hf_model(model, model_cfg, eod_id: int, pad_id: int, dtype: torch.dtype = torch.float32):
    """A ``transformers`` model holding ``model``'s weights (``model``: a TP = 1 megatron GPTModel)."""
    from transformers import AutoModelForCausalLM

    sd = megatron_state_dict(model)
    vocab_size = model_cfg.hf_vocab_size or sd["embedding.word_embeddings.weight"].shape[0]
    config = hf_config(model_cfg, vocab_size, eod_id, pad_id, dtype)
    hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {k: v.to(dtype) for k, v in to_hf_state_dict(sd, model_cfg).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export-hf: weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        hf.tie_weights()
    return hf.eval()


def save_tokenizer(tokenizer: Any, out_dir: str) -> None:
    """tokenizer.json + tokenizer_config.json (``AutoTokenizer.from_pretrained(out_dir)`` loads them)."""
    from transformers import PreTrainedTokenizerFast

    path = tokenizer.path
    if os.path.isfile(path):
        fast = PreTrainedTokenizerFast(
            tokenizer_file=path,
            eos_token=tokenizer.token(tokenizer.eod),
            pad_token=tokenizer.token(tokenizer.pad),
        )
        fast.save_pretrained(out_dir)
    elif os.path.isdir(path):
        for name in os.listdir(path):
            if name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
                shutil.copy(os.path.join(path, name), out_dir)
    else:  # a hub name loaded through AutoTokenizer
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(path).save_pretrained(out_dir)
