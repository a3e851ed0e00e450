"""``echo-megatron pretrain RECIPE [k=v ...]``: pretrain (single process, torchrun or srun)."""

from __future__ import annotations

import argparse
import os

from omegaconf import OmegaConf

from echo_megatron.commands._common import add_recipe_arguments, load_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from echo_megatron.checkpoint.base import adopt_base_architecture, resolve_base
    from echo_megatron.distributed.init import destroy
    from echo_megatron.model.runtime import resolve_runtime
    from echo_megatron.training.loop import pretrain, with_train_steps

    cfg = load_from_args(args)
    if cfg.checkpoint.load:  # continued pretraining: the base's architecture (an HF model is imported first)
        base = resolve_base(cfg.checkpoint.load, cfg.run_dir, cfg.parallel.tp)
        cfg = adopt_base_architecture(OmegaConf.merge(cfg, {"checkpoint": {"load": base}}), base)
    resolve_runtime(cfg)  # fp8 / TE / bf16 this machine cannot run: exit 2 before any process group starts
    # train.epochs resolved here: an unpreprocessed mixture exits 2 before any process group starts
    if cfg.train.epochs is not None:
        epochs, cfg = cfg.train.epochs, with_train_steps(cfg)
        if os.environ.get("RANK", "0") == "0":
            print(f"[echo-megatron] train.epochs {epochs:g} = {cfg.train.steps:,} steps", flush=True)
    try:
        out = pretrain(cfg)
    finally:
        destroy()
    if out and out.get("rank", 0) == 0:
        print(
            f"[echo-megatron] done: step {int(out['step'])} loss {out.get('loss', float('nan')):.4f}  run dir {cfg.run_dir}"
        )
    return 0
