"""Forward passes of the RL models in label space (see experience.py), tensor-parallel aware.

``policy_logits`` and ``critic_values`` take a model and an ``Experience`` (or a micro-batch of one): they are
the ``forward_fn`` of ``training.step.train_step`` and what ``collect`` runs without gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from echo_megatron.rl.experience import Experience
from echo_megatron.rl.functional import entropy_from_logits


def policy_logits(model, batch: Experience) -> torch.Tensor:
    """Vocab-parallel logits ``[b, s, V / TP]`` (megatron GPTModel without labels)."""
    return model(batch.tokens, batch.position_ids, None)


def critic_values(model, batch: Experience) -> torch.Tensor:
    """The critic's values ``[b, s]`` (rl.models.ValueModel)."""
    return model(batch.tokens, batch.position_ids)


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

    if ps.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits)
    t = temperature if temperature > 0 else 1.0
    return entropy_from_logits(logits.float() / t)


@torch.no_grad()
def collect(
    model, microbatches: list[Experience], fn: Callable[[torch.nn.Module, Experience], torch.Tensor]
) -> torch.Tensor:
    """``fn(model, micro_batch)`` for each micro-batch without gradients (PP = 1), in eval mode, as one
    float ``[rows, width]`` tensor."""
    was = model.training
    model.eval()
    try:
        return torch.cat([fn(model, mb).detach().float() for mb in microbatches], dim=0)
    finally:
        model.train(was)
