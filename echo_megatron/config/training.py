"""Optimizer, LR schedule, training loop, checkpointing and logging."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio (the paper's 10%)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0
    decay_style: str = "cosine"  # cosine | linear | constant
    decay_steps: Optional[int] = None  # None = train.steps


@dataclass
class TrainConfig:
    steps: int = 100
    global_batch_size: int = 16
    micro_batch_size: int = 4
    seed: int = 1234
    precision: str = "fp32"  # fp32 | bf16 | fp8
    eval_interval: int = 0  # 0 = no validation
    eval_iters: int = 2
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    exit_after_steps: Optional[int] = None  # stop (with a checkpoint) after this many steps of this launch


@dataclass
class FP8Config:
    """TransformerEngine FP8 recipe knobs (GPU only; see model.transformer_impl)."""

    format: str = "hybrid"  # hybrid (e4m3 fwd, e5m2 bwd) | e4m3
    amax_history_len: int = 1024
    amax_compute_algo: str = "max"  # max | most_recent
    margin: int = 0
    first_last_layers_bf16: bool = True
    num_layers_at_start_in_bf16: int = 1
    num_layers_at_end_in_bf16: int = 1


@dataclass
class CheckpointConfig:
    save_interval: int = 0  # 0 = only at the end (and on SIGTERM/SIGUSR1)
    keep_last: int = 2
    load: Optional[str] = None  # a checkpoint dir (iter_NNNNNNN or its parent) to initialise from
    resume: bool = True  # resume from RUN_DIR/checkpoints/latest when present
    load_optimizer: bool = True
    load_rng: bool = True
    async_save: bool = False


@dataclass
class LoggingConfig:
    log_interval: int = 1
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "echo-megatron"
    wandb_mode: str = "offline"
    progress_bar: bool = True  # a bar on a terminal; else a plain line every progress_interval_s (Slurm .out)
    progress_interval_s: float = 30.0
    extra: dict = field(default_factory=dict)
