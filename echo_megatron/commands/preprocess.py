"""``echo-megatron preprocess RECIPE [k=v ...] [--only S1,S2] [--shard-index I --num-shards N] [--force] [--merge]``:
tokenize a recipe's sources into sharded megatron indexed datasets (``data.indexed_dir``/<source>/shard_NNNNN.*
+ manifest.json). Complete shards are kept; a rerun, a requeued job or another task builds only the rest.
A Slurm job array runs task I of N on each node (``echo-megatron submit RECIPE --command preprocess``);
``--merge`` only merges and checks the shards every task wrote."""

from __future__ import annotations

import argparse
import time

from echo_megatron.commands._common import add_recipe_arguments, load_from_args
from echo_megatron.data.records import quiet_megatron_import


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--only", help="comma-separated sources of the recipe to preprocess (default: all)")
    parser.add_argument("--shard-index", type=int, default=0, help="this task's index I in [0, N)")
    parser.add_argument("--num-shards", type=int, default=1, help="N tasks share the shards round-robin")
    parser.add_argument("--force", action="store_true", help="rebuild this task's shards even if complete")
    parser.add_argument(
        "--merge", action="store_true", help="only merge the shards into manifests (all tasks done)"
    )


def run(args: argparse.Namespace) -> int:
    quiet_megatron_import()
    from echo_megatron.data.preprocess import merge_only, preprocess

    cfg = load_from_args(args)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    t0 = time.perf_counter()
    if args.merge:
        manifests, waiting = merge_only(cfg, only), []
    else:
        manifests, waiting = preprocess(
            cfg, force=args.force, only=only, shard_index=args.shard_index, num_shards=args.num_shards
        )
    docs = sum(m["docs"] for m in manifests)
    tokens = sum(m["tokens"] for m in manifests)
    print(
        f"preprocessed {len(manifests)} sources: {docs:,} docs, {tokens:,} tokens in "
        f"{time.perf_counter() - t0:.2f}s -> {cfg.data.indexed_dir}"
    )
    if waiting:
        print(
            f"task {args.shard_index} of {args.num_shards} done; waiting for other tasks: {', '.join(waiting)}"
        )
    return 0
