"""Metrics sinks: ``metrics.jsonl`` (the source of truth for reports), TensorBoard, W&B, stdout.

Only rank 0 writes. Every row is ``{"step", "phase", ...}``; ``time`` is seconds since the epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from echo_megatron.rundir import RunDir, persistent_run_id


class MetricsLogger:
    def __init__(self, cfg: DictConfig, run_dir: str, rank: int = 0) -> None:
        self.enabled = rank == 0
        self.path = RunDir(run_dir).metrics
        self.tb = None
        self.wandb = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        if cfg.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(RunDir(run_dir).tb)
            except ImportError:
                print("[metrics] tensorboard not installed: TensorBoard logging off")
        if cfg.logging.wandb:
            try:
                import wandb

                os.environ.setdefault("WANDB_MODE", cfg.logging.wandb_mode)
                self.wandb = wandb.init(
                    project=cfg.logging.wandb_project,
                    name=cfg.name,
                    id=persistent_run_id(RunDir(run_dir).wandb_id),  # a requeued job continues this run
                    dir=run_dir,
                    config=OmegaConf.to_container(cfg, resolve=True),
                    resume="allow",
                )
            except ImportError:
                print("[metrics] wandb not installed: W&B logging off (pip install echo-megatron[wandb])")

    def log(self, step: int, phase: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "phase": phase, "time": round(time.time(), 3)}
        for k, v in values.items():
            row[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
        for k, v in row.items():
            if k in ("step", "phase", "time") or not isinstance(v, float) or math.isnan(v):
                continue
            if self.tb is not None:
                self.tb.add_scalar(f"{phase}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{phase}/{k}": v for k, v in row.items() if isinstance(v, float)}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
