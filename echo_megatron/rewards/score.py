"""``score``: per completion, its format, extracted answer, correctness, reward, error kind and time.

    from echo_megatron.rewards import SandboxPool, score
    with SandboxPool.from_config(cfg.rewards) as pool:              # RL: one pool for the whole run
        results = score(completions, references, "gsm8k", cfg.rewards, pool)

Per item: ``classify_format`` -> answer (``nl``/``other``: ``extract.nl_answer``; ``code``: run the program and
call ``simple_math_problem()``; ``code_interp``: run the ``<llm-code>`` blocks, take the last one's output) ->
compare with the gold answer (``equivalence``). All programs of a batch run in parallel over the pool, then all
math-verify comparisons that the quick numeric/string rules could not settle. Without a pool, a temporary one is
started for the call when it needs one (slow: pass a pool when scoring repeatedly).

Tasks: ``gsm8k``, ``testbed``, ``aime``, ``amc`` compare numbers; ``math`` compares LaTeX through math-verify.
References may be a bare answer, a GSM8K solution (``#### N``), a solution with ``\\boxed{}``, or a number.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from echo_megatron.rewards.equivalence import answers_equal
from echo_megatron.rewards.extract import code_program, gold_answer, llm_code_blocks, nl_answer
from echo_megatron.rewards.formats import CODE, CODE_INTERP, EMPTY, classify_format
from echo_megatron.rewards.sandbox import SandboxPool

TASKS: dict[str, str] = {
    "gsm8k": "numeric",
    "testbed": "numeric",
    "aime": "numeric",
    "amc": "numeric",
    "math": "math",
}
ERROR_KINDS: dict[str, str] = {
    "empty": "the completion is empty",
    "no_answer": "no final answer found (or the program returned None and printed nothing)",
    "no_reference": "the reference answer is missing",
    "syntax": "the program does not compile",
    "exception": "the program raised an exception",
    "exit": "the program exited (sys.exit, SystemExit, KeyboardInterrupt, os._exit) before returning",
    "forbidden": "a blocked operation: process, thread, socket, file write, signal, limit change, other user's file",
    "timeout": "wall-clock timeout (killed)",
    "cpu": "CPU-time limit (killed)",
    "memory": "address-space limit (MemoryError)",
    "output": "stdout/stderr over the cap",
    "crash": "killed by a fatal signal (segfault, abort)",
    "killed": "killed by another signal",
    "verify": "math-verify failed on the answer",
    "sandbox": "the sandbox itself failed (worker died or could not set up)",
}


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


def _get(cfg, name: str, default):
    return getattr(cfg, name, default) if cfg is not None else default


def _text(obj: object) -> str:
    if obj is None:
        return ""
    return obj if isinstance(obj, str) else str(obj)


def score(
    completions: list[str],
    references: list[str],
    task: str,
    cfg=None,
    pool: SandboxPool | None = None,
) -> list[ScoreResult]:
    """Score completions (solution text only) against references for ``task``; one result per completion."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    fallback = bool(_get(cfg, "last_number_fallback", True))
    rel_tol = float(_get(cfg, "rel_tol", 1e-6))
    n = len(completions)
    texts = [_text(c) for c in completions]
    formats, golds, answers = [EMPTY] * n, [None] * n, [None] * n
    errors: list[str | None] = [None] * n
    details = [""] * n
    elapsed = [0.0] * n
    jobs: list[tuple[int, dict]] = []
    for i in range(n):
        t0 = time.perf_counter()
        fmt = formats[i] = classify_format(texts[i])
        golds[i] = gold_answer(references[i], task)
        if fmt == EMPTY:
            errors[i] = "empty"
        elif fmt == CODE:
            jobs.append((i, {"kind": "function", "code": code_program(texts[i])}))
        elif fmt == CODE_INTERP:
            jobs.append((i, {"kind": "notebook", "blocks": llm_code_blocks(texts[i])}))
        else:
            answers[i] = nl_answer(texts[i], fallback)
            if answers[i] is None:
                errors[i] = "no_answer"
        elapsed[i] += time.perf_counter() - t0

    own_pool = None
    try:
        if jobs:
            pool = pool or (own_pool := SandboxPool.from_config(_config_or_default(cfg)))
            for (i, _), reply in zip(jobs, pool.run([job for _, job in jobs])):
                elapsed[i] += reply["elapsed"]
                answers[i], errors[i], details[i] = reply["value"], reply["error"], reply["detail"]

        correct = [False] * n
        verify: list[tuple[int, dict]] = []
        for i in range(n):
            t0 = time.perf_counter()
            if errors[i] is None and answers[i] is None:
                errors[i] = "no_answer"
            if errors[i] is None and golds[i] is None:
                errors[i] = "no_reference"
            if errors[i] is None:
                eq = answers_equal(answers[i], golds[i], task, rel_tol)
                if eq is None:
                    verify.append((i, {"kind": "verify", "gold": golds[i], "pred": answers[i]}))
                else:
                    correct[i] = eq
            elapsed[i] += time.perf_counter() - t0
        if verify:
            pool = pool or (own_pool := SandboxPool.from_config(_config_or_default(cfg)))
            for (i, _), reply in zip(verify, pool.run([job for _, job in verify])):
                elapsed[i] += reply["elapsed"]
                correct[i] = reply["equal"] is True
                if reply["error"] is not None:
                    errors[i], details[i] = "verify", f"{reply['error']}: {reply['detail']}"
    finally:
        if own_pool is not None:
            own_pool.close()

    right, wrong = float(_get(cfg, "correct_reward", 1.0)), float(_get(cfg, "wrong_reward", 0.0))
    return [
        ScoreResult(
            reward=right if correct[i] else wrong,
            correct=correct[i],
            format=formats[i],
            extracted=answers[i],
            error=errors[i],
            elapsed=elapsed[i],
            detail=details[i] or (ERROR_KINDS.get(errors[i], "") if errors[i] else ""),
        )
        for i in range(n)
    ]


def _config_or_default(cfg):
    if cfg is not None and hasattr(cfg, "sandbox_workers"):
        return cfg
    from echo_megatron.config.rl import RewardConfig

    return RewardConfig()
