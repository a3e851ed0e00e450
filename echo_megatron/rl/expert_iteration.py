"""Expert Iteration: rounds of best-of-n sampling, correct-only filtering, dedup, and SFT.

Round r: sample ``rl.ei_samples`` solutions for each of ``rl.num_rollout_samples`` training questions from the
current policy at ``rl.ei_temperature`` / ``rl.ei_top_p``; keep the verified-correct ones, deduplicated
(``ei.select_for_sft``), added to those of earlier rounds; then fine-tune on ``question + "\\n\\n" + solution``
with the loss on the solution (and EOD) only, for ``rl.ei_sft_epochs`` epochs at ``rl.ei_sft_lr`` with global
batch ``rl.ei_sft_batch``, starting from the base (``rl.ei_from_base``, as in the paper) or from the current
policy. The SFT step is the pretraining step machinery (``training.step.train_step`` with the LM loss).
A round's SFT set is written to ``samples/ei_round_R.jsonl``; a resumed run continues after the last saved
round with the same accumulated set.
"""

from __future__ import annotations

import json
import os
import time

import torch
from omegaconf import DictConfig

from echo_megatron.checkpoint import load_checkpoint, save_checkpoint
from echo_megatron.data.prompt import prompt_text
from echo_megatron.distributed import collectives
from echo_megatron.rl.ei import EISample, select_for_sft
from echo_megatron.rl.loop import RLTrainer, _say
from echo_megatron.training.setup import attach_schedule_hooks, build_optimizer, build_scheduler
from echo_megatron.training.step import lm_loss, train_step


def sft_rows(tok, samples: list[EISample], seq_length: int) -> list[dict[str, torch.Tensor]]:
    """One document per row from position 0, padded; loss on the solution and its EOD only."""
    rows = []
    for s in samples:
        q = tok.encode(prompt_text(s.question))
        a = tok.encode(s.solution) + [tok.eod]
        ids = (q + a)[: seq_length + 1]
        tokens = torch.full((seq_length + 1,), tok.pad, dtype=torch.long)
        tokens[: len(ids)] = torch.tensor(ids)
        loss_mask = torch.zeros(seq_length, dtype=torch.float32)
        loss_mask[max(len(q) - 1, 0) : len(ids) - 1] = 1.0
        rows.append(
            {
                "tokens": tokens[:-1],
                "labels": tokens[1:],
                "loss_mask": loss_mask,
                "position_ids": torch.arange(seq_length),
            }
        )
    return rows


class ExpertIteration(RLTrainer):
    def __init__(self, cfg: DictConfig) -> None:
        cfg.rl.steps = cfg.rl.ei_rounds  # a "step" of this run is one round
        cfg.rl.epochs = 0
        super().__init__(cfg)
        self.steps = cfg.rl.ei_rounds
        self.kept: list[EISample] = self._load_kept(self.start_step)

    def _kept_path(self, rnd: int) -> str:
        return os.path.join(self.run.samples, f"ei_round_{rnd}.jsonl")

    def _load_kept(self, rnd: int) -> list[EISample]:
        if rnd == 0:
            return []
        with open(self._kept_path(rnd), encoding="utf-8") as f:
            return [EISample(**json.loads(line)) for line in f if line.strip()]

    def sample_round(self, rnd: int) -> tuple[list[EISample], dict]:
        rl = self.cfg.rl
        prompt_idx = self.my_prompts(rnd)
        t0 = time.perf_counter()
        rollouts = self.rollout(
            rnd, prompt_idx, n=rl.ei_samples, temperature=rl.ei_temperature, top_p=rl.ei_top_p
        )
        t1 = time.perf_counter()
        answers = [self.prompts[i].answer for i in prompt_idx for _ in range(rl.ei_samples)]
        results = self.scorer([r.text or "" for r in rollouts], answers)
        rows = self._write_samples(rnd, prompt_idx, rollouts, results)  # gathered over DP: same on all ranks
        samples = [
            EISample(r["question"], r["completion"] or "", bool(r["correct"]), r["format"]) for r in rows
        ]
        return samples, {
            "time/generate": t1 - t0,
            "time/score": time.perf_counter() - t1,
            "response_len": sum(len(r.response_ids) for r in rollouts) / max(1, len(rollouts)),
        }

    def sft(self, rnd: int) -> dict[str, float]:
        rl, cfg = self.cfg.rl, self.cfg
        if rl.ei_from_base:
            load_checkpoint(self._base(), self.policy, load_rng=False)
        optimizer = build_optimizer(cfg, self.policy, lr=rl.ei_sft_lr)
        rows = sft_rows(self.tok, self.kept, cfg.model.seq_length)
        gbs = min(rl.ei_sft_batch, len(rows))
        steps_per_epoch = max(1, len(rows) // gbs)
        scheduler = build_scheduler(cfg, optimizer, rl.ei_sft_epochs * steps_per_epoch, lr=rl.ei_sft_lr)
        attach_schedule_hooks(self.policy, optimizer)
        dp, r = self.ps.get_data_parallel_world_size(), self.ps.get_data_parallel_rank()
        mbs_size = rl.micro_batch_size
        g = torch.Generator().manual_seed(rl.seed * 7919 + rnd)
        losses = []
        for _ in range(rl.ei_sft_epochs):
            order = torch.randperm(len(rows), generator=g).tolist()
            for s in range(steps_per_epoch):
                batch = [rows[i] for i in order[s * gbs : (s + 1) * gbs]]
                mine = batch[r * len(batch) // dp : (r + 1) * len(batch) // dp]
                mbs = [
                    {k: torch.stack([x[k] for x in mine[j : j + mbs_size]]) for k in mine[0]}
                    for j in range(0, len(mine), mbs_size)
                ]
                out = train_step(self.policy, optimizer, scheduler, mbs, lm_loss, cfg.model.seq_length)
                losses.append(out["loss"])
        self.optimizer = optimizer  # saved with the round's checkpoint
        self.scheduler = scheduler
        return {
            "sft_loss_first": losses[0],
            "sft_loss_last": losses[-1],
            "sft_steps": float(len(losses)),
            "sft_docs": float(len(rows)),
        }

    def train(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            for rnd in range(self.start_step + 1, self.steps + 1):
                samples, timing = self.sample_round(rnd)
                new, stats = select_for_sft(samples, self.cfg.rl.ei_max_per_question)
                self.kept = select_for_sft(self.kept + new, self.cfg.rl.ei_max_per_question)[0]
                out = {**stats.metrics(), **timing, "ei/total_kept": float(len(self.kept))}
                if not self.kept:
                    _say(self.rank, f"EI round {rnd}: no correct sample yet; nothing to fine-tune on")
                else:
                    t0 = time.perf_counter()
                    out.update(self.sft(rnd))
                    out["time/train"] = time.perf_counter() - t0
                if self.rank == 0:
                    with open(self._kept_path(rnd), "w", encoding="utf-8") as f:
                        for s in self.kept:
                            f.write(json.dumps(s.__dict__) + "\n")
                collectives.barrier()
                self.logger.log(rnd, "rl", out)
                save_checkpoint(
                    self.run.checkpoints,
                    rnd,
                    self.policy,
                    self.optimizer,
                    self.scheduler,
                    {"rl_step": rnd},
                    self.cfg.checkpoint.keep_last,
                )
                _say(
                    self.rank,
                    f"EI round {rnd}/{self.steps}: accuracy {out['accuracy']:.3f}, "
                    f"kept {int(out['ei/total_kept'])} solutions",
                )
        finally:
            self.scorer.close()
            self.logger.close()
        out["rank"] = float(self.rank)
        return out


def expert_iteration(cfg: DictConfig) -> dict[str, float]:
    return ExpertIteration(cfg).train()
