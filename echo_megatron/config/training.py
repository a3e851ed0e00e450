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
    """Pretraining's LR schedule: linear warmup from 0, then decay to ``optimizer.lr * optimizer.min_lr_ratio``.

    RL and Expert Iteration have their own keys (``rl.lr_warmup_ratio``, ``rl.lr_decay_style``,
    ``rl.min_lr_ratio``; config/rl.py), since their length is counted in optimizer steps of a different loop.
    """

    warmup_steps: int = 0
    decay_style: str = "cosine"  # cosine | linear | constant
    decay_steps: Optional[int] = (
        None  # None = the run's length (train.steps, or what train.epochs resolves to)
    )


@dataclass
class TrainConfig:
    """The pretraining loop. Its length is ``steps`` optimizer steps, or ``epochs`` mixture epochs.

    ``epochs``: passes over the repeat-expanded mixture (a source at multiplier N counts N times), resolved from
    the preprocess manifests to ``floor(epochs * E / global_batch_size)`` steps, E = samples in one mixture epoch
    (echo_megatron/data/mixture.py, printed by ``echo-megatron mixture``): the paper's ``max_duration: 1ep``,
    whose ``max_steps = floor(sum_files floor(tokens / 2048) / 512)``. Set one of ``steps`` and ``epochs``; the
    other must be null. A run directory's config.yaml records the resolved ``steps``.
    """

    steps: Optional[int] = 100
    epochs: Optional[float] = None
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
    """When checkpoints are written (pretraining and RL alike) and how many are kept.

    A step is saved when it is a multiple of ``save_interval``, when it is listed in ``save_steps``, at the end
    of the run, and on SIGTERM / SIGUSR1. ``save_steps`` carries irregular schedules such as the paper's
    log-spaced RL checkpoints, ``int(np.logspace(-2.1, 0, 15) * total_steps)``
    (``echo_megatron.checkpoint.schedule.log_spaced_steps``), which its format-share figures evaluate.
    ``keep_last`` applies to every checkpoint; ``keep_last: 0`` keeps them all.
    """

    save_interval: int = 0  # 0 = no regular interval
    save_steps: list[int] = field(default_factory=list)  # extra steps to save at (each >= 1)
    keep_last: int = 2  # <= 0: keep every checkpoint
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
