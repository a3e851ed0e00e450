"""Expert Iteration bookkeeping: from best-of-n samples to the SFT set of the next round (pure, no model).

One EI round (Anthony et al. 2017, "Thinking Fast and Slow with Deep Learning and Tree Search"; for LLM math,
e.g. Havrilla et al. 2024, "Teaching Large Language Models to Reason with Reinforcement Learning", arXiv
2403.04642): sample n solutions per training question, keep the correct ones,
remove duplicates per question, fine-tune on what is left. This module does the keep / dedup / count part:

    kept, stats = select_for_sft(samples, max_per_question=None)
    documents = sft_documents(kept)          # question + "\\n\\n" + solution, the pretraining document form

Duplicates are judged on ``normalize_solution`` text (whitespace and Unicode-compatibility differences ignored,
case kept); the first occurrence in input order is the one kept, so a fixed sampling order gives a fixed set.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from echo_megatron.data.prompt import document_text
from echo_megatron.rewards.formats import FORMATS, OTHER

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


def sft_documents(samples: Iterable[EISample]) -> list[str]:
    """Training documents ``question + "\\n\\n" + solution`` (the solution as generated, not normalised)."""
    return [document_text(s.question, s.solution) for s in samples]
