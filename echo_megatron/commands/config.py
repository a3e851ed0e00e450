"""``echo-megatron config RECIPE [k=v ...]``: print the resolved config as YAML."""

from __future__ import annotations

import argparse

from echo_megatron.commands._common import add_recipe_arguments, load_from_args
from echo_megatron.config import to_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser)


def run(args: argparse.Namespace) -> int:
    print(to_yaml(load_from_args(args)), end="")
    return 0
