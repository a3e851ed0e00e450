"""``echo-megatron mixture RECIPE [k=v ...] [--json]``: per source docs, tokens, multiplier, blend weight, share
of tokens and passes in the configured run (from the preprocess manifests)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from echo_megatron.commands._common import add_recipe_arguments, load_from_args
from echo_megatron.data.records import quiet_megatron_import


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    quiet_megatron_import()
    from echo_megatron.data.mixture import format_table, plan_mixture

    mix = plan_mixture(load_from_args(args))
    if args.json:
        print(json.dumps(dataclasses.asdict(mix) | {"steps_per_epoch": mix.steps_per_epoch}, indent=2))
    else:
        print(format_table(mix))
    return 0
