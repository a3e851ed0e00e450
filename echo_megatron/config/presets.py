"""Model presets: the paper's four sizes (arXiv 2504.07912, OLMo-style) and two beyond-1B sizes.

All paper presets: SwiGLU with mlp_ratio 8 (FFN hidden 4*d per gate half), RoPE, no biases,
non-parametric LayerNorm, vocab 32,000, context 2048, init std 0.02 (truncated at 3 sigma).
``parallel`` holds the suggested layout for ``echo-megatron plan`` (not applied automatically).
"""

from __future__ import annotations

from typing import Any

_PAPER = dict(
    activation="swiglu",
    position_embedding_type="rope",
    add_bias_linear=False,
    normalization="NonParametricLayerNorm",
    vocab_size=32000,
    seq_length=2048,
    init_method_std=0.02,
)

PRESETS: dict[str, dict[str, Any]] = {
    "paper_150m": dict(
        _PAPER,
        hidden_size=768,
        num_layers=12,
        num_attention_heads=12,
        ffn_hidden_size=3072,
        untie_embeddings_and_output_weights=True,
    ),
    "paper_300m": dict(
        _PAPER,
        hidden_size=1024,
        num_layers=14,
        num_attention_heads=16,
        ffn_hidden_size=4096,
        untie_embeddings_and_output_weights=True,
    ),
    "paper_500m": dict(
        _PAPER,
        hidden_size=1536,
        num_layers=12,
        num_attention_heads=12,
        ffn_hidden_size=6144,
        untie_embeddings_and_output_weights=True,
    ),
    "paper_1b": dict(
        _PAPER,
        hidden_size=2048,
        num_layers=16,
        num_attention_heads=16,
        ffn_hidden_size=8192,
        untie_embeddings_and_output_weights=False,
    ),
    # Beyond 1B: Llama-style FFN widths, GQA, untied, RMSNorm.
    "3b": dict(
        _PAPER,
        hidden_size=2560,
        num_layers=32,
        num_attention_heads=32,
        num_query_groups=8,
        ffn_hidden_size=8192,
        normalization="RMSNorm",
        seq_length=4096,
        untie_embeddings_and_output_weights=True,
    ),
    "7b": dict(
        _PAPER,
        hidden_size=4096,
        num_layers=32,
        num_attention_heads=32,
        num_query_groups=8,
        ffn_hidden_size=14336,
        normalization="RMSNorm",
        seq_length=4096,
        untie_embeddings_and_output_weights=True,
    ),
    # Tiny CPU models (demo, tests).
    "tiny": dict(
        _PAPER,
        hidden_size=64,
        num_layers=2,
        num_attention_heads=4,
        ffn_hidden_size=256,
        vocab_size=512,
        seq_length=128,
        untie_embeddings_and_output_weights=True,
    ),
}

SUGGESTED_PARALLEL: dict[str, dict[str, Any]] = {
    "paper_150m": dict(tp=1, pp=1, use_distributed_optimizer=True),
    "paper_300m": dict(tp=1, pp=1, use_distributed_optimizer=True),
    "paper_500m": dict(tp=1, pp=1, use_distributed_optimizer=True),
    "paper_1b": dict(tp=1, pp=1, use_distributed_optimizer=True),
    "3b": dict(tp=2, pp=1, use_distributed_optimizer=True, sequence_parallel=True),
    "7b": dict(tp=4, pp=1, use_distributed_optimizer=True, sequence_parallel=True),
}
