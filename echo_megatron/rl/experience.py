"""Rollouts -> padded training tensors ("experience"), in label space.

Row i holds prompt + response, right-padded. Position ``j`` predicts ``labels[j] = tokens[j + 1]``; the
response mask is 1 where ``labels[j]`` is a response token. Log-probs, values, rewards and advantages all
live on these positions, so the policy's ``logp[j]`` and the critic's ``V[j]`` describe the same action.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from echo_megatron.rollout.backend import Rollout


def build_experience(rollouts: Sequence[Rollout], pad_id: int) -> dict[str, torch.Tensor]:
    n = len(rollouts)
    width = max(len(r.prompt_ids) + len(r.response_ids) for r in rollouts)
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.float32)
    sampler_logp = torch.zeros(n, width, dtype=torch.float32)
    for i, r in enumerate(rollouts):
        ids = r.prompt_ids + r.response_ids
        tokens[i, : len(ids)] = torch.tensor(ids)
        a, b = len(r.prompt_ids) - 1, len(ids) - 1  # label positions of the response tokens
        mask[i, a:b] = 1.0
        sampler_logp[i, a:b] = torch.tensor(r.logprobs, dtype=torch.float32)
    labels = torch.full_like(tokens, pad_id)
    labels[:, :-1] = tokens[:, 1:]
    return {
        "tokens": tokens,
        "labels": labels,
        "mask": mask,
        "position_ids": torch.arange(width).unsqueeze(0).expand(n, width).contiguous(),
        "sampler_logp": sampler_logp,
    }


def split_rows(batch: dict[str, torch.Tensor], micro_batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Micro-batches of consecutive rows (all keys sliced alike; tensors keep the batch's width)."""
    n = batch["tokens"].shape[0]
    return [{k: v[s : s + micro_batch_size] for k, v in batch.items()} for s in range(0, n, micro_batch_size)]
