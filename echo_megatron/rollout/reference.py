"""The references the sampler is checked against: the training forward pass, without any cache.

* :func:`full_logits`: ``GPTModel.forward`` exactly as training runs it (causal mask, no inference
  context), logits gathered over tensor-parallel ranks.
* :func:`teacher_forced_logprobs`: log pi(response | prompt) from that forward, what PPO / KL use.
* :func:`generate_no_cache`: the naive decoding loop that recomputes the whole sequence at every step
  (same token choice and uniforms as the sampler; the throughput baseline in bench/rollout_throughput.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from echo_megatron.rollout.sampler import inference_mode, sequence_uniforms
from echo_megatron.rollout.sampling import choose_tokens


def _right_padded(seqs: Sequence[Sequence[int]], pad_id: int, device) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out.to(device)


def full_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Training-forward logits ``[B, s, V]`` (padded vocabulary) for right-padded ``tokens`` [B, s]."""
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    b, s = tokens.shape
    positions = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
    logits = model(tokens, positions, None)  # [b, s, V / TP]
    return gather_from_tensor_model_parallel_region(logits)


def teacher_forced_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    temperature: float = 1.0,
    pad_id: int = 0,
) -> list[list[float]]:
    """log_softmax(z / T) of each response token given everything before it (T = 1 when 0)."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    t = temperature if temperature > 0 else 1.0
    with inference_mode(model):
        logp = torch.log_softmax(full_logits(model, _right_padded(seqs, pad_id, device)).float() / t, -1)
    out = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        idx = torch.arange(len(p) - 1, len(p) + len(r) - 1, device=device)
        tgt = torch.tensor(list(r), dtype=torch.long, device=device)
        out.append(logp[i, idx].gather(-1, tgt.unsqueeze(-1)).squeeze(-1).tolist())
    return out


def generate_no_cache(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    eod_id: int | None = None,
    pad_id: int = 0,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """Response ids per (prompt, sample), recomputing the full training forward at every step.

    Stops a row at ``eod_id`` (kept) or after ``max_new_tokens``; no stop strings.
    """
    device = next(model.parameters()).device
    rows = [(i, j) for i in range(len(prompts)) for j in range(n)]
    seqs = [list(prompts[i]) for i, _ in rows]
    u = torch.tensor([sequence_uniforms(seed, i, j, max_new_tokens) for i, j in rows], dtype=torch.float32)
    out: list[list[int]] = [[] for _ in rows]
    live = list(range(len(rows)))
    with inference_mode(model):
        for step in range(max_new_tokens):
            batch = [seqs[r] for r in live]
            logits = full_logits(model, _right_padded(batch, pad_id, device))
            last = torch.tensor([len(s) - 1 for s in batch], device=device)
            z = logits[torch.arange(len(live), device=device), last]
            tok, _ = choose_tokens(z, u[live, step].to(device), temperature, top_k, top_p, vocab_size)
            for k, r in enumerate(tok.tolist()):
                seqs[live[k]].append(r)
                out[live[k]].append(r)
            live = [r for r in live if eod_id is None or out[r][-1] != eod_id]
            if not live:
                break
    return out
