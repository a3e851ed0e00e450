"""One policy-gradient step (PPO, GRPO, REINFORCE++), as a few functions over the session:

    samples = session.sample(step)                    this DP rank's prompts -> rollouts -> scores
    exp = experience(session, samples)                padded tensors on the device (Experience)
    exp = score_tokens(session, pg, exp)              old / reference log-probs, critic values (no grad)
    adv = pg.algo.advantages(exp, scores, n)          the algorithm (algorithms.py)
    out = update(session, pg, exp + adv, step)        rl.ppo_epochs x shuffled mini-batches of
                                                      rl.train_batch_size: (policy step [+ critic step]) each

through the same megatron step machinery as pretraining (``training.step.train_step``), then per-format
metrics and samples. ``build_pg`` adds the models an algorithm needs to the session: a critic (PPO, a
``Trainable`` checkpointed with the policy) and a frozen reference (a KL term).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from megatron.core import parallel_state as ps
from omegaconf import DictConfig

from echo_megatron.config.rl import rl_lr_schedule, updates_per_rollout
from echo_megatron.distributed import collectives
from echo_megatron.eval.estimators import format_metrics
from echo_megatron.model.precision import width_multiple
from echo_megatron.rl.algorithms import Algorithm
from echo_megatron.rl.experience import Experience
from echo_megatron.rl.forward import collect, critic_values, policy_logits, token_entropy, token_logprobs
from echo_megatron.rl.models import build_critic_chunks, build_reference
from echo_megatron.rl.session import RLSession, Samples, Trainable, build_trainable
from echo_megatron.training.step import train_step


def total_rl_steps(cfg: DictConfig, num_prompts: int) -> int:
    """rl.steps, capped by rl.epochs passes over the prompt set."""
    by_epochs = int(cfg.rl.epochs * num_prompts // cfg.rl.num_rollout_samples)
    return max(1, min(cfg.rl.steps, by_epochs)) if cfg.rl.epochs else cfg.rl.steps


@dataclass
class PolicyGradient:
    algo: Algorithm
    critic: Trainable | None  # PPO's value model, trained alongside the policy
    reference: torch.nn.Module | None  # the frozen base, for the KL term


def build_pg(session: RLSession, algo: Algorithm) -> tuple[PolicyGradient, int]:
    """The algorithm's models around the session's policy, restored; returns them and the step to go on from."""
    cfg = session.cfg
    critic = None
    if algo.needs_critic:
        chunks = build_critic_chunks(cfg, session.vocab_size, session.device)
        total = session.steps * updates_per_rollout(cfg.rl, cfg.rollout.n)
        critic = build_trainable(cfg, chunks, rl_lr_schedule(cfg.rl, "critic", total))
    start = session.restore(critic)
    reference = None
    if algo.needs_reference:
        reference = build_reference(cfg, session.vocab_size, session.device, session.base())
    return PolicyGradient(algo, critic, reference), start


def experience(session: RLSession, samples: Samples) -> Experience:
    """The rollouts as padded tensors on the session's device (width padded for FP8 GEMMs)."""
    exp = Experience.from_rollouts(samples.rollouts, session.tok.pad)
    return exp.pad_to(width_multiple(session.cfg), session.tok.pad).to(session.device)


def score_tokens(session: RLSession, pg: PolicyGradient, exp: Experience) -> Experience:
    """``exp`` with the policy's (and the reference's) log-probs and the critic's values, 0 off the mask."""
    temp = session.cfg.rollout.temperature
    mbs = exp.micro_batches(session.cfg.rl.micro_batch_size)

    def logp_of(model, mb: Experience) -> torch.Tensor:
        return token_logprobs(policy_logits(model, mb), mb.labels, temp)

    old_logp = collect(session.policy.chunks[0], mbs, logp_of) * exp.mask
    ref_logp = collect(pg.reference, mbs, logp_of) * exp.mask if pg.reference is not None else None
    values = collect(pg.critic.chunks[0], mbs, critic_values) * exp.mask if pg.critic is not None else None
    return exp.replace(old_logp=old_logp, ref_logp=ref_logp, old_values=values)


def local_train_batch(train_batch_size: int | None) -> int | None:
    """This DP rank's rows per optimizer step: ``rl.train_batch_size`` counts samples over all DP ranks."""
    if train_batch_size is None:
        return None
    dp = ps.get_data_parallel_world_size()
    if train_batch_size % dp:
        raise ValueError(
            f"rl.train_batch_size ({train_batch_size}) must divide by the data-parallel size ({dp})"
        )
    return train_batch_size // dp


def update(session: RLSession, pg: PolicyGradient, exp: Experience, step: int) -> dict[str, float]:
    """``rl.ppo_epochs`` passes over the rollout ``exp``, each cut into optimizer steps of ``rl.train_batch_size``
    samples (reshuffled every pass, seeded by ``rl.seed`` and the step; null: the whole rollout, in order, in one
    step): an update of the policy (and of the critic) each. ``exp`` keeps the log-probs and values of the
    rollout, so from the second update on the ratio leaves 1 and the clip acts. Returns the mean of each
    statistic over the updates and their number (``updates``)."""
    cfg = session.cfg
    temp = cfg.rollout.temperature

    def policy_loss(mb: Experience, logits: torch.Tensor) -> tuple:
        logp = token_logprobs(logits, mb.labels, temp)
        ent = token_entropy(logits, temp)
        if not cfg.rl.entropy_bonus:
            ent = ent.detach()
        return pg.algo.policy_loss(mb, logp, ent)

    size = local_train_batch(cfg.rl.train_batch_size)
    shuffle = torch.Generator().manual_seed(cfg.rl.seed * 1_000_003 + step)  # CPU: the same on every device
    seq = cfg.model.seq_length
    p, c = session.policy, pg.critic
    rows: list[dict[str, float]] = []
    for _ in range(cfg.rl.ppo_epochs):
        for mbs in exp.mini_batches(size, cfg.rl.micro_batch_size, shuffle):
            out = train_step(p.chunks, p.optimizer, p.scheduler, mbs, policy_loss, seq, policy_logits)
            if c is not None:
                crit = train_step(
                    c.chunks, c.optimizer, c.scheduler, mbs, pg.algo.value_loss, seq, critic_values
                )
                out.update({k: v for k, v in crit.items() if k in ("value_loss", "vf_clip_frac")})
                out["critic_grad_norm"] = crit["grad_norm"]
                out["critic_lr"] = crit["lr"]
            for k in ("loss", "skipped"):
                out.pop(k, None)
            rows.append(out)
    means = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    means["updates"] = float(len(rows))
    return means


def rollout_metrics(session: RLSession, step: int, samples: Samples, exp: Experience) -> dict[str, float]:
    """Reward, accuracy, length and error counts over all DP ranks, per-format shares, advantage moments;
    writes the samples every ``rl.sample_interval`` steps (and at step 1)."""
    adv = exp.advantages[exp.mask > 0]
    local = [
        (r.reward, bool(r.correct), r.format, len(ro.response_ids), r.error)
        for r, ro in zip(samples.results, samples.rollouts)
    ]
    rows = collectives.dp_all_gather(local)
    out = {
        "reward": sum(x[0] for x in rows) / len(rows),
        "accuracy": sum(x[1] for x in rows) / len(rows),
        "response_len": sum(x[3] for x in rows) / len(rows),
        "errors": float(sum(1 for x in rows if x[4] and x[4] != "no_answer")),
        "adv_mean": float(adv.mean()) if adv.numel() else 0.0,
        "adv_std": float(adv.std()) if adv.numel() > 1 else 0.0,
    }
    out.update(format_metrics([x[2] for x in rows], [x[1] for x in rows]))
    interval = session.cfg.rl.sample_interval
    if interval and (step % interval == 0 or step == 1):
        session.write_samples(step, samples)
    return out


def pg_step(session: RLSession, pg: PolicyGradient, step: int) -> dict[str, float]:
    """One RL step; returns its metrics."""
    samples = session.sample(step)
    t0 = time.perf_counter()
    scores = torch.tensor([r.reward for r in samples.results], dtype=torch.float32, device=session.device)
    exp = score_tokens(session, pg, experience(session, samples))
    adv = pg.algo.advantages(exp, scores, samples.n)
    exp = exp.replace(advantages=adv.advantages, returns=adv.returns)
    out = update(session, pg, exp, step)
    if not all(v == v for v in out.values()):  # NaN anywhere: stop before another update
        raise FloatingPointError(f"RL step {step}: non-finite training statistics {out}")
    out.update(rollout_metrics(session, step, samples, exp))
    out.update(
        {
            "time/generate": samples.generate_s,
            "time/score": samples.score_s,
            "time/train": time.perf_counter() - t0,
            "tokens_per_s": float(exp.mask.sum()) / max(samples.generate_s, 1e-9),
            "epoch": session.sampler.epoch_of(step),
        }
    )
    return out
