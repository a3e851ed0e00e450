"""``echo-megatron import-hf HF_DIR_OR_ID OUT [key=value ...]``: a transformers model as an echo-megatron run.

OUT gets ``config.yaml`` (model section = the HF architecture), ``checkpoints/iter_0000000`` and the tokenizer;
it then works wherever a run directory does: ``generate OUT``, ``eval OUT``, ``export-hf OUT``, ``rl.base=OUT``,
``checkpoint.load=OUT``. Overrides set the run's layout and settings (``parallel.tp=2 parallel.pp=2``,
``model.seq_length=2048``); unsupported architecture features are refused by name before anything is written.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a transformers model directory, or a hub id (org/name)")
    parser.add_argument("out_dir", help="the run directory to create")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings of the written config")


def run(args: argparse.Namespace) -> int:
    from echo_megatron.checkpoint.hf_import import import_hf
    from echo_megatron.distributed.init import destroy

    try:
        out = import_hf(args.source, args.out_dir, tuple(args.overrides))
    finally:
        destroy()
    print(f"[echo-megatron] imported {args.source} -> {out}")
    return 0
