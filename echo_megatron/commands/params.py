"""``echo-megatron params PRESET|RECIPE [k=v ...]``: parameter count per component (meta device)."""

from __future__ import annotations

import argparse
import os

from echo_megatron.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", help="a model preset name (e.g. paper_150m) or a recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def run(args: argparse.Namespace) -> int:
    from echo_megatron.model.params import count_parameters, human

    if os.path.isfile(args.preset):
        cfg = load_config(args.preset, args.overrides)
    else:
        cfg = load_config(None, [f"model.preset={args.preset}", *args.overrides])
    counts = count_parameters(cfg)
    m = cfg.model
    print(
        f"model: {m.preset or args.preset}  d={m.hidden_size} layers={m.num_layers} heads={m.num_attention_heads} "
        f"ffn={m.ffn_hidden_size or 4 * m.hidden_size} vocab={m.vocab_size} "
        f"tied={not m.untie_embeddings_and_output_weights} norm={m.normalization}"
    )
    for name, n in counts.items():
        print(f"  {name:<14} {n:>15,}  {human(n):>8}")
    return 0
