"""Build the parallel model, optimizer and LR schedule: parallelism is applied to a built model here.

model chunks (one per virtual pipeline stage) -> megatron DDP (optionally with the distributed
optimizer's sharded grad buffers) -> megatron optimizer (Adam/AdamW, fp32 on CPU; torch fallback
without Apex/TE) -> megatron ``OptimizerParamScheduler`` (linear warmup, cosine to min_lr_ratio).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from echo_megatron.model.builder import build_model
from echo_megatron.model.runtime import Runtime, resolve_runtime


@dataclass
class TrainState:
    model: list  # megatron DDP-wrapped chunks
    optimizer: object
    scheduler: object
    device: torch.device


def build_model_chunks(
    cfg: DictConfig,
    vocab_size: int,
    device: torch.device,
    wrap_ddp: bool = True,
    runtime: Runtime | None = None,
) -> list:
    """One chunk per virtual pipeline stage, moved to ``device`` and wrapped in megatron DDP; every chunk is
    built for the same ``runtime`` (resolved here, after process-group start-up, when not given)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    runtime = runtime or resolve_runtime(cfg)
    vpp = cfg.parallel.vpp or 1
    chunks = [
        build_model(
            cfg, vocab_size, vp_stage=(i if cfg.parallel.vpp else None), for_ddp=wrap_ddp, runtime=runtime
        )
        for i in range(vpp)
    ]
    chunks = [c.to(device) for c in chunks]
    if not wrap_ddp:
        return chunks
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        average_in_collective=False,
    )
    return [
        DistributedDataParallel(config=c.config, ddp_config=ddp_cfg, module=c, disable_bucketing=(i > 0))
        for i, c in enumerate(chunks)
    ]


def build_optimizer(
    cfg: DictConfig,
    model: list,
    lr: float | None = None,
    weight_decay: float | None = None,
    min_lr: float | None = None,
):
    """megatron's optimizer over ``model``. Its param groups carry ``max_lr`` = ``lr`` and ``min_lr`` (default
    ``lr x optimizer.min_lr_ratio``), which megatron's OptimizerParamScheduler reads before its own: the
    floor of the schedule is the optimizer's ``min_lr``."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o = cfg.optimizer
    bf16 = cfg.train.precision in ("bf16", "fp8")
    peak = o.lr if lr is None else lr
    ocfg = OptimizerConfig(
        optimizer="adam",  # megatron's "adam" is AdamW (decoupled weight decay)
        lr=peak,
        min_lr=peak * o.min_lr_ratio if min_lr is None else min_lr,
        weight_decay=o.weight_decay if weight_decay is None else weight_decay,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        adam_eps=o.eps,
        clip_grad=o.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(ocfg, model)
    use_fused_torch_adamw(optimizer)
    return optimizer


def use_fused_torch_adamw(optimizer) -> int:
    """Switch megatron's torch-AdamW fallback (no TransformerEngine / Apex, e.g. every CPU run) to torch's fused
    multi-tensor kernel: the same AdamW update in one pass over all parameters, ~4-6x faster than the per-tensor
    default on 2 CPU cores (26M parameters: 15 ms vs 57-93 ms a step). TE / Apex ``FusedAdam`` is left alone.
    Returns the number of param groups switched."""
    switched = 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if type(inner) is not torch.optim.AdamW:
            continue
        for group in inner.param_groups:
            params = [p for p in group["params"]]
            if params and all(p.dtype in (torch.float32, torch.bfloat16) for p in params):
                if len({p.device.type for p in params}) == 1 and params[0].device.type in ("cpu", "cuda"):
                    group["fused"], group["foreach"] = True, False
                    switched += 1
    return switched


def build_scheduler(cfg: DictConfig, optimizer, total_steps: int, lr: float | None = None):
    """Pretraining's schedule (``schedule:`` and ``optimizer.min_lr_ratio``) over ``total_steps`` steps."""
    o, s = cfg.optimizer, cfg.schedule
    max_lr = o.lr if lr is None else lr
    decay = s.decay_steps or total_steps
    return param_scheduler(
        optimizer, max_lr, max_lr * o.min_lr_ratio, s.warmup_steps, decay, s.decay_style, o.weight_decay
    )


def param_scheduler(
    optimizer,
    max_lr: float,
    min_lr: float,
    warmup_steps: int,
    decay_steps: int,
    decay_style: str,
    weight_decay: float,
):
    """megatron's ``OptimizerParamScheduler``: linear warmup from 0 over ``warmup_steps`` (none: from
    ``max_lr``), then ``decay_style`` to ``min_lr`` at ``decay_steps``; constant weight decay. The curve is
    ``echo_megatron.config.rl.lr_at``."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup_steps else max_lr,
        max_lr=max_lr,
        min_lr=min_lr,
        lr_warmup_steps=warmup_steps,
        lr_decay_steps=max(decay_steps, warmup_steps + 1),
        lr_decay_style=decay_style,
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=max(decay_steps, 1),
        wd_incr_style="constant",
    )


def attach_schedule_hooks(model: list, optimizer) -> None:
    """What megatron's schedules expect on the model config: grad sync, finalisation, loss scaling."""
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.utils import get_model_config

    tc = get_model_config(model[0])
    tc.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
    tc.finalize_model_grads_func = finalize_model_grads
    tc.grad_scale_func = optimizer.scale_loss


def build_train_state(
    cfg: DictConfig, vocab_size: int, device: torch.device, total_steps: int, runtime: Runtime | None = None
) -> TrainState:
    model = build_model_chunks(cfg, vocab_size, device, runtime=runtime)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    attach_schedule_hooks(model, optimizer)
    return TrainState(model, optimizer, scheduler, device)
