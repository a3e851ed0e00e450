"""``echo-megatron testbed [RECIPE] [out=DIR seed=N ...]``: write the three-format arithmetic testbed.

Bare keys are ``testbed.*`` fields (``out=DIR`` = ``testbed.out=DIR``); dotted keys are any config override.
``gsm8k_path=.../gsm8k/train.jsonl`` also renders GSM8K train into DIR/gsm8k3/.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from echo_megatron.config import load_config
from echo_megatron.config.data import TestbedConfig

TESTBED_KEYS = {f.name for f in dataclasses.fields(TestbedConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML file (optional; its testbed section is used)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="testbed keys or dotted overrides")


def split_args(recipe: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """(recipe, overrides) with a first ``key=value`` taken as an override, bare testbed keys made dotted."""
    items = list(overrides)
    if recipe is not None and "=" in recipe and not os.path.isfile(recipe):
        recipe, items = None, [recipe] + items
    out = []
    for item in items:
        key = item.split("=", 1)[0]
        out.append(f"testbed.{item}" if key in TESTBED_KEYS else item)
    return recipe, out


def run(args: argparse.Namespace) -> int:
    from echo_megatron.data.testbed import write_testbed

    recipe, overrides = split_args(args.recipe, args.overrides)
    cfg = load_config(recipe, overrides)
    t0 = time.perf_counter()
    try:
        summary = write_testbed(cfg.testbed)
    except ValueError as e:
        print(f"echo-megatron testbed: {e}")
        return 2
    out = cfg.testbed.out
    print(
        f"testbed: {summary['train']:,} train problems {summary['formats']}, {summary['test']} held out -> {out}/"
    )
    if "tokenizer" in summary:
        print(f"tokenizer: {summary['tokenizer']} (vocab {summary['vocab_size']:,})")
    if "gsm8k3" in summary:
        g = summary["gsm8k3"]
        print(
            f"gsm8k3: {g['train']:,} GSM8K problems {g['formats']} ({g['dropped']} dropped) -> {out}/gsm8k3/"
        )
    print(
        f"done in {time.perf_counter() - t0:.2f}s; next: echo-megatron preprocess recipes/demo/testbed.yaml"
        + ("" if out == "data/testbed" else f" testbed.out={out}")
    )
    return 0
