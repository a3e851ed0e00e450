"""``echo-megatron export-hf CHECKPOINT OUT_DIR``: write a transformers model (OLMo or Llama) + tokenizer.

CHECKPOINT is an iter_NNNNNNN directory, a checkpoints directory or a run directory (its ``latest``), saved
at any TP/PP layout. The output loads with ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` offline.
"""

from __future__ import annotations

import argparse
import os

from echo_megatron.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint dir (iter_NNNNNNN), checkpoints dir or run dir")
    parser.add_argument("out_dir", help="where to write config.json, model.safetensors and the tokenizer")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run's config")


def export_hf(checkpoint: str, out_dir: str, dtype: str = "float32", overrides: tuple[str, ...] = ()) -> str:
    """Load ``checkpoint`` (any layout) at TP = PP = 1 and write a transformers model to ``out_dir``."""
    import torch

    from echo_megatron.checkpoint import find_checkpoint
    from echo_megatron.checkpoint.hf_export import build_hf_model, hf_architecture, save_tokenizer
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import detect_env
    from echo_megatron.rollout.loading import load_policy, run_config_path

    if detect_env().world_size != 1:
        raise ConfigError("export-hf runs in one process (it reshards any TP/PP layout to TP=1 PP=1 itself)")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise ConfigError(f"export-hf: --dtype must be float32, bfloat16 or float16, not {dtype}")
    hf_architecture(load_config(run_config_path(find_checkpoint(checkpoint)), list(overrides)).model)
    policy = load_policy(checkpoint, [*overrides, "parallel.sequence_parallel=false"], tp=1)
    hf = build_hf_model(policy.model, policy.cfg.model, policy.vocab.eod, policy.vocab.pad, torch_dtype)
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir, safe_serialization=True)
    if policy.tokenizer is not None:
        save_tokenizer(policy.tokenizer, out_dir)
    return out_dir


def run(args: argparse.Namespace) -> int:
    from echo_megatron.distributed.init import destroy

    try:
        out = export_hf(args.checkpoint, args.out_dir, args.dtype, tuple(args.overrides))
    finally:
        destroy()
    print(f"[echo-megatron] exported {args.checkpoint} -> {out}")
    return 0
