"""``echo-megatron plan RECIPE [k=v ...] --nodes N --gpus-per-node G``: memory and time plan.

Parameters, memory per GPU (weights, gradients, optimizer states with / without the distributed optimizer,
activations with / without full recompute), whether it fits the GPU (80 GB H100 by default), the estimated
step and run time at ``cluster.mfu``, and layout suggestions. The formulas: echo_megatron/cluster/plan.py.
"""

from __future__ import annotations

import argparse

from echo_megatron.commands._common import add_recipe_arguments, load_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--nodes", type=int, default=None, help="nodes (default: cluster.nodes)")
    parser.add_argument(
        "--gpus-per-node", type=int, default=None, help="GPUs per node (default: cluster.gpus_per_node)"
    )


def run(args: argparse.Namespace) -> int:
    from echo_megatron.cluster.plan import report

    cfg = load_from_args(args)
    nodes = args.nodes or cfg.cluster.nodes
    gpus = args.gpus_per_node or cfg.cluster.gpus_per_node
    print(report(cfg, nodes, gpus, args.recipe), end="")
    return 0
