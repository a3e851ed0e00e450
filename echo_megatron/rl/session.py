"""The RL session: what every RL algorithm works with, built once from a read-only config.

``build_session(cfg, num_steps)`` makes, in this order (the order fixes the random initialisation):
process groups -> tokenizer -> prompt set and its resumable sampler -> the policy (megatron DDP chunks with
optimizer and LR schedule: a ``Trainable``) -> the rollout backend on the policy's own weights -> the scorer
-> the metrics logger. The policy-gradient loop (pg.py) then builds a critic and a reference; Expert
Iteration (ei.py) gives the policy a new optimizer every round. Both go through the same ``sample``
(this DP rank's prompts -> rollouts -> scores), ``restore`` (this run's latest checkpoint, else the base)
and ``save``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from megatron.core import parallel_state as ps
from omegaconf import DictConfig

from echo_megatron.checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, save_checkpoint
from echo_megatron.config.rl import LRSchedule, rl_lr_schedule, updates_per_rollout
from echo_megatron.data.prompt import prompt_text
from echo_megatron.data.tokenizer import load_tokenizer
from echo_megatron.distributed import collectives
from echo_megatron.distributed.init import initialize
from echo_megatron.model.precision import bf16_generation
from echo_megatron.model.vocab import resolve_vocab
from echo_megatron.rewards import SandboxPool, ScoreResult, score
from echo_megatron.rl.base import base_checkpoint
from echo_megatron.rl.prompts import Prompt, PromptSampler, load_prompts
from echo_megatron.rollout.backend import Rollout, make_backend
from echo_megatron.rundir import RunDir
from echo_megatron.training.loop import _say, save_config
from echo_megatron.training.metrics import MetricsLogger
from echo_megatron.training.setup import (
    attach_schedule_hooks,
    build_model_chunks,
    build_optimizer,
    param_scheduler,
)

_SCORE_FIELDS = ("format", "extracted", "correct", "reward", "error")  # of a ScoreResult, in samples files


def check_rl_layout(cfg: DictConfig) -> None:
    if cfg.parallel.pp != 1 or cfg.parallel.vpp:
        raise ValueError(
            "RL generates with the training weights in place: use parallel.pp=1 (TP and DP work)"
        )


class Scorer:
    """Scores on tensor-parallel rank 0 (one sandbox pool per model replica) and broadcasts to the TP group."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg.rewards
        self.classifier = str(cfg.formats.classifier)
        self.pool = SandboxPool.from_config(cfg.rewards) if ps.get_tensor_model_parallel_rank() == 0 else None

    def __call__(
        self, texts: list[str], answers: list[str], prompts: list[str] | None = None, purpose: str = "reward"
    ) -> list[ScoreResult]:
        """One score per text, the same on every rank of the TP group. ``prompts``: the prompt text of each
        (the paper verifier's RL reward reads prompt + completion); ``purpose``: ``reward`` or ``ei``."""
        mine = None
        if self.pool is not None:
            mine = score(
                texts, answers, self.cfg.task, self.cfg, self.pool, prompts, purpose, self.classifier
            )
        return collectives.tp_broadcast(mine)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


@dataclass
class Trainable:
    """Model chunks (megatron DDP) with their optimizer and LR schedule: what a checkpoint holds."""

    chunks: list
    optimizer: Any
    scheduler: Any


def build_trainable(cfg: DictConfig, chunks: list, schedule: LRSchedule) -> Trainable:
    """``chunks`` under a fresh optimizer whose LR follows ``schedule`` (config.rl.rl_lr_schedule: the
    ``rl.lr_*`` keys, not pretraining's ``schedule:``), one scheduler step per optimizer step."""
    optimizer = build_optimizer(cfg, chunks, lr=schedule.peak, min_lr=schedule.floor)
    s = schedule
    scheduler = param_scheduler(
        optimizer, s.peak, s.floor, s.warmup_steps, s.total_steps, s.decay_style, cfg.optimizer.weight_decay
    )
    attach_schedule_hooks(chunks, optimizer)
    return Trainable(chunks, optimizer, scheduler)


@dataclass
class Samples:
    """One step's generations on this DP rank: ``n`` rollouts per prompt, in prompt order, with their scores."""

    prompt_idx: list[int]
    rollouts: list[Rollout]
    results: list[ScoreResult]  # one per rollout
    generate_s: float
    score_s: float

    @property
    def n(self) -> int:
        return len(self.rollouts) // max(1, len(self.prompt_idx))


@dataclass
class RLSession:
    cfg: DictConfig
    device: torch.device
    rank: int
    tok: Any
    vocab_size: int
    run: RunDir
    prompts: list[Prompt]
    sampler: PromptSampler
    steps: int  # the run's length (steps, or EI rounds): ends the loop
    policy: Trainable
    backend: Any  # rollout.backend.RolloutBackend on policy.chunks[0]
    scorer: Scorer
    logger: MetricsLogger

    # -- checkpoints -----------------------------------------------------------------------------------------
    def base(self) -> str:
        return base_checkpoint(self.cfg)

    def restore(self, critic: Trainable | None = None) -> int:
        """This run's latest checkpoint (policy, and critic) if resuming, else the base; the step to go on from."""
        cfg = self.cfg
        ckpt = latest_checkpoint(self.run.checkpoints) if cfg.checkpoint.resume else None
        p = self.policy
        if ckpt:
            common = load_checkpoint(
                ckpt, p.chunks, p.optimizer, p.scheduler, load_rng=cfg.checkpoint.load_rng
            )
            step = common["iteration"]
            if critic is not None:
                path = checkpoint_dir(self.run.critic_checkpoints, step)
                load_checkpoint(path, critic.chunks, critic.optimizer, critic.scheduler, load_rng=False)
            _say(self.rank, f"resumed RL from {ckpt} at step {step}")
            return step
        base = self.base()
        load_checkpoint(base, p.chunks, p.optimizer, load_rng=False, load_optimizer_state=False)
        if critic is not None:  # the critic's body starts from the base (its value head is new)
            body = [critic.chunks[0].module.body]
            load_checkpoint(base, body, critic.optimizer, load_rng=False, load_optimizer_state=False)
        _say(self.rank, f"RL ({cfg.rl.algorithm}) from base {base}: {self.steps} steps")
        return 0

    def save(self, step: int, critic: Trainable | None = None) -> None:
        keep = self.cfg.checkpoint.keep_last
        if critic is not None:  # written first: `latest` (policy) names only complete steps
            c, root = critic, self.run.critic_checkpoints
            save_checkpoint(root, step, c.chunks, c.optimizer, c.scheduler, {}, keep_last=max(2, keep))
        p = self.policy
        save_checkpoint(
            self.run.checkpoints, step, p.chunks, p.optimizer, p.scheduler, {"rl_step": step}, keep
        )

    # -- generation ------------------------------------------------------------------------------------------
    def my_prompts(self, step: int) -> list[int]:
        idx = self.sampler.indices(step - 1)
        dp, r = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        per = len(idx) // dp
        return idx[r * per : (r + 1) * per]

    def rollout(self, step: int, prompt_idx: list[int], **overrides: Any) -> list[Rollout]:
        """``rollout.n`` samples for each prompt (``overrides`` replace sampling parameters, e.g. for EI)."""
        c = self.cfg.rollout
        template = self.cfg.rl.prompt_template
        ids = [self.tok.encode(prompt_text(self.prompts[i].question, template)) for i in prompt_idx]
        params = dict(
            n=c.n,
            max_new_tokens=c.max_new_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            stop=list(c.stop),
            seed=c.seed * 1_000_003 + step * 7919 + ps.get_data_parallel_rank(),
        )
        params.update(overrides)
        with bf16_generation():  # FP8 runs train in FP8 and generate in bf16 on the same weights
            return self.backend.generate(ids, **params)

    def sample(self, step: int, purpose: str = "reward", **overrides: Any) -> Samples:
        """This DP rank's prompts of ``step`` -> rollouts -> scores (``purpose``: ``reward`` for RL, ``ei`` for
        Expert Iteration's correctness test; see rewards/paper.py)."""
        prompt_idx = self.my_prompts(step)
        t0 = time.perf_counter()
        rollouts = self.rollout(step, prompt_idx, **overrides)
        t1 = time.perf_counter()
        n = len(rollouts) // max(1, len(prompt_idx))
        answers = [self.prompts[i].answer for i in prompt_idx for _ in range(n)]
        prompts = [self.prompts[i].text for i in prompt_idx for _ in range(n)]
        results = self.scorer([r.text or "" for r in rollouts], answers, prompts, purpose)
        return Samples(prompt_idx, rollouts, results, t1 - t0, time.perf_counter() - t1)

    def write_samples(self, step: int, samples: Samples) -> list[dict]:
        """Generations with their scores, gathered over DP (the same list on every rank); rank 0 writes
        them to samples/step_N.jsonl."""
        n = samples.n
        rows = []
        for k, (ro, res) in enumerate(zip(samples.rollouts, samples.results)):
            p = self.prompts[samples.prompt_idx[k // n]]
            rows.append(
                {
                    "step": step,
                    "prompt_id": p.id,
                    "question": p.question,
                    "answer": p.answer,
                    "completion": ro.text,
                    "finish_reason": ro.finish_reason,
                    **{key: getattr(res, key) for key in _SCORE_FIELDS},
                }
            )
        rows = collectives.dp_all_gather(rows)
        if self.rank == 0:
            path = self.run.samples_file(step)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
        return rows

    def close(self) -> None:
        self.scorer.close()
        self.logger.close()


def build_session(cfg: DictConfig, num_steps: Callable[[int], int]) -> RLSession:
    """Everything but the algorithm's own models; ``num_steps(number of prompts)`` is the run's length.

    The policy is built, not loaded: ``restore`` loads it once the caller has built what it checkpoints
    alongside (the critic).
    """
    check_rl_layout(cfg)
    _, device = initialize(cfg)
    rank = collectives.rank()
    tok = load_tokenizer(cfg.data.tokenizer)
    resolved = resolve_vocab(cfg, tokenizer=tok)  # the tokenizer's vocabulary; config.yaml records it
    vocab = resolved.size
    save_config(cfg, cfg.run_dir, resolved)
    prompts = load_prompts(cfg.rl.prompts)
    steps = num_steps(len(prompts))
    sampler = PromptSampler(len(prompts), cfg.rl.num_rollout_samples, cfg.rl.seed)
    dp = ps.get_data_parallel_world_size()
    if cfg.rl.num_rollout_samples % dp:
        raise ValueError(f"rl.num_rollout_samples ({cfg.rl.num_rollout_samples}) must divide by dp ({dp})")
    # EI replaces this optimizer every round (ei.sft); its schedule here only sizes what a checkpoint restores
    if cfg.rl.algorithm == "ei":
        schedule = rl_lr_schedule(cfg.rl, "ei_sft", steps)
    else:
        schedule = rl_lr_schedule(cfg.rl, "actor", steps * updates_per_rollout(cfg.rl, cfg.rollout.n))
    policy = build_trainable(cfg, build_model_chunks(cfg, vocab, device), schedule)
    backend = make_backend(
        cfg.rollout.backend,
        policy.chunks[0],
        eod_id=tok.eod,
        pad_id=tok.pad,
        max_seq_len=cfg.model.seq_length,
        vocab_size=vocab,
        decode=tok.decode,
        max_batch=cfg.rollout.batch_size,
    )
    return RLSession(
        cfg=cfg,
        device=device,
        rank=rank,
        tok=tok,
        vocab_size=vocab,
        run=RunDir(cfg.run_dir),
        prompts=prompts,
        sampler=sampler,
        steps=steps,
        policy=policy,
        backend=backend,
        scorer=Scorer(cfg),
        logger=MetricsLogger(cfg, cfg.run_dir, rank),
    )
