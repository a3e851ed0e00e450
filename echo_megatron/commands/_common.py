"""Argument helpers shared by the commands that take ``RECIPE [key=value ...]``."""

from __future__ import annotations

import argparse

from omegaconf import DictConfig

from echo_megatron.config import load_config


def add_recipe_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("recipe", nargs=None if required else "?", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def load_from_args(args: argparse.Namespace) -> DictConfig:
    return load_config(args.recipe, args.overrides)
