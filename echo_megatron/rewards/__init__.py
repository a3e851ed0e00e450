"""Verifiable rewards: format classifier, answer extraction, equivalence, the code sandbox and ``score``.

Public API (used by RL and eval):
    score(completions, references, task, cfg=None, pool=None) -> list[ScoreResult]
    classify_format(text) -> "code" | "code_interp" | "nl" | "other" | "empty"
    SandboxPool(...) / SandboxPool.from_config(cfg.rewards): pre-forked sandbox workers, a context manager
"""

from echo_megatron.rewards.formats import FORMATS, SOLUTION_FORMATS, classify_format
from echo_megatron.rewards.sandbox import SandboxError, SandboxPool
from echo_megatron.rewards.score import ERROR_KINDS, TASKS, ScoreResult, score

__all__ = [
    "ERROR_KINDS",
    "FORMATS",
    "SOLUTION_FORMATS",
    "TASKS",
    "SandboxError",
    "SandboxPool",
    "ScoreResult",
    "classify_format",
    "score",
]
