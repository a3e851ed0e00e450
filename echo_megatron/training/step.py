"""One optimizer step through megatron's pipeline schedules, shared by pretraining, SFT and RL.

A micro-batch is a dict of tensors (pretraining, SFT) or a typed batch with ``tokens`` and ``to(device)``
(RL's ``Experience``). A *loss function* maps (micro-batch, per-token output of the model) to
``(loss_sum, num_tokens, {name: tensor([sum, count])})``: megatron's per-token-loss convention
(``calculate_per_token_loss``), under which gradients are divided by the number of loss tokens of the
whole global batch across data-parallel ranks and micro-batches. The step's reported values are the
exact token means, identical for any TP/PP/DP/micro-batch layout.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from echo_megatron.distributed import collectives

LossFn = Callable[[Any, torch.Tensor], tuple]


def lm_loss(batch: dict, per_token_loss: torch.Tensor) -> tuple:
    """Cross-entropy summed over loss-masked tokens (the model returns per-token CE when given labels)."""
    mask = batch["loss_mask"].to(per_token_loss.dtype)
    loss_sum = (per_token_loss.float() * mask).sum()
    n = mask.sum().to(torch.int)
    return loss_sum, n, {"loss": torch.stack([loss_sum.detach(), n.float()])}


def gpt_forward(model, batch: dict) -> torch.Tensor:
    """Per-token CE loss ``[b, s]`` on the last pipeline stage, hidden states elsewhere."""
    return model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch's tensors on ``device``: a dict's (other values as they are), or a typed batch's ``to``."""
    if not isinstance(batch, dict):
        return batch.to(device)
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_rows(batch: Any) -> int:
    """The number of sequences in a micro-batch."""
    return (batch["tokens"] if isinstance(batch, dict) else batch.tokens).shape[0]


def forward_backward(
    model: list,
    microbatches: list,
    loss_fn: LossFn,
    seq_length: int,
    forward_only: bool = False,
    forward_fn: Callable = gpt_forward,
) -> dict[str, float]:
    """Run the schedule over ``microbatches``; returns ``{name: token-mean}`` reduced over DP (all ranks)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    device = next(model[0].parameters()).device

    def step_fn(data_iterator, chunk):
        batch = to_device(next(data_iterator), device)
        return forward_fn(chunk, batch), partial(loss_fn, batch)

    iters = [iter(microbatches) for _ in model] if len(model) > 1 else iter(microbatches)
    mbs = batch_rows(microbatches[0])
    reports = get_forward_backward_func()(
        forward_step_func=step_fn,
        data_iterator=iters,
        model=model if len(model) > 1 else model[0],
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=mbs,
        forward_only=forward_only,
    )
    return reduce_reports(reports, device)


def reduce_reports(reports: list[dict], device: torch.device) -> dict[str, float]:
    """Sum ``[sum, count]`` pairs over micro-batches and DP; broadcast from the last PP stage."""
    # Every rank must agree on the names: the last stage knows them.
    names = collectives.pp_broadcast(sorted(reports[0].keys()) if reports else [])
    if not names:
        return {}
    t = torch.zeros(len(names), 2, dtype=torch.float64, device=device)
    for r in reports:
        for i, k in enumerate(names):
            t[i] += r[k].to(torch.float64).to(device)
    collectives.dp_all_reduce_(t)
    collectives.pp_broadcast_tensor_(t)
    return {k: (t[i, 0] / t[i, 1].clamp(min=1)).item() for i, k in enumerate(names)}


def train_step(
    model: list,
    optimizer,
    scheduler,
    microbatches: list,
    loss_fn: LossFn,
    seq_length: int,
    forward_fn: Callable = gpt_forward,
) -> dict[str, float]:
    """zero grads -> forward/backward over micro-batches -> clip -> optimizer step -> LR step."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    lr = optimizer.param_groups[0]["lr"]  # the LR this step uses
    out = forward_backward(model, microbatches, loss_fn, seq_length, forward_fn=forward_fn)
    ok, grad_norm, _ = optimizer.step()
    if scheduler is not None:
        scheduler.step(increment=1)
    out["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
    out["lr"] = lr
    out["skipped"] = 0.0 if ok else 1.0
    return out
