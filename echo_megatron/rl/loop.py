"""The RL loop shared by PPO, GRPO and REINFORCE++ (Expert Iteration: expert_iteration.py).

Each step: this DP rank's prompts -> rollout on the policy's own weights (KV-cache sampler) -> score
(format, answer, reward; sandboxed code) -> old / reference log-probs and critic values -> advantages
(the algorithm) -> clipped-surrogate policy update and, for PPO, a clipped value update, through the same
megatron step machinery as pretraining -> per-format metrics, samples, checkpoints.
Resume is exact: policy, critic, optimizers, schedulers, RNG and the prompt position (= the step) come
back from ``RUN_DIR/checkpoints`` (critic: ``checkpoints/critic``).
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from echo_megatron.checkpoint import (
    checkpoint_dir,
    find_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from echo_megatron.distributed import collectives
from echo_megatron.faults import maybe_fail
from echo_megatron.model.precision import bf16_generation, pad_width, width_multiple
from echo_megatron.rl.algorithms import Algorithm, make_algorithm
from echo_megatron.rl.experience import build_experience, split_rows
from echo_megatron.rl.forward import collect, policy_logits, token_entropy, token_logprobs
from echo_megatron.rl.prompts import PromptSampler, load_prompts
from echo_megatron.rundir import RunDir
from echo_megatron.training.loop import StopSignal, _say, save_config
from echo_megatron.training.metrics import MetricsLogger
from echo_megatron.training.progress import Progress
from echo_megatron.training.setup import (
    attach_schedule_hooks,
    build_model_chunks,
    build_optimizer,
    build_scheduler,
)
from echo_megatron.training.step import to_device, train_step


def check_rl_layout(cfg: DictConfig) -> None:
    if cfg.parallel.pp != 1 or cfg.parallel.vpp:
        raise ValueError(
            "RL generates with the training weights in place: use parallel.pp=1 (TP and DP work)"
        )


def total_rl_steps(cfg: DictConfig, num_prompts: int) -> int:
    """rl.steps, capped by rl.epochs passes over the prompt set."""
    by_epochs = int(cfg.rl.epochs * num_prompts // cfg.rl.num_rollout_samples)
    return max(1, min(cfg.rl.steps, by_epochs)) if cfg.rl.epochs else cfg.rl.steps


class Scorer:
    """Scores on tensor-parallel rank 0 (one sandbox pool per model replica) and broadcasts to the TP group."""

    def __init__(self, cfg: DictConfig) -> None:
        from megatron.core import parallel_state as ps

        from echo_megatron.rewards import SandboxPool

        self.cfg = cfg.rewards
        self.ps = ps
        self.pool = SandboxPool.from_config(cfg.rewards) if ps.get_tensor_model_parallel_rank() == 0 else None

    def __call__(self, texts: list[str], answers: list[str]) -> list[dict]:
        from echo_megatron.rewards import score

        mine = None
        if self.pool is not None:
            mine = [r.to_dict() for r in score(texts, answers, self.cfg.task, self.cfg, self.pool)]
        return collectives.tp_broadcast(mine)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _cat_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().float() for p in parts], dim=0)


class RLTrainer:
    def __init__(self, cfg: DictConfig) -> None:
        from megatron.core import parallel_state as ps

        from echo_megatron.data.tokenizer import load_tokenizer
        from echo_megatron.distributed.init import initialize
        from echo_megatron.rollout.backend import make_backend

        check_rl_layout(cfg)
        self.cfg = cfg
        self.env, self.device = initialize(cfg)
        self.rank = dist.get_rank()
        self.ps = ps
        self.tok = load_tokenizer(cfg.data.tokenizer)
        cfg.model.vocab_size = vocab = self.tok.vocab_size
        save_config(cfg, cfg.run_dir)
        self.run = RunDir(cfg.run_dir)
        self.algo: Algorithm | None = make_algorithm(cfg) if cfg.rl.algorithm != "ei" else None
        self.prompts = load_prompts(cfg.rl.prompts)
        self.steps = total_rl_steps(cfg, len(self.prompts))
        self.sampler = PromptSampler(len(self.prompts), cfg.rl.num_rollout_samples, cfg.rl.seed)
        dp = ps.get_data_parallel_world_size()
        if cfg.rl.num_rollout_samples % dp:
            raise ValueError(
                f"rl.num_rollout_samples ({cfg.rl.num_rollout_samples}) must divide by dp ({dp})"
            )

        self.policy = build_model_chunks(cfg, vocab, self.device)
        self.optimizer = build_optimizer(cfg, self.policy, lr=cfg.rl.actor_lr)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps, lr=cfg.rl.actor_lr)
        attach_schedule_hooks(self.policy, self.optimizer)
        self.critic = self.critic_opt = self.critic_sched = None
        if self.algo is not None and self.algo.needs_critic:
            from echo_megatron.rl.models import build_critic_chunks

            self.critic = build_critic_chunks(cfg, vocab, self.device)
            self.critic_opt = build_optimizer(cfg, self.critic, lr=cfg.rl.critic_lr)
            self.critic_sched = build_scheduler(cfg, self.critic_opt, self.steps, lr=cfg.rl.critic_lr)
            attach_schedule_hooks(self.critic, self.critic_opt)
        self.start_step = self._restore()
        self.ref = None
        if self.algo is not None and self.algo.needs_reference:
            from echo_megatron.rl.models import build_reference

            self.ref = build_reference(cfg, vocab, self.device, self._base())
        self.backend = make_backend(
            cfg.rollout.backend,
            self.policy[0],
            eod_id=self.tok.eod,
            pad_id=self.tok.pad,
            max_seq_len=cfg.model.seq_length,
            vocab_size=vocab,
            decode=self.tok.decode,
            max_batch=cfg.rollout.batch_size,
        )
        self.scorer = Scorer(cfg)
        self.logger = MetricsLogger(cfg, cfg.run_dir, self.rank)

    # -- state ---------------------------------------------------------------------------------------------------
    def _base(self) -> str:
        if not self.cfg.rl.base:
            raise ValueError(
                "rl.base: the pretrained base checkpoint (a run dir or checkpoint dir) is required"
            )
        return find_checkpoint(self.cfg.rl.base)

    def _restore(self) -> int:
        ckpt = latest_checkpoint(self.run.checkpoints) if self.cfg.checkpoint.resume else None
        if ckpt:
            common = load_checkpoint(
                ckpt, self.policy, self.optimizer, self.scheduler, load_rng=self.cfg.checkpoint.load_rng
            )
            step = common["iteration"]
            if self.critic is not None:
                path = checkpoint_dir(self.run.critic_checkpoints, step)
                load_checkpoint(path, self.critic, self.critic_opt, self.critic_sched, load_rng=False)
            _say(self.rank, f"resumed RL from {ckpt} at step {step}")
            return step
        base = self._base()
        load_checkpoint(base, self.policy, self.optimizer, load_rng=False, load_optimizer_state=False)
        if self.critic is not None:  # the critic's body starts from the base (its value head is new)
            body = [self.critic[0].module.body]
            load_checkpoint(base, body, self.critic_opt, load_rng=False, load_optimizer_state=False)
        _say(self.rank, f"RL ({self.cfg.rl.algorithm}) from base {base}: {self.steps} steps")
        return 0

    def _save(self, step: int) -> None:
        if self.critic is not None:  # written first: `latest` (policy) names only complete steps
            save_checkpoint(
                self.run.critic_checkpoints,
                step,
                self.critic,
                self.critic_opt,
                self.critic_sched,
                {},
                keep_last=max(2, self.cfg.checkpoint.keep_last),
            )
        save_checkpoint(
            self.run.checkpoints,
            step,
            self.policy,
            self.optimizer,
            self.scheduler,
            {"rl_step": step},
            self.cfg.checkpoint.keep_last,
        )

    # -- one step --------------------------------------------------------------------------------------------
    def my_prompts(self, step: int) -> list[int]:
        idx = self.sampler.indices(step - 1)
        dp, r = self.ps.get_data_parallel_world_size(), self.ps.get_data_parallel_rank()
        per = len(idx) // dp
        return idx[r * per : (r + 1) * per]

    def rollout(self, step: int, prompt_idx: list[int], **overrides):
        """``rollout.n`` samples for each prompt (``overrides`` replace sampling parameters, e.g. for EI)."""
        c = self.cfg.rollout
        ids = [self.tok.encode(self.prompts[i].text) for i in prompt_idx]
        params = dict(
            n=c.n,
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            stop=list(c.stop),
            seed=c.seed * 1_000_003 + step * 7919 + self.ps.get_data_parallel_rank(),
        )
        params.update(overrides)
        with bf16_generation():  # FP8 runs train in FP8 and generate in bf16 on the same weights
            return self.backend.generate(ids, **params)

    def step(self, step: int) -> dict[str, float]:
        cfg, c = self.cfg, self.cfg.rollout
        t0 = time.perf_counter()
        prompt_idx = self.my_prompts(step)
        rollouts = self.rollout(step, prompt_idx)
        t1 = time.perf_counter()
        texts = [r.text or "" for r in rollouts]
        answers = [self.prompts[i].answer for i in prompt_idx for _ in range(c.n)]
        results = self.scorer(texts, answers)
        t2 = time.perf_counter()
        scores = torch.tensor([r["reward"] for r in results], dtype=torch.float32, device=self.device)
        exp = pad_width(build_experience(rollouts, self.tok.pad), width_multiple(cfg), self.tok.pad)
        # log-probs, values and advantages are computed where the models are
        exp = to_device(exp, self.device)
        mbs = split_rows(exp, cfg.rl.micro_batch_size)
        temp = c.temperature

        def logp_of(model, mb):
            return token_logprobs(policy_logits(model, mb), mb["labels"], temp)

        exp["old_logp"] = _cat_rows(collect(self.policy[0], mbs, logp_of)) * exp["mask"]
        if self.ref is not None:
            exp["ref_logp"] = _cat_rows(collect(self.ref, mbs, logp_of)) * exp["mask"]
        if self.critic is not None:
            exp["old_values"] = (
                _cat_rows(collect(self.critic[0], mbs, lambda m, mb: m(mb["tokens"], mb["position_ids"])))
                * exp["mask"]
            )
        self.algo.advantages(exp, scores, c.n)

        def policy_loss(mb, logits):
            logp = token_logprobs(logits, mb["labels"], temp)
            ent = token_entropy(logits, temp)
            if not cfg.rl.entropy_bonus:
                ent = ent.detach()
            return self.algo.policy_loss(mb, logp, ent)

        out: dict[str, float] = {}
        for _ in range(cfg.rl.ppo_epochs):
            mbs = split_rows(exp, cfg.rl.micro_batch_size)
            out.update(
                train_step(
                    self.policy,
                    self.optimizer,
                    self.scheduler,
                    mbs,
                    policy_loss,
                    cfg.model.seq_length,
                    forward_fn=policy_logits,
                )
            )
            if self.critic is not None:
                crit = train_step(
                    self.critic,
                    self.critic_opt,
                    self.critic_sched,
                    mbs,
                    self.algo.value_loss,
                    cfg.model.seq_length,
                    forward_fn=lambda m, mb: m(mb["tokens"], mb["position_ids"]),
                )
                out.update({k: v for k, v in crit.items() if k in ("value_loss", "vf_clip_frac")})
                out["critic_grad_norm"] = crit["grad_norm"]
        t3 = time.perf_counter()
        for k in ("loss", "skipped"):
            out.pop(k, None)
        if not all(map(lambda v: v == v, out.values())):  # NaN anywhere: stop before another update
            raise FloatingPointError(f"RL step {step}: non-finite training statistics {out}")
        out.update(self._rollout_metrics(step, prompt_idx, rollouts, results, exp))
        gen_tokens = float(exp["mask"].sum())
        out.update(
            {
                "time/generate": t1 - t0,
                "time/score": t2 - t1,
                "time/train": t3 - t2,
                "tokens_per_s": gen_tokens / max(t1 - t0, 1e-9),
                "epoch": self.sampler.epoch_of(step),
            }
        )
        return out

    def _rollout_metrics(self, step: int, prompt_idx: list[int], rollouts, results: list[dict], exp) -> dict:
        from echo_megatron.eval.estimators import format_metrics

        mask = exp["mask"]
        adv = exp["advantages"][mask > 0]
        local = [
            (r["reward"], bool(r["correct"]), r["format"], len(ro.response_ids), r.get("error"))
            for r, ro in zip(results, rollouts)
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
        interval = self.cfg.rl.sample_interval
        if interval and (step % interval == 0 or step == 1):
            self._write_samples(step, prompt_idx, rollouts, results)
        return out

    def _write_samples(
        self, step: int, prompt_idx: list[int], rollouts, results: list[dict], path: str | None = None
    ) -> list[dict]:
        """Generations with their scores, gathered over DP; rank 0 writes them (default: samples/step_N)."""
        n = len(rollouts) // max(1, len(prompt_idx))
        rows = [
            {
                "step": step,
                "prompt_id": self.prompts[prompt_idx[k // n]].id,
                "question": self.prompts[prompt_idx[k // n]].question,
                "answer": self.prompts[prompt_idx[k // n]].answer,
                "completion": ro.text,
                "finish_reason": ro.finish_reason,
                **{key: res[key] for key in ("format", "extracted", "correct", "reward", "error")},
            }
            for k, (ro, res) in enumerate(zip(rollouts, results))
        ]
        rows = collectives.dp_all_gather(rows)
        if self.rank == 0:
            path = path or self.run.samples_file(step)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        return rows

    # -- loop ------------------------------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        stop = StopSignal()
        bar = Progress(
            self.steps,
            f"rl/{self.cfg.rl.algorithm}",
            initial=self.start_step,
            enabled=self.rank == 0 and self.cfg.logging.progress_bar,
            interval_s=self.cfg.logging.progress_interval_s,
        )
        out: dict[str, float] = {}
        try:
            for step in range(self.start_step + 1, self.steps + 1):
                out = self.step(step)
                self.logger.log(step, "rl", out)
                maybe_fail("kill_at_step", step)
                bar.update(1, acc=f"{out['accuracy']:.2f}", reward=f"{out['reward']:.2f}")
                want_stop = stop.any_rank(self.device)
                interval = self.cfg.checkpoint.save_interval
                if (interval and step % interval == 0) or step == self.steps or want_stop:
                    self._save(step)
                if want_stop:
                    _say(self.rank, f"stopping at RL step {step} (signal); checkpoint saved")
                    break
        finally:
            bar.close()
            self.scorer.close()
            self.logger.close()
        out["rank"] = float(self.rank)
        return out


def train_rl(cfg: DictConfig) -> dict[str, float]:
    if cfg.rl.algorithm == "ei":
        from echo_megatron.rl.expert_iteration import expert_iteration

        return expert_iteration(cfg)
    return RLTrainer(cfg).train()
