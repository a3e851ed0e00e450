"""A preallocated KV cache and the cached forward pass over a megatron-core ``GPTModel``'s own modules.

Why not megatron's ``StaticInferenceContext``? It works on CPU, but its static path caches keys *before*
RoPE and re-rotates the whole cache in every layer at every step, then attends with ``baddbmm`` + softmax +
``bmm``; on CPU that made decoding several times slower than HF ``generate`` (numbers in docs/rollout.md).
Here every layer of the model runs exactly its training modules (embedding, norms, fused QKV projection,
megatron's RoPE formula with cos and sin tabled once per batch for all layers, output projection, MLP, final
norm, output layer with megatron's TP logits gather); only the attention core is different: keys are rotated
once, written into a buffer allocated once per batch, and attended with
``torch.nn.functional.scaled_dot_product_attention`` (flash kernels on CPU and GPU).

Batching: prompts are left-padded, so all rows write the same cache slot at each step and decoding needs no
per-row bookkeeping. Each row's RoPE / position ids count only its real tokens (pad slots are masked out of
attention), so a padded row computes what the training forward computes for the unpadded sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class KVCache:
    """Keys (after RoPE) and values per layer, ``[batch, groups, max_len, head_dim]``, plus key validity.

    ``length`` slots are filled (the same for every row). ``valid[b, j]`` is False for left-padding slots.
    ``cos`` / ``sin``: RoPE's tables for positions ``0 .. max_len-1`` (``[max_len, rot_dim]``; None without RoPE),
    made with the cache so that they always cover its slots.
    """

    def __init__(
        self,
        num_layers: int,
        batch: int,
        groups: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch, groups, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0
        self.padded = False  # any invalid slot at all: decoding can skip the mask when False
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep (or repeat) rows ``index``: n samples per prompt after a shared prefill; dropping finished rows.

        Only the filled slots are copied; the new buffers keep room for ``max_len`` slots.
        """
        n, t = index.numel(), self.length
        for buffers in (self.k, self.v):
            for i, old in enumerate(buffers):
                new = torch.empty((n, *old.shape[1:]), dtype=old.dtype, device=old.device)
                new[:, :, :t] = old[:, :, :t].index_select(0, index)
                buffers[i] = new
        self.valid = self.valid.index_select(0, index)


def check_supported(model) -> None:
    """A clear error for model features the cached forward does not implement."""
    from megatron.core import parallel_state as ps

    c = model.config
    problems = []
    if ps.get_pipeline_model_parallel_world_size() > 1:
        problems.append(
            "pipeline parallelism (generation runs with parallel.pp=1; load the checkpoint at pp=1)"
        )
    if ps.get_context_parallel_world_size() > 1:
        problems.append("context parallelism")
    if getattr(c, "num_moe_experts", None):
        problems.append("mixture-of-experts layers")
    if getattr(c, "multi_latent_attention", False):
        problems.append("multi-latent attention")
    if getattr(c, "mtp_num_layers", None):
        problems.append("multi-token prediction")
    if model.position_embedding_type not in ("rope", "learned_absolute", "none"):
        problems.append(f"position embedding '{model.position_embedding_type}'")
    if not (model.pre_process and model.post_process):
        problems.append("a model that is not a whole pipeline (pre_process and post_process)")
    if problems:
        raise NotImplementedError("rollout sampler: unsupported model feature(s): " + "; ".join(problems))


class CachedForward:
    """Runs ``model`` (a megatron ``GPTModel``, eval mode, no grad) over new tokens with a ``KVCache``."""

    def __init__(self, model) -> None:
        from megatron.core.models.common.embeddings.rope_utils import _rotate_half

        check_supported(model)
        self._rotate_half = _rotate_half
        self.model = model
        c = model.config
        attn = model.decoder.layers[0].self_attention
        self.heads = attn.num_attention_heads_per_partition
        self.groups = attn.num_query_groups_per_partition
        self.head_dim = attn.hidden_size_per_attention_head
        self.scale = c.softmax_scale if c.softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.num_layers = len(model.decoder.layers)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = next(self.model.parameters())
        cache = KVCache(self.num_layers, batch, self.groups, max_len, self.head_dim, p.dtype, p.device)
        if self.model.position_embedding_type == "rope":
            # get_emb: not the lru-cached forward, so no tensor made here outlives generation in the model.
            # cos and sin once per cache, in the weights' dtype, as megatron's unfused RoPE computes them
            emb = self.model.rotary_pos_emb.get_emb(max_len)[:, 0, 0, :].to(p.device)
            cache.cos, cache.sin = emb.cos().to(p.dtype), emb.sin().to(p.dtype)
        return cache

    def __call__(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` [B, s] (positions [B, s]) at slot ``cache.length``; last-token logits [B, V].

        Slots whose position is negative are padding. The logits cover the padded vocabulary, gathered over
        tensor-parallel ranks by the output layer.
        """
        m = self.model
        b, s = tokens.shape
        t0, t1 = cache.length, cache.length + s
        if t1 > cache.max_len:
            raise ValueError(f"KV cache full: {t1} slots needed, {cache.max_len} allocated")
        is_real = positions >= 0
        cache.valid[:, t0:t1] = is_real
        cache.padded = cache.padded or not bool(is_real.all())
        positions = positions.clamp(min=0)
        mask, causal = self._mask(cache, t0, t1)
        rope = cache.cos is not None
        if rope:
            cos = cache.cos[positions.t()].unsqueeze(2)  # [s, b, 1, rot_dim]
            sin = cache.sin[positions.t()].unsqueeze(2)

        x = m.embedding(input_ids=tokens, position_ids=positions)  # [s, b, h]
        for i, layer in enumerate(m.decoder.layers):
            attn = layer.self_attention
            residual = x
            h = layer.input_layernorm(x)
            q, k, v = attn.get_query_key_value_tensors(h, None)  # [s, b, heads|groups, d]
            if rope:
                q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            cache.k[i][:, :, t0:t1] = k.permute(1, 2, 0, 3)
            cache.v[i][:, :, t0:t1] = v.permute(1, 2, 0, 3)
            ctx = F.scaled_dot_product_attention(
                q.permute(1, 2, 0, 3),
                cache.k[i][:, :, :t1],
                cache.v[i][:, :, :t1],
                attn_mask=mask,
                is_causal=causal,
                scale=self.scale,
                enable_gqa=self.groups != self.heads,
            )  # [b, heads, s, d]
            ctx = ctx.permute(2, 0, 1, 3).reshape(s, b, self.heads * self.head_dim)
            out, bias = attn.linear_proj(ctx)
            x = residual + (out if bias is None else out + bias)
            residual = x
            out, bias = layer.mlp(layer.pre_mlp_layernorm(x))
            x = residual + (out if bias is None else out + bias)
        cache.length = t1
        x = m.decoder.final_layernorm(x[-1:])
        weight = m.shared_embedding_or_output_weight() if m.share_embeddings_and_output_weights else None
        logits, _ = m.output_layer(x, weight=weight, runtime_gather_output=True)
        return logits[0]

    def _rotate(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """megatron's unfused RoPE (``rope_utils._apply_rotary_pos_emb_bshd``) on q or k ``[s, b, heads, d]``:
        t cos + rotate_half(t) sin on the first ``rot_dim`` features, the rest passed through. The cos / sin come
        from the cache's tables (once per batch) instead of being recomputed in every layer for q and k: the same
        numbers, 4 operators a layer fewer per decoding step."""
        rot = cos.shape[-1]
        x, rest = t[..., :rot], t[..., rot:]
        out = x * cos + self._rotate_half(x, self.model.config.rotary_interleaved) * sin
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out

    @staticmethod
    def _mask(cache: KVCache, t0: int, t1: int) -> tuple[torch.Tensor | None, bool]:
        """(boolean attention mask [B, 1, s, t1] with True = attend, is_causal): causal, pad keys hidden.

        A padding query attends to itself, so no row is fully masked (which would give NaNs that leak
        through 0 * NaN into later values). Without padding the mask is left to SDPA (None / is_causal).
        """
        s = t1 - t0
        if not cache.padded and (s == 1 or t0 == 0):
            return None, s > 1
        valid = cache.valid[:, :t1]
        if s == 1:
            return valid[:, None, None, :], False
        slots = torch.arange(t1, device=valid.device)
        q_slots = slots[t0:t1]
        causal = slots[None, :] <= q_slots[:, None]  # [s, t1]
        mask = causal[None] & valid[:, None, :]
        mask |= slots[None, None, :] == q_slots[None, :, None]
        return mask.unsqueeze(1), False
