"""``echo-megatron rl RECIPE [k=v ...]``: PPO / GRPO / REINFORCE++ / Expert Iteration from a base checkpoint."""

from __future__ import annotations

import argparse

from echo_megatron.commands._common import add_recipe_arguments, load_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from echo_megatron.distributed.init import destroy
    from echo_megatron.model.runtime import resolve_runtime
    from echo_megatron.rl.base import inherit_base
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
