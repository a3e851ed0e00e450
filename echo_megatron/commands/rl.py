"""``echo-megatron rl RECIPE [k=v ...]``: PPO / GRPO / REINFORCE++ / Expert Iteration from a base checkpoint."""

from __future__ import annotations

import argparse

from omegaconf import DictConfig, OmegaConf

from echo_megatron.commands._common import add_recipe_arguments, load_from_args
from echo_megatron.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)


def inherit_base(cfg: DictConfig) -> DictConfig:
    """The architecture and tokenizer come from the base run (they must match its weights)."""
    from echo_megatron.checkpoint import find_checkpoint
    from echo_megatron.rollout.loading import run_config_path

    if not cfg.rl.base:
        raise ConfigError("rl.base: the pretrained base (a run dir or checkpoint dir) is required")
    try:
        base_cfg = OmegaConf.load(run_config_path(find_checkpoint(cfg.rl.base)))
    except FileNotFoundError as e:
        raise ConfigError(f"rl.base: {e}") from e
    return OmegaConf.merge(cfg, {"model": base_cfg.model, "data": {"tokenizer": base_cfg.data.tokenizer}})


def run(args: argparse.Namespace) -> int:
    from echo_megatron.distributed.init import destroy
    from echo_megatron.model.runtime import resolve_runtime
    from echo_megatron.rl.loop import train_rl

    cfg = inherit_base(load_from_args(args))
    resolve_runtime(cfg)  # exit 2 before any process group starts
    try:
        out = train_rl(cfg)
    finally:
        destroy()
    if out.get("rank", 0) == 0:
        print(f"[echo-megatron] RL done: run dir {cfg.run_dir}")
    return 0
