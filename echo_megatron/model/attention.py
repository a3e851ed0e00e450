"""Core attention for the local layer spec: ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's local ``DotProductAttention`` materialises the ``[b * heads, s, s]`` scores (``baddbmm``), a
masked softmax over them and a ``bmm`` with V, then copies the context back to ``[s, b, h]``. torch's SDPA
computes the same softmax(Q K^T * scale + causal mask) V (Vaswani et al. 2017, eq. 1) with a fused, blocked
kernel on CPU (flash attention with an online softmax) and on GPU, without the scores tensor. On the 26M
benchmark model this took the attention from ~12% to ~4% of a CPU training step.

The module keeps megatron's core-attention interface (constructor and ``forward``), so the rest of megatron's
``SelfAttention`` (QKV projection, RoPE, output projection, TP sharding of heads) is unchanged: ``q``, ``k``,
``v`` arrive as ``[s, b, heads_per_partition, d]`` and the context leaves as ``[s, b, heads_per_partition * d]``.
It has no parameters, so checkpoints are the same with either module. GPU runs use TransformerEngine's
attention (``model.transformer_impl``); ``model.core_attention=megatron`` restores megatron's module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPAttention(MegatronModule):
    """softmax(Q K^T / sqrt(d) + mask) V through ``F.scaled_dot_product_attention`` (causal or an explicit mask)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: object | None = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention: context parallelism needs TransformerEngine's attention")
        if config.softmax_type != "vanilla" or config.window_size is not None:
            raise ValueError(
                "SDPAttention supports vanilla softmax without a sliding window; "
                "set model.core_attention=megatron for other attention variants"
            )
        self.attn_mask_type = attn_mask_type
        # apply_query_key_layer_scaling divides the scale by the layer number and the softmax multiplies it
        # back (in fp32): the product is 1 / sqrt(d) either way.
        self.scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: object | None = None,
    ) -> torch.Tensor:
        """``[s, b, heads, d]`` q/k/v (k/v may have fewer heads: GQA) -> ``[s, b, heads * d]``.

        ``attention_mask`` follows megatron: boolean, True where attention is *not* allowed (broadcastable to
        ``[b, heads, s, s]``); None with a causal mask type means the causal mask.
        """
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPAttention: packed sequences and attention bias need TransformerEngine")
        mask_type = attn_mask_type or self.attn_mask_type
        s, b, heads, d = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d] views
        causal = attention_mask is None and mask_type == AttnMaskType.causal
        mask = None if attention_mask is None else ~attention_mask
        p = self.dropout_p if self.training else 0.0
        kwargs = dict(attn_mask=mask, dropout_p=p, is_causal=causal, scale=self.scale)
        if k.shape[1] != heads:
            kwargs["enable_gqa"] = True
        if p > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():  # per-TP-rank dropout, as megatron's module
                ctx = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, **kwargs)
        return ctx.permute(2, 0, 1, 3).reshape(s, b, heads * d)
