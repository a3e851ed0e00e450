"""Model architecture and parallel layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ModelConfig:
    """A decoder-only GPT. ``preset`` fills every field it names before the recipe's own values apply."""

    preset: Optional[str] = None
    num_layers: int = 4
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # GQA; None = MHA
    ffn_hidden_size: Optional[int] = None  # per gate half with SwiGLU; None = 4 * hidden_size
    seq_length: int = 256
    vocab_size: int = 32000  # set from the tokenizer when data.tokenizer is given
    make_vocab_size_divisible_by: int = 128
    hf_vocab_size: Optional[int] = None  # import-hf: the source's embedding rows when megatron pads further
    normalization: str = "NonParametricLayerNorm"  # | LayerNorm | RMSNorm
    layernorm_epsilon: float = 1e-5
    activation: str = "swiglu"  # | gelu
    position_embedding_type: str = "rope"  # | learned_absolute
    rotary_base: int = 10000
    rope_scaling: Optional[str] = None  # None | linear (positions / factor) | llama3 (Llama-3.x frequencies)
    rope_scaling_factor: float = 1.0
    add_bias_linear: bool = False
    untie_embeddings_and_output_weights: bool = True
    init_method_std: float = 0.02
    transformer_impl: str = "local"  # local | transformer_engine | auto
    core_attention: str = "sdpa"  # local spec: sdpa (torch's kernel) | megatron (DotProductAttention)
    cpu_gemm: str = (
        "auto"  # CPU runs, linears' GEMMs: onednn | torch (torch.matmul's BLAS) | auto (onednn if built)
    )
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    recompute: bool = False  # full-layer activation recompute (saves memory, costs ~33% compute)


# The fields that fix the weights' shapes and the function they compute: a run that starts from a checkpoint
# takes them from the checkpoint's own config (seq_length too, with learned position embeddings).
ARCHITECTURE_KEYS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "ffn_hidden_size",
    "vocab_size",
    "make_vocab_size_divisible_by",
    "hf_vocab_size",
    "normalization",
    "layernorm_epsilon",
    "activation",
    "position_embedding_type",
    "rotary_base",
    "rope_scaling",
    "rope_scaling_factor",
    "add_bias_linear",
    "untie_embeddings_and_output_weights",
)


@dataclass
class ParallelConfig:
    """Tensor / pipeline / data parallel layout. dp = world_size / (tp * pp) is derived."""

    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None  # virtual pipeline stages per rank (interleaved 1F1B)
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False  # ZeRO-1 over the data-parallel group
    overlap_grad_reduce: bool = False
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | gloo | nccl
    device: str = "auto"  # auto | cpu | cuda
