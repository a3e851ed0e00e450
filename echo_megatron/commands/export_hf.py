"""``echo-megatron export-hf CHECKPOINT OUT_DIR``: write a transformers model (OLMo or Llama) + tokenizer.

CHECKPOINT is an iter_NNNNNNN directory, a checkpoints directory or a run directory (its ``latest``), saved
at any TP/PP layout. The output loads with ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` offline.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint dir (iter_NNNNNNN), checkpoints dir or run dir")
    parser.add_argument("out_dir", help="where to write config.json, model.safetensors and the tokenizer")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run's config")


def run(args: argparse.Namespace) -> int:
    from echo_megatron.checkpoint.hf_export import export_hf
    from echo_megatron.distributed.init import destroy

    try:
        out = export_hf(args.checkpoint, args.out_dir, args.dtype, tuple(args.overrides))
    finally:
        destroy()
    print(f"[echo-megatron] exported {args.checkpoint} -> {out}")
    return 0
