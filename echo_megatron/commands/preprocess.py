"""``echo-megatron preprocess RECIPE [k=v ...] [--force]``: tokenize a recipe's sources into megatron indexed
datasets (``data.indexed_dir``/<source>.bin/.idx + .prompt_len.npy + .manifest.json). Unchanged sources are skipped."""

from __future__ import annotations

import argparse
import time

from echo_megatron.commands._common import add_recipe_arguments, load_from_args
from echo_megatron.data.records import quiet_megatron_import


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--strict", action="store_true", help="a hub source that cannot be read is an error")


def run(args: argparse.Namespace) -> int:
    quiet_megatron_import()
    from echo_megatron.data.preprocess import preprocess

    cfg = load_from_args(args)
    t0 = time.perf_counter()
    manifests, skipped = preprocess(cfg, force=args.force, strict=args.strict)
    docs = sum(m["docs"] for m in manifests)
    tokens = sum(m["tokens"] for m in manifests)
    print(
        f"preprocessed {len(manifests)} sources: {docs:,} docs, {tokens:,} tokens in "
        f"{time.perf_counter() - t0:.2f}s -> {cfg.data.indexed_dir}"
    )
    if skipped:
        print(
            f"not preprocessed (hub not readable here): {', '.join(skipped)}; give them a local path to train"
        )
    return 0
