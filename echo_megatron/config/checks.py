"""Value checks that a structured schema cannot express (ranges, choices, keys that exclude each other).

``load_config`` runs :func:`check_config` on every resolved config, so a bad value is one line naming the key
(exit status 2) before anything starts. Checks that need more than the config (the preprocessed data, the
number of ranks) stay with the code that has it.
"""

from __future__ import annotations

from typing import Any

from echo_megatron.config.rl import LOSS_AGG_MODES, LR_DECAY_STYLES, PROMPT_TEMPLATES


class ConfigValueError(ValueError):
    """A key whose value is out of range or not one of its choices (``load_config`` raises it as a ConfigError)."""


def _train_length(t: Any) -> None:
    if t.steps is not None and t.epochs is not None:
        raise ConfigValueError(
            f"train.steps ({t.steps}) and train.epochs ({t.epochs}) are both set: set the other to null "
            "(e.g. train.epochs=null train.steps=N)"
        )
    if t.steps is None and t.epochs is None:
        raise ConfigValueError("train.steps and train.epochs are both null: set one of them")
    if t.steps is not None and t.steps < 0:
        raise ConfigValueError(f"train.steps must be >= 0, got {t.steps}")
    if t.epochs is not None and not t.epochs > 0:
        raise ConfigValueError(f"train.epochs must be > 0, got {t.epochs}")


def _checkpoint(c: Any) -> None:
    bad = [s for s in c.save_steps if s < 1]
    if bad:
        raise ConfigValueError(f"checkpoint.save_steps must be steps >= 1, got {bad}")
    if c.save_interval < 0:
        raise ConfigValueError(f"checkpoint.save_interval must be >= 0, got {c.save_interval}")


def _rl(cfg: Any) -> None:
    rl = cfg.rl
    if rl.lr_decay_style not in LR_DECAY_STYLES:
        raise ConfigValueError(
            f"rl.lr_decay_style: unknown '{rl.lr_decay_style}' ({' | '.join(LR_DECAY_STYLES)})"
        )
    if not 0.0 <= rl.lr_warmup_ratio < 1.0:
        raise ConfigValueError(f"rl.lr_warmup_ratio must be in [0, 1), got {rl.lr_warmup_ratio}")
    if not 0.0 <= rl.min_lr_ratio <= 1.0:
        raise ConfigValueError(f"rl.min_lr_ratio must be in [0, 1], got {rl.min_lr_ratio}")
    if rl.critic_min_lr is not None and not 0.0 <= rl.critic_min_lr:
        raise ConfigValueError(f"rl.critic_min_lr must be >= 0 (or null), got {rl.critic_min_lr}")
    if rl.prompt_template not in PROMPT_TEMPLATES:
        raise ConfigValueError(
            f"rl.prompt_template: unknown '{rl.prompt_template}' ({' | '.join(PROMPT_TEMPLATES)})"
        )
    if rl.loss_agg not in LOSS_AGG_MODES:
        raise ConfigValueError(f"rl.loss_agg: unknown '{rl.loss_agg}' ({' | '.join(LOSS_AGG_MODES)})")
    if rl.ppo_epochs < 1:
        raise ConfigValueError(f"rl.ppo_epochs must be >= 1, got {rl.ppo_epochs}")
    if rl.ei_max_new_tokens is not None and rl.ei_max_new_tokens < 1:
        raise ConfigValueError(f"rl.ei_max_new_tokens must be >= 1 (or null), got {rl.ei_max_new_tokens}")
    tbs = rl.train_batch_size
    if tbs is not None:
        rollout = rl.num_rollout_samples * cfg.rollout.n
        if tbs < 1:
            raise ConfigValueError(f"rl.train_batch_size must be >= 1 (or null), got {tbs}")
        if rl.algorithm != "ei" and rollout % tbs:
            raise ConfigValueError(
                f"rl.train_batch_size ({tbs}) must divide the rollout: rl.num_rollout_samples x rollout.n = "
                f"{rl.num_rollout_samples} x {cfg.rollout.n} = {rollout} samples"
            )


def _rewards(cfg: Any) -> None:
    from echo_megatron.rewards.paper import CLASSIFIERS
    from echo_megatron.rewards.verifiers import VERIFIERS

    verifier, classifier = cfg.rewards.verifier, cfg.formats.classifier
    if verifier not in VERIFIERS:
        raise ConfigValueError(f"rewards.verifier: unknown '{verifier}' ({' | '.join(VERIFIERS)})")
    if classifier not in CLASSIFIERS:
        raise ConfigValueError(f"formats.classifier: unknown '{classifier}' ({' | '.join(CLASSIFIERS)})")
    if classifier == "paper" and verifier != "paper":
        raise ConfigValueError(
            "formats.classifier: paper needs rewards.verifier: paper (the paper's label depends on its code run)"
        )


def check_config(cfg: Any) -> None:
    """Raise a one-line :class:`ConfigValueError` naming the first key whose value is not allowed."""
    _train_length(cfg.train)
    _checkpoint(cfg.checkpoint)
    _rl(cfg)
    _rewards(cfg)
