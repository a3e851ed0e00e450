"""Expert Iteration: rounds of best-of-n sampling, correct-only filtering, dedup, and SFT.

One EI round (Anthony et al. 2017, "Thinking Fast and Slow with Deep Learning and Tree Search"; for LLM math,
e.g. Havrilla et al. 2024, "Teaching Large Language Models to Reason with Reinforcement Learning", arXiv
2403.04642): sample n solutions per training question, keep the correct ones, remove duplicates per question,
fine-tune on what is left.

The bookkeeping is pure (no model): from best-of-n samples to the SFT set of the next round,

    kept, stats = select_for_sft(samples, max_per_question=None)
    documents = sft_documents(kept)          # question + "\\n\\n" + solution, the pretraining document form

Duplicates are judged on ``normalize_solution`` text (whitespace and Unicode-compatibility differences ignored,
case kept); the first occurrence in input order is the one kept, so a fixed sampling order gives a fixed set.

``ei_round`` runs round r on the RL session: sample ``rl.ei_samples`` solutions for each of
``rl.num_rollout_samples`` training questions from the current policy at ``rl.ei_temperature`` /
``rl.ei_top_p``, up to ``rl.ei_max_new_tokens`` tokens; keep the verified-correct, deduplicated ones, added to
those of earlier rounds (``rl.ei_accumulate``) or alone (the paper); then fine-tune on the prompt
(``rl.prompt_template``) + solution with the loss on the solution (and EOD) only, for ``rl.ei_sft_epochs``
epochs at ``rl.ei_sft_lr`` (``rl_lr_schedule(rl, "ei_sft", the round's SFT steps)``: warmup, decay to the
floor) with global batch ``rl.ei_sft_batch``, starting from the base (``rl.ei_from_base``, as in the paper)
or from the current policy. The SFT step is the pretraining step machinery
(``training.step.train_step`` with the LM loss). A round's SFT set is written to ``samples/ei_round_R.jsonl``;
a resumed run continues after the last saved round with the same accumulated set.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from megatron.core import parallel_state as ps

from echo_megatron.checkpoint import load_checkpoint
from echo_megatron.config.rl import rl_lr_schedule
from echo_megatron.data.prompt import document_text, prompt_text
from echo_megatron.distributed import collectives
from echo_megatron.rewards.formats import FORMATS, OTHER
from echo_megatron.rl.session import RLSession, build_trainable
from echo_megatron.rundir import RunDir
from echo_megatron.training.loop import _say
from echo_megatron.training.step import lm_loss, train_step

_SPACES = re.compile(r"[ \t\f\v]+")


@dataclass(frozen=True)
class EISample:
    """One sampled solution to one question, already scored."""

    question: str
    solution: str
    correct: bool
    format: str = OTHER  # echo_megatron.rewards.formats label


def normalize_solution(text: str) -> str:
    """The dedup key of a solution: NFKC, newlines unified, runs of spaces/tabs -> one space, blank lines and
    outer whitespace dropped. Case and punctuation are kept (they can change an answer or a program)."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def keep_correct(samples: Iterable[EISample]) -> list[EISample]:
    """The samples whose answer was verified correct, in order."""
    return [s for s in samples if s.correct]


def dedup(samples: Iterable[EISample]) -> list[EISample]:
    """Drop every sample whose (question, normalised solution) was already seen; the first one stays."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for s in samples:
        key = (normalize_solution(s.question), normalize_solution(s.solution))
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return kept


def cap_per_question(samples: Iterable[EISample], max_per_question: int | None) -> list[EISample]:
    """Keep at most ``max_per_question`` samples of each question (the first ones); None keeps all."""
    if max_per_question is None:
        return list(samples)
    if max_per_question < 1:
        raise ValueError(f"rl.ei_max_per_question must be >= 1 or null, got {max_per_question}")
    counts: dict[str, int] = {}
    kept = []
    for s in samples:
        if counts.get(s.question, 0) < max_per_question:
            counts[s.question] = counts.get(s.question, 0) + 1
            kept.append(s)
    return kept


@dataclass
class EIRoundStats:
    """Counts of one best-of-n round. ``per_format[fmt]`` = {"samples", "correct", "kept"}."""

    num_questions: int = 0
    num_samples: int = 0
    num_correct: int = 0
    num_unique_correct: int = 0  # after dedup, before the per-question cap
    num_kept: int = 0
    num_solved: int = 0  # questions with at least one correct sample (pass@n numerator)
    per_format: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.num_correct / self.num_samples if self.num_samples else 0.0

    @property
    def coverage(self) -> float:
        """pass@n over the sampled questions: the share with at least one correct sample."""
        return self.num_solved / self.num_questions if self.num_questions else 0.0

    def metrics(self) -> dict[str, float]:
        """A metrics.jsonl row body: accuracy, share/<fmt> and acc/<fmt> of the samples, kept_share/<fmt> of
        the SFT set, and ei/* counts."""
        row: dict[str, float] = {
            "accuracy": self.accuracy,
            "ei/coverage": self.coverage,
            "ei/samples": float(self.num_samples),
            "ei/correct": float(self.num_correct),
            "ei/duplicates": float(self.num_correct - self.num_unique_correct),
            "ei/kept": float(self.num_kept),
        }
        for fmt in FORMATS:
            c = self.per_format.get(fmt, {"samples": 0, "correct": 0, "kept": 0})
            row[f"share/{fmt}"] = c["samples"] / self.num_samples if self.num_samples else 0.0
            row[f"acc/{fmt}"] = c["correct"] / c["samples"] if c["samples"] else 0.0
            row[f"kept_share/{fmt}"] = c["kept"] / self.num_kept if self.num_kept else 0.0
        return row


def select_for_sft(
    samples: Sequence[EISample], max_per_question: int | None = None
) -> tuple[list[EISample], EIRoundStats]:
    """Correct-only filter, dedup by normalised text, per-question cap; with the round's counts."""
    correct = keep_correct(samples)
    unique = dedup(correct)
    kept = cap_per_question(unique, max_per_question)
    stats = EIRoundStats(
        num_questions=len({s.question for s in samples}),
        num_samples=len(samples),
        num_correct=len(correct),
        num_unique_correct=len(unique),
        num_kept=len(kept),
        num_solved=len({s.question for s in correct}),
    )
    for group, key in ((samples, "samples"), (correct, "correct"), (kept, "kept")):
        for s in group:
            counts = stats.per_format.setdefault(s.format, {"samples": 0, "correct": 0, "kept": 0})
            counts[key] += 1
    return kept, stats


def sft_documents(samples: Iterable[EISample], template: str = "separator") -> list[str]:
    """Training documents: the prompt (``prompt_text(question, template)``) + the solution as generated (not
    normalised)."""
    return [document_text(s.question, s.solution, template) for s in samples]


# -- the round on the RL session ---------------------------------------------------------------------------------


def load_kept(run: RunDir, rnd: int) -> list[EISample]:
    """The SFT set saved after round ``rnd`` (none before round 1)."""
    if rnd == 0:
        return []
    with open(run.ei_round_file(rnd), encoding="utf-8") as f:
        return [EISample(**json.loads(line)) for line in f if line.strip()]


def save_kept(session: RLSession, rnd: int, kept: list[EISample]) -> None:
    """Rank 0 writes the SFT set of round ``rnd``; every rank waits for it."""
    if session.rank == 0:
        with open(session.run.ei_round_file(rnd), "w", encoding="utf-8") as f:
            for s in kept:
                f.write(json.dumps(asdict(s)) + "\n")
    collectives.barrier()


def sft_rows(
    tok, samples: list[EISample], seq_length: int, template: str = "separator"
) -> list[dict[str, torch.Tensor]]:
    """One document per row from position 0 (the prompt under ``template``, then the solution), padded; loss
    on the solution and its EOD only."""
    rows = []
    for s in samples:
        q = tok.encode(prompt_text(s.question, template))
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


def sample_round(session: RLSession, rnd: int) -> tuple[list[EISample], dict[str, float]]:
    """Best-of-n samples of this round's questions, scored and gathered over DP (the same on every rank)."""
    rl = session.cfg.rl
    max_new = rl.ei_max_new_tokens or session.cfg.rollout.max_new_tokens
    samples = session.sample(
        rnd,
        purpose="ei",
        n=rl.ei_samples,
        temperature=rl.ei_temperature,
        top_p=rl.ei_top_p,
        max_new_tokens=max_new,
    )
    t0 = time.perf_counter()
    rows = session.write_samples(rnd, samples)
    solutions = [
        EISample(r["question"], r["completion"] or "", bool(r["correct"]), r["format"]) for r in rows
    ]
    lengths = [len(r.response_ids) for r in samples.rollouts]
    return solutions, {
        "time/generate": samples.generate_s,
        "time/score": samples.score_s + time.perf_counter() - t0,
        "response_len": sum(lengths) / max(1, len(lengths)),
    }


def sft(session: RLSession, kept: list[EISample], rnd: int) -> dict[str, float]:
    """Fine-tune the policy on ``kept`` under a new optimizer and schedule (saved with the round)."""
    cfg, rl = session.cfg, session.cfg.rl
    chunks = session.policy.chunks
    if rl.ei_from_base:
        load_checkpoint(session.base(), chunks, load_rng=False)
    rows = sft_rows(session.tok, kept, cfg.model.seq_length, rl.prompt_template)
    gbs = min(rl.ei_sft_batch, len(rows))
    steps_per_epoch = max(1, len(rows) // gbs)
    policy = build_trainable(cfg, chunks, rl_lr_schedule(rl, "ei_sft", rl.ei_sft_epochs * steps_per_epoch))
    session.policy = policy
    dp, r = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    mbs_size = rl.micro_batch_size
    g = torch.Generator().manual_seed(rl.seed * 7919 + rnd)
    losses, lrs = [], []
    for _ in range(rl.ei_sft_epochs):
        order = torch.randperm(len(rows), generator=g).tolist()
        for s in range(steps_per_epoch):
            batch = [rows[i] for i in order[s * gbs : (s + 1) * gbs]]
            mine = batch[r * len(batch) // dp : (r + 1) * len(batch) // dp]
            mbs = [
                {k: torch.stack([x[k] for x in mine[j : j + mbs_size]]) for k in mine[0]}
                for j in range(0, len(mine), mbs_size)
            ]
            out = train_step(chunks, policy.optimizer, policy.scheduler, mbs, lm_loss, cfg.model.seq_length)
            losses.append(out["loss"])
            lrs.append(out["lr"])
    return {
        "sft_loss_first": losses[0],
        "sft_loss_last": losses[-1],
        "sft_steps": float(len(losses)),
        "lr": sum(lrs) / len(lrs),  # the mean over the round's SFT steps (rl_lr_schedule "ei_sft")
        "sft_lr_last": lrs[-1],
        "sft_docs": float(len(rows)),
    }


def ei_round(session: RLSession, kept: list[EISample], rnd: int) -> tuple[list[EISample], dict[str, float]]:
    """Round ``rnd``: sample, add the new correct solutions to ``kept``, fine-tune; the new set and metrics."""
    rl = session.cfg.rl
    samples, timing = sample_round(session, rnd)
    new, stats = select_for_sft(samples, rl.ei_max_per_question)
    kept = select_for_sft(kept + new, rl.ei_max_per_question)[0] if rl.ei_accumulate else new
    out = {**stats.metrics(), **timing, "ei/total_kept": float(len(kept))}
    if not kept:
        _say(session.rank, f"EI round {rnd}: no correct sample yet; nothing to fine-tune on")
    else:
        t0 = time.perf_counter()
        out.update(sft(session, kept, rnd))
        out["time/train"] = time.perf_counter() - t0
    save_kept(session, rnd, kept)
    _say(
        session.rank,
        f"EI round {rnd}/{session.steps}: accuracy {out['accuracy']:.3f}, kept {len(kept)} solutions",
    )
    return kept, out
