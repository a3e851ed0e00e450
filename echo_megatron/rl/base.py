"""The pretrained base an RL run starts from: its checkpoint, and the architecture and tokenizer it fixes.

``rl.base`` names a run dir, a checkpoint dir or a HuggingFace model (directory or hub id; imported once into
``RUN_DIR/base_import``). The policy (and PPO's critic body, and the KL reference) load its weights, so the model
section and the tokenizer must be the base run's own: ``inherit_base`` takes them from the config saved with the
base, before anything is built.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from echo_megatron.checkpoint.base import resolve_base
from echo_megatron.config import ConfigError
from echo_megatron.rollout.loading import run_config_path


def base_checkpoint(cfg: DictConfig) -> str:
    """The checkpoint directory ``rl.base`` points at (a clear error when it is unset or holds none); a
    HuggingFace model is imported into ``RUN_DIR/base_import`` on first use (checkpoint/base.py)."""
    if not cfg.rl.base:
        raise ConfigError("rl.base: the pretrained base (a run dir, checkpoint dir or HF model) is required")
    try:
        return resolve_base(cfg.rl.base, cfg.run_dir, cfg.parallel.tp)
    except ConfigError as e:
        raise ConfigError(f"rl.base: {e}") from None


def inherit_base(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the base run's model section and tokenizer (they must match its weights)."""
    try:
        base_cfg = OmegaConf.load(run_config_path(base_checkpoint(cfg)))
    except FileNotFoundError as e:
        raise ConfigError(f"rl.base: {e}") from e
    return OmegaConf.merge(cfg, {"model": base_cfg.model, "data": {"tokenizer": base_cfg.data.tokenizer}})
