"""Verifiable rewards: format classifier, answer extraction, equivalence, verifiers, the code sandbox and ``score``.

Public API (used by RL and eval):
    score(completions, references, task, cfg=None, pool=None) -> list[ScoreResult]
    classify_format(text) -> "code" | "code_interp" | "nl" | "other" | "empty"
    SandboxPool(policy) / SandboxPool.from_config(cfg.rewards): pre-forked sandbox workers, a context manager
Extension points: ``VERIFIERS`` (how answers are found and judged), ``REWARDS`` (correctness -> reward),
``runner.RUNNERS`` (what a sandboxed job does); ``SandboxPolicy`` holds every sandbox limit.
"""

from echo_megatron.rewards.formats import FORMATS, SOLUTION_FORMATS, classify_format
from echo_megatron.rewards.policy import SandboxPolicy
from echo_megatron.rewards.protocol import ERROR_KINDS, Job, Reply
from echo_megatron.rewards.sandbox import SandboxError, SandboxPool
from echo_megatron.rewards.score import REWARDS, TASKS, ScoreResult, score
from echo_megatron.rewards.verifiers import VERIFIERS, Item, Verifier

__all__ = [
    "ERROR_KINDS",
    "FORMATS",
    "REWARDS",
    "SOLUTION_FORMATS",
    "TASKS",
    "VERIFIERS",
    "Item",
    "Job",
    "Reply",
    "SandboxError",
    "SandboxPolicy",
    "SandboxPool",
    "ScoreResult",
    "Verifier",
    "classify_format",
    "score",
]
