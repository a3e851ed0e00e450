"""The pretrained base an RL run starts from: its checkpoint, and the architecture and tokenizer it fixes.

``rl.base`` names a run dir or a checkpoint dir. The policy (and PPO's critic body, and the KL reference)
load its weights, so the model section and the tokenizer must be the base run's own: ``inherit_base``
takes them from the config saved with the base, before anything is built.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from echo_megatron.checkpoint import find_checkpoint
from echo_megatron.config import ConfigError
from echo_megatron.rollout.loading import run_config_path


def base_checkpoint(cfg: DictConfig) -> str:
    """The checkpoint directory ``rl.base`` points at (a clear error when it is unset or holds none)."""
    if not cfg.rl.base:
        raise ConfigError("rl.base: the pretrained base (a run dir or checkpoint dir) is required")
    try:
        return find_checkpoint(cfg.rl.base)
    except FileNotFoundError as e:
        raise ConfigError(f"rl.base: {e}") from e


def inherit_base(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the base run's model section and tokenizer (they must match its weights)."""
    try:
        base_cfg = OmegaConf.load(run_config_path(base_checkpoint(cfg)))
    except FileNotFoundError as e:
        raise ConfigError(f"rl.base: {e}") from e
    return OmegaConf.merge(cfg, {"model": base_cfg.model, "data": {"tokenizer": base_cfg.data.tokenizer}})
