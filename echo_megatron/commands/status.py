"""``echo-megatron status RUN_DIR``: where each stage of a submitted pipeline (or a single run) is.

One row per stage (per array task): Slurm job id, state (and pending reason), restarts, progress from
metrics.jsonl / eval results, the latest checkpoint and the run dir. Works without Slurm on a copied run dir.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run dir or a pipeline root (the run_dir that submit printed)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from echo_megatron.cluster.status import collect, format_rows

    if not os.path.isdir(args.run_dir):
        print(f"echo-megatron status: no such directory: {args.run_dir}", file=sys.stderr)
        return 2
    root = os.path.abspath(args.run_dir)
    rows = collect(root)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(format_rows(rows, root), end="")
    return 0
