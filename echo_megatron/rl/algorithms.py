"""PPO, GRPO and REINFORCE++-baseline as a few functions over the shared machinery (pg.py).

An algorithm says whether it needs a critic, how its KL term enters (a k1 penalty in the per-token
reward, or a k3 term in the loss), how sequence scores become per-token advantages (returned as
``Advantages``), and its policy loss. Everything else (rollout, scoring, reference log-probs,
micro-batching, the megatron update) is shared. The math is in ``functional.py`` (pure functions, tested
against hand computations and NeMo-Aligner). Statistics that span the batch (advantage whitening) are taken
over all data-parallel ranks, so a DP=2 run equals a DP=1 run. Groups (the ``n`` samples of one prompt)
never straddle ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from echo_megatron.distributed import collectives
from echo_megatron.rl import functional as F
from echo_megatron.rl.experience import Experience


@dataclass(frozen=True)
class Advantages:
    """Per-token advantages ``[B, T]`` and, for an algorithm with a critic, the critic's targets."""

    advantages: torch.Tensor
    returns: torch.Tensor | None = None


class Algorithm:
    name = "base"
    needs_critic = False
    kl_in_reward = False  # k1-style penalty folded into per-token rewards (PPO, REINFORCE++)

    def __init__(self, rl: DictConfig, max_new_tokens: int) -> None:
        self.rl = rl
        self.beta = float(rl.initial_policy_kl_penalty)
        self.max_new_tokens = max_new_tokens
        est = rl.kl_estimator
        self.kl_estimator = est if est != "auto" else ("k1" if self.kl_in_reward else "k3")

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    # -- advantages ------------------------------------------------------------------------------------------
    def advantages(self, exp: Experience, scores: torch.Tensor, group_size: int) -> Advantages:
        """Per-token advantages (and returns, for a critic) from sequence scores ``[B]``."""
        raise NotImplementedError

    def _reward_kl(self, exp: Experience) -> torch.Tensor | None:
        if not (self.kl_in_reward and self.beta > 0):
            return None
        return F.kl_estimate(exp.old_logp, exp.ref_logp, self.kl_estimator)

    # -- losses ----------------------------------------------------------------------------------------------
    def _agg(self, per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The numerator of the configured aggregation; the denominator is ``denominator(mask)``."""
        return F.aggregate_loss(
            per_token,
            mask,
            self.rl.loss_agg,
            num_tokens=1.0,
            num_seqs=1.0,
            norm_len=float(self.max_new_tokens),
        )

    def denominator(self, mask: torch.Tensor) -> torch.Tensor:
        """This micro-batch's share of the step's divisor (megatron sums them over micro-batches and DP ranks):
        its loss tokens (token_mean), 1 (micro_token_mean: the step averages micro-batch means), else its rows."""
        if self.rl.loss_agg == "token_mean":
            return mask.sum().to(torch.int)
        if self.rl.loss_agg == "micro_token_mean":
            return torch.tensor(1, dtype=torch.int, device=mask.device)
        return torch.tensor(mask.shape[0], dtype=torch.int, device=mask.device)

    def policy_loss(self, mb: Experience, logp: torch.Tensor, entropy: torch.Tensor) -> tuple:
        """megatron per-token-loss triple: (numerator, denominator, {name: [sum, count]})."""
        mask = mb.mask
        tokens = mask.sum()
        num, stats = F.ppo_clip_loss(
            logp,
            mb.old_logp,
            mb.advantages,
            mask,
            self.rl.ratio_eps,
            agg=self.rl.loss_agg,
            num_tokens=1.0,
            num_seqs=1.0,
            norm_len=float(self.max_new_tokens),
        )
        report = {
            "pg_loss": num.detach(),
            "clip_frac": stats["clip_frac"] * tokens,
            "approx_kl": stats["approx_kl"] * tokens,
            "ratio": stats["ratio"] * tokens,
            "entropy": F.masked_sum(entropy.detach(), mask),
        }
        if mb.ref_logp is not None:
            k = F.kl_estimate(logp, mb.ref_logp, self.kl_estimator)
            report["kl"] = F.masked_sum(k.detach(), mask)
            if not self.kl_in_reward and self.beta > 0:
                num = num + self.beta * self._agg(k, mask)
        if self.rl.entropy_bonus:
            num = num - self.rl.entropy_bonus * self._agg(entropy, mask)
        den = self.denominator(mask)
        out = {}
        for k, v in report.items():
            count = den if k == "pg_loss" else tokens
            out[k] = torch.stack([v.detach().float().reshape(()), count.float().reshape(())])
        return num, den, out


class GRPO(Algorithm):
    """Group-normalised outcome advantages, clipped surrogate, k3 KL in the loss (DeepSeekMath; NeMo-RL)."""

    name = "grpo"

    def advantages(self, exp: Experience, scores: torch.Tensor, group_size: int) -> Advantages:
        a = F.grpo_advantages(scores, group_size, eps=self.rl.adv_eps, scale_by_std=self.rl.grpo_scale_by_std)
        return Advantages(a[:, None] * exp.mask)


class ReinforcePP(Algorithm):
    """REINFORCE++-baseline (Hu 2025): group-mean baseline, k1 reward penalty, batch whitening."""

    name = "reinforce_pp"
    kl_in_reward = True

    def advantages(self, exp: Experience, scores: torch.Tensor, group_size: int) -> Advantages:
        adv = F.reinforce_pp_baseline_advantages(
            scores,
            group_size,
            exp.mask,
            self._reward_kl(exp),
            self.beta,
            self.rl.discount_factor,
            all_reduce_=collectives.dp_all_reduce_,
        )
        return Advantages(adv)


class PPO(Algorithm):
    """PPO with a critic, GAE and a k1 KL penalty in the reward (InstructGPT; NeMo-Aligner's PPO)."""

    name = "ppo"
    needs_critic = True
    kl_in_reward = True

    def advantages(self, exp: Experience, scores: torch.Tensor, group_size: int) -> Advantages:
        rewards = F.ppo_token_rewards(scores, self._reward_kl(exp), exp.mask, self.beta)
        adv, ret = F.gae_advantages_and_returns(
            rewards, exp.old_values, exp.mask, self.rl.discount_factor, self.rl.gae_lambda
        )
        if self.rl.normalize_advantages:
            adv = F.masked_whiten(adv, exp.mask, all_reduce_=collectives.dp_all_reduce_)
        return Advantages(adv, ret)

    def value_loss(self, mb: Experience, values: torch.Tensor) -> tuple:
        """The critic's token mean over the step (NeMo-Aligner), or with ``rl.loss_agg: micro_token_mean`` the
        mean of the micro-batches' token means (OpenRLHF's ValueLoss, as the policy's)."""
        mask = mb.mask
        agg = "micro_token_mean" if self.rl.loss_agg == "micro_token_mean" else "token_mean"
        loss, stats = F.clipped_value_loss(
            values,
            mb.old_values,
            mb.returns,
            mask,
            self.rl.loss_clip_val,
            agg=agg,
            num_tokens=1.0,
        )
        tokens = mask.sum()
        den = self.denominator(mask) if agg == "micro_token_mean" else tokens.to(torch.int)
        report = {
            "value_loss": torch.stack([loss.detach(), den.to(loss.dtype)]),
            "vf_clip_frac": torch.stack([stats["vf_clip_frac"] * tokens, tokens]),
        }
        return loss, den, report


ALGORITHMS: dict[str, type[Algorithm]] = {"grpo": GRPO, "ppo": PPO, "reinforce_pp": ReinforcePP}


def make_algorithm(cfg: DictConfig) -> Algorithm:
    name = cfg.rl.algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"rl.algorithm: unknown '{name}' (known: {', '.join(ALGORITHMS)}, ei)")
    return ALGORITHMS[name](cfg.rl, cfg.rollout.max_new_tokens)
