"""``echo-megatron params PRESET|RECIPE [k=v ...]``: parameter count per component (meta device).

The vocabulary is the one the recipe trains: its tokenizer's when ``data.tokenizer.path`` is set (else, or
when that tokenizer is not on this machine, ``model.vocab_size``; the line says which).
"""

from __future__ import annotations

import argparse
import os

from echo_megatron.config import load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", help="a model preset name (e.g. paper_150m) or a recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")


def run(args: argparse.Namespace) -> int:
    from echo_megatron.model.params import count_parameters, human
    from echo_megatron.model.vocab import resolve_vocab

    if os.path.isfile(args.preset) or args.preset.endswith((".yaml", ".yml")):
        cfg = load_config(args.preset, args.overrides)  # a shipped recipe's recipes/... name works anywhere
    else:
        cfg = load_config(None, [f"model.preset={args.preset}", *args.overrides])
    vocab = resolve_vocab(cfg, tp=1, missing_ok=True)
    counts = count_parameters(cfg, vocab.size)
    m = cfg.model
    print(
        f"model: {m.preset or args.preset}  d={m.hidden_size} layers={m.num_layers} heads={m.num_attention_heads} "
        f"ffn={m.ffn_hidden_size or 4 * m.hidden_size} vocab={vocab.size} (padded {vocab.padded}; from "
        f"{vocab.source}) tied={not m.untie_embeddings_and_output_weights} norm={m.normalization}"
    )
    for name, n in counts.items():
        print(f"  {name:<14} {n:>15,}  {human(n):>8}")
    return 0
