"""``echo-megatron submit RECIPE [k=v ...] [--nodes N ...] [--dry-run]``: sbatch a recipe or a pipeline.

A plain recipe becomes one job running ``--command`` (default pretrain); a pipeline recipe (a ``stages``
list, see echo_megatron/cluster/pipeline.py) becomes one job per stage chained with ``--dependency=afterok``
(grid stages: job arrays); a sweep grid file (``axes``, see echo_megatron/config/sweep.py) one job array. Prints the job ids; ``--dry-run`` prints the sbatch scripts instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from echo_megatron.cluster.submit import Rendered
from echo_megatron.commands import COMMANDS
from echo_megatron.commands._common import add_recipe_arguments
from echo_megatron.config import ConfigError

# flag -> cluster.* key
FLAGS = {
    "nodes": "nodes",
    "gpus_per_node": "gpus_per_node",
    "partition": "partition",
    "account": "account",
    "time": "time",
    "container": "container",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument(
        "--command",
        dest="run_command",
        default=None,
        help="the command a plain recipe runs (default pretrain; a sweep whose runs all set rl.base: rl)",
    )
    parser.add_argument("--nodes", type=int, help="cluster.nodes")
    parser.add_argument("--gpus-per-node", type=int, help="cluster.gpus_per_node (ranks per node)")
    parser.add_argument("--partition", help="cluster.partition")
    parser.add_argument("--account", help="cluster.account")
    parser.add_argument("--time", help="cluster.time, e.g. 04:00:00")
    parser.add_argument("--container", help="cluster.container: a pyxis image or an Apptainer .sif")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch scripts; submit nothing")


def command_module(command: str) -> str | None:
    """The module under echo_megatron.commands that implements ``command``; None if not in this install."""
    if command not in COMMANDS:
        raise ConfigError(f"unknown command '{command}' (known: {', '.join(COMMANDS)})")
    module = f"echo_megatron.commands.{COMMANDS[command][0]}"
    return module if importlib.util.find_spec(module) is not None else None


def missing_commands(rendered: list[Rendered]) -> list[str]:
    """The commands the rendered jobs run that this installation lacks (an unknown one is a ConfigError)."""
    return sorted({r.job.stage.command for r in rendered if command_module(r.job.stage.command) is None})


def run(args: argparse.Namespace) -> int:
    from echo_megatron.cluster import slurm
    from echo_megatron.cluster.submit import dry_run, prepare, submit

    flags = [
        f"cluster.{key}={getattr(args, dest)}"
        for dest, key in FLAGS.items()
        if getattr(args, dest) is not None
    ]
    pipeline, root, rendered = prepare(args.recipe, list(args.overrides), args.run_command, flags)
    missing = missing_commands(rendered)
    if args.dry_run:
        dry_run(rendered)
        if missing:
            print(
                f"echo-megatron submit: note: command(s) {', '.join(missing)} are not in this installation yet; "
                "the jobs that run them would fail",
                file=sys.stderr,
            )
        return 0
    if missing:
        print(
            f"echo-megatron submit: command(s) {', '.join(missing)} are not in this installation; "
            "nothing submitted",
            file=sys.stderr,
        )
        return 2
    try:
        ids = submit(pipeline, root, rendered)
    except slurm.SlurmError as e:
        print(f"echo-megatron submit: {e}", file=sys.stderr)
        return 1
    for stage, job_id in ids.items():
        print(f"{stage}\t{job_id}")
    print(f"submitted {len(ids)} job(s); follow them with: echo-megatron status {root}", file=sys.stderr)
    return 0
