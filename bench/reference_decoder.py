"""A plain-PyTorch decoder with the same math as echo-megatron's ``GPTModel`` (local spec): the baseline of
``bench/pretrain_throughput.py``.

What a careful nanoGPT-style implementation would write, with the paper's architecture:
    x = embed(tokens)                                            (no position embedding: RoPE)
    per layer:  x = x + W_o · attn(RoPE(q), RoPE(k), v)  with  [q k v] = W_qkv · LN(x)
                x = x + W_2 · (silu(W_1a · LN(x)) * W_1b · LN(x))                     (SwiGLU)
    logits = W_out · LN(x);   loss = mean cross-entropy over tokens
LN is OLMo's non-parametric LayerNorm, (x - mean) / sqrt(var + eps) (Groeneveld et al. 2024); RoPE rotates
the two halves of each head (Su et al. 2021, the non-interleaved form megatron uses); attention is causal
``F.scaled_dot_product_attention`` with scale 1/sqrt(head_dim). No biases, no dropout.

The parameter layout equals megatron's (fused QKV with per-head [q, k, v] blocks, fused gate+up projection with
the gate first), so :func:`copy_from_megatron` loads a megatron model's weights and the two losses agree: the
benchmark checks that before timing anything.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(seq_len: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """theta[p, i] = p / base^(2i / head_dim), both halves: ``[seq, head_dim]``."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return torch.cat([freqs, freqs], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, rotate_half([a, b]) = [-b, a] (x: ``[b, heads, s, d]``)."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, eps: float) -> None:
        super().__init__()
        self.d, self.heads, self.eps = d, heads, eps
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc1 = nn.Linear(d, 2 * ffn, bias=False)  # [gate; up]
        self.fc2 = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        hd = d // self.heads
        h = F.layer_norm(x, (d,), eps=self.eps)
        q, k, v = self.qkv(h).view(b, s, self.heads, 3, hd).permute(3, 0, 2, 1, 4).unbind(0)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(hd))
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
        gate, up = self.fc1(F.layer_norm(x, (d,), eps=self.eps)).chunk(2, dim=-1)
        return x + self.fc2(F.silu(gate) * up)


class ReferenceDecoder(nn.Module):
    def __init__(
        self,
        vocab: int,
        d: int,
        layers: int,
        heads: int,
        ffn: int,
        seq_len: int,
        eps: float = 1e-5,
        std: float = 0.02,
        rope_base: float = 10000.0,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, ffn, eps) for _ in range(layers))
        self.out = nn.Linear(d, vocab, bias=False)
        angles = rope_angles(seq_len, d // heads, rope_base)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for p in self.parameters():  # N(0, std) truncated at 3 std, like the megatron build
            nn.init.trunc_normal_(p, std=std, a=-3 * std, b=3 * std)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy."""
        s = tokens.shape[1]
        cos, sin = self.cos[:s], self.sin[:s]
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        logits = self.out(F.layer_norm(x, (x.shape[-1],), eps=self.eps))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


@torch.no_grad()
def copy_from_megatron(ref: ReferenceDecoder, gpt) -> None:
    """Load an (unwrapped, TP=1, untied) megatron ``GPTModel``'s weights; the layouts are identical."""
    sd = {k: v for k, v in gpt.state_dict().items() if not k.endswith("_extra_state")}
    ref.embed.weight.copy_(sd["embedding.word_embeddings.weight"])
    ref.out.weight.copy_(sd["output_layer.weight"])
    for i, blk in enumerate(ref.blocks):
        p = f"decoder.layers.{i}."
        blk.qkv.weight.copy_(sd[p + "self_attention.linear_qkv.weight"])
        blk.proj.weight.copy_(sd[p + "self_attention.linear_proj.weight"])
        blk.fc1.weight.copy_(sd[p + "mlp.linear_fc1.weight"])
        blk.fc2.weight.copy_(sd[p + "mlp.linear_fc2.weight"])
