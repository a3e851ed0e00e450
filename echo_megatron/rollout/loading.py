"""Load a trained checkpoint for inference: the run's config, the model at this launch's TP layout, the tokenizer.

``generate`` and ``export-hf`` use it. The checkpoint may have been written at any TP/PP/DP layout:
dist_checkpointing reshards it into the layout asked for here (PP = 1, TP = the launch's world size unless
given; export uses TP = 1 in one process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from echo_megatron.config import ConfigError
from echo_megatron.model.vocab import Vocab
from echo_megatron.rundir import RunDir


@dataclass
class LoadedPolicy:
    cfg: DictConfig
    model: Any  # megatron GPTModel (eval mode)
    tokenizer: Any | None  # echo_megatron.data.tokenizer.Tokenizer, or None for token-id-only runs
    vocab: Vocab  # size (before padding), EOD and pad ids
    iteration: int
    checkpoint: str
    device: torch.device

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids)


def run_config_path(checkpoint: str) -> str:
    """RUN_DIR/config.yaml for RUN_DIR/checkpoints/iter_NNNNNNN."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    path = RunDir(run_dir).config
    if not os.path.isfile(path):
        raise ConfigError(
            f"{checkpoint}: no run config at {path} (a checkpoint is read with the config.yaml of its run dir)"
        )
    return path


def inference_overrides(tp: int, device: str | None = None, trained_in: str = "fp32") -> list[str]:
    """Layout and precision for inference on this machine (PP = 1, no distributed optimizer).

    A run trained in FP8 generates in bf16 on a GPU (same TE layers and weights, no FP8 recipe); on a CPU every
    run loads in fp32 with the local spec.
    """
    from echo_megatron.model.precision import generation_overrides

    on_gpu = torch.cuda.is_available() and device != "cpu"
    out = [
        f"parallel.tp={tp}",
        "parallel.pp=1",
        "parallel.vpp=null",
        "parallel.use_distributed_optimizer=false",
        f"parallel.device={'cuda' if on_gpu else 'cpu'}",
        *generation_overrides(trained_in),
    ]
    if not on_gpu:
        out += ["train.precision=fp32", "model.transformer_impl=local"]
    return out


def load_policy(path: str, overrides: Sequence[str] = (), tp: int | None = None) -> LoadedPolicy:
    """Initialise process groups for inference and load the checkpoint at ``path`` (a run dir works too).

    ``tp`` defaults to the launch's world size (``torchrun --nproc-per-node N`` = TP N). ``overrides`` are
    ``key=value`` strings applied after the run's config and the inference layout.
    """
    from echo_megatron.checkpoint import find_checkpoint, load_checkpoint, read_common_state
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import detect_env, initialize
    from echo_megatron.model.builder import build_model
    from echo_megatron.model.vocab import resolve_vocab

    ckpt = find_checkpoint(path)
    world = detect_env().world_size
    tp = world if tp is None else tp
    trained_in = load_config(run_config_path(ckpt)).train.precision
    cfg = load_config(run_config_path(ckpt), [*inference_overrides(tp, trained_in=trained_in), *overrides])
    _, device = initialize(cfg)
    tokenizer = None
    if cfg.data.tokenizer.path:
        from echo_megatron.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.data.tokenizer)
    vocab = resolve_vocab(cfg, tokenizer=tokenizer)
    if vocab.size != cfg.model.vocab_size:  # the run's config.yaml records the vocabulary it trained
        raise ConfigError(
            f"tokenizer {cfg.data.tokenizer.path} has {vocab.size} tokens but the run's model.vocab_size is "
            f"{cfg.model.vocab_size}"
        )
    model = build_model(cfg, vocab.size).to(device)
    load_checkpoint(ckpt, [model], load_rng=False)
    model.eval()
    iteration = int(read_common_state(ckpt).get("iteration", 0))
    return LoadedPolicy(cfg, model, tokenizer, vocab, iteration, ckpt, device)
