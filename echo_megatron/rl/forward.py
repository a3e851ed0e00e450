"""Forward passes of the RL models in label space (see experience.py), tensor-parallel aware."""

from __future__ import annotations

import torch


def policy_logits(model, batch: dict) -> torch.Tensor:
    """Vocab-parallel logits ``[b, s, V / TP]`` (megatron GPTModel without labels)."""
    return model(batch["tokens"], batch["position_ids"], None)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(z / T)[label] over the whole (padded, TP-split) vocabulary, ``[b, s]``.

    The sampler's log-probs use the same definition (T = 1 for greedy), so PPO ratios start at 1.
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    t = temperature if temperature > 0 else 1.0
    return -vocab_parallel_cross_entropy(logits.float() / t, labels)


def token_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of softmax(z / T) per position, ``[b, s]`` (TP: the vocab shards are gathered first)."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from echo_megatron.rl.functional import entropy_from_logits

    if ps.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits)
    t = temperature if temperature > 0 else 1.0
    return entropy_from_logits(logits.float() / t)


@torch.no_grad()
def collect(model, microbatches: list[dict], fn) -> list[torch.Tensor]:
    """``fn(model, micro_batch)`` for each micro-batch without gradients (PP = 1), in eval mode."""
    was = model.training
    model.eval()
    try:
        return [fn(model, mb) for mb in microbatches]
    finally:
        model.train(was)
