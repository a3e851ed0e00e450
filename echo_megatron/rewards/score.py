"""``score``: per completion, its format, extracted answer, correctness, reward, error kind and time.

    from echo_megatron.rewards import SandboxPool, score
    with SandboxPool.from_config(cfg.rewards) as pool:              # RL: one pool for the whole run
        results = score(completions, references, "gsm8k", cfg.rewards, pool)

Each completion becomes an ``Item`` that a ``Verifier`` (``verifiers.py``, chosen by ``rewards.verifier``) takes
through its steps: extraction (which may need a program run), then the comparison with the gold (which may need
math-verify). All programs of a batch run in parallel over the pool, then all math-verify comparisons that the
in-process rules could not settle. The reward of an item is a function of it, chosen by name from ``REWARDS``
(``rewards.reward``; ``binary``: ``correct_reward`` if correct, else ``wrong_reward``). Without a pool, a temporary
one is started for the call when it needs one (slow: pass a pool when scoring repeatedly).

Tasks: ``gsm8k``, ``testbed``, ``aime``, ``amc`` compare numbers; ``math`` compares LaTeX through math-verify.
References may be a bare answer, a GSM8K solution (``#### N``), a solution with ``\\boxed{}``, or a number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from echo_megatron.rewards.paper import Purpose
from echo_megatron.rewards.protocol import ERROR_KINDS, Job, Reply
from echo_megatron.rewards.sandbox import SandboxPool
from echo_megatron.rewards.verifiers import Item, Verifier, make_verifier, setting

__all__ = ["ERROR_KINDS", "REWARDS", "TASKS", "ScoreResult", "score"]

TASKS: dict[str, str] = {
    "gsm8k": "numeric",
    "testbed": "numeric",
    "aime": "numeric",
    "amc": "numeric",
    "math": "math",
}


def binary_reward(item: Item, cfg) -> float:
    """``correct_reward`` (1.0) for a correct answer, else ``wrong_reward`` (0.0)."""
    return float(
        setting(cfg, "correct_reward" if item.correct else "wrong_reward", 1.0 if item.correct else 0.0)
    )


REWARDS: dict[str, Callable[[Item, object], float]] = {"binary": binary_reward}


@dataclass
class ScoreResult:
    reward: float
    correct: bool
    format: str
    extracted: str | None  # the answer compared with the reference (a program's value or output for code)
    error: str | None  # None, or one of ERROR_KINDS
    elapsed: float  # seconds spent on this item (in-process work + its sandbox runs)
    detail: str = ""  # human-readable detail of the error

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, item: Item, reward: float) -> ScoreResult:
        detail = item.detail or (ERROR_KINDS.get(item.error, "") if item.error else "")
        return cls(reward, item.correct, item.format, item.answer, item.error, item.elapsed, detail)


def _text(obj: object) -> str:
    if obj is None:
        return ""
    return obj if isinstance(obj, str) else str(obj)


def _timed(item: Item, step: Callable, *args):
    t0 = time.perf_counter()
    try:
        return step(item, *args)
    finally:
        item.elapsed += time.perf_counter() - t0


class _Runner:
    """Runs jobs over the caller's pool, or over one started on first need (closed by ``close``)."""

    def __init__(self, cfg, pool: SandboxPool | None) -> None:
        self.cfg, self.pool, self.own = cfg, pool, None

    def run(self, pairs: list[tuple[Item, Job]]) -> list[tuple[Item, Reply]]:
        if not pairs:
            return []
        if self.pool is None:
            self.pool = self.own = SandboxPool.from_config(self.cfg)
        replies = self.pool.run([job for _, job in pairs])
        for (item, _), reply in zip(pairs, replies):
            item.elapsed += reply.elapsed
        return [(item, reply) for (item, _), reply in zip(pairs, replies)]

    def close(self) -> None:
        if self.own is not None:
            self.own.close()


def score(
    completions: list[str],
    references: list[str],
    task: str,
    cfg=None,
    pool: SandboxPool | None = None,
    prompts: list[str] | None = None,
    purpose: Purpose = "reward",
    classifier: str = "strict",
) -> list[ScoreResult]:
    """Score completions (solution text only) against references for ``task``; one result per completion.
    ``prompts`` (the prompt texts the model was given) are passed on to the verifier for those that read them;
    ``purpose`` (``reward`` for RL, ``eval``, ``ei`` for Expert Iteration's correctness) selects the paper
    verifier's call path; ``classifier`` is ``formats.classifier`` (``strict`` | ``paper``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    if prompts is not None and len(prompts) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(prompts)} prompts")
    reward_name = str(setting(cfg, "reward", "binary"))
    if reward_name not in REWARDS:
        raise ValueError(f"unknown reward {reward_name!r}; known: {sorted(REWARDS)}")
    verifier: Verifier = make_verifier(cfg, purpose, classifier)
    questions = prompts if prompts is not None else [None] * len(completions)
    items = [verifier.item(_text(c), r, q) for c, r, q in zip(completions, references, questions)]
    runner = _Runner(cfg, pool)
    try:
        programs = [(it, job) for it in items if (job := _timed(it, verifier.extract, task)) is not None]
        while programs:  # a reply may ask for one more program (the paper: TinyGSM after a failed <llm-code>)
            programs = [
                (item, job)
                for item, reply in runner.run(programs)
                if (job := _timed(item, verifier.take, reply)) is not None
            ]
        compares = [(it, job) for it in items if (job := _timed(it, verifier.judge, task)) is not None]
        for item, reply in runner.run(compares):
            _timed(item, verifier.settle, reply)
    finally:
        runner.close()
    reward = REWARDS[reward_name]
    return [ScoreResult.of(it, reward(it, cfg)) for it in items]
