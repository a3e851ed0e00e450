"""Eval aggregation (pure): scored generations -> pass@1 / pass@k / maj@k and the per-format table, per task.

Per task, one pass per mode (:func:`modes`):

- ``greedy`` (``eval.greedy``): one generation at temperature 0: pass@1 and the greedy per-format table;
- ``sampled`` (``eval.n > 1``, or ``eval.greedy=false``): ``eval.n`` samples at ``eval.temperature`` /
  ``eval.top_p``: the unbiased pass@k and maj@k over ``eval.ks`` (``echo_megatron.eval.estimators``), on the
  first ``eval.sample_problems`` problems when set (a cheaper pass@k curve; greedy still sees every problem).

Every generation is one :class:`EvalRecord`; :func:`summarize_task` makes the ``eval/<task>.json`` dict and
:func:`metric_row` the ``phase: eval`` row of ``metrics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from echo_megatron.eval.estimators import format_stats, k_metrics, mean_pass_at_k
from echo_megatron.eval.tasks import get_task
from echo_megatron.rewards.equivalence import normalize_latex, parse_number

GREEDY, SAMPLED = "greedy", "sampled"


@dataclass
class EvalRecord:
    """One scored generation (a line of ``eval/<task>.generations.jsonl``, plus its problem's index)."""

    problem_index: int
    problem_id: str
    mode: str  # GREEDY | SAMPLED
    sample: int  # index among the mode's samples of this problem
    answer: str  # the gold answer
    completion: str
    finish_reason: str | None
    num_tokens: int | None
    format: str
    extracted: str | None
    correct: bool
    reward: float
    error: str | None

    def to_row(self) -> dict[str, Any]:
        """The JSONL line (the problem is named by its id, not its index)."""
        row = asdict(self)
        del row["problem_index"]
        return row


def modes(ev) -> list[tuple[str, int, float]]:
    """(mode, samples per problem, temperature) of each pass for ``cfg.eval``."""
    out = [(GREEDY, 1, 0.0)] if ev.greedy else []
    if ev.n > 1 or not ev.greedy:
        out.append((SAMPLED, int(ev.n), float(ev.temperature)))
    return out


def mode_problems(ev, mode: str, num_problems: int) -> int:
    """How many of the task's first problems a pass covers: all for greedy, ``eval.sample_problems`` (when set)
    for the samples."""
    if mode == SAMPLED and ev.sample_problems is not None:
        return min(int(ev.sample_problems), num_problems)
    return num_problems


def vote_key(extracted: str | None, reward_task: str) -> Any:
    """The answer a sample votes for in maj@k: its number (9 significant digits) when it is one, else the
    normalised LaTeX string; None (no vote) when nothing was extracted."""
    if extracted is None or not str(extracted).strip():
        return None
    num = parse_number(extracted, strict=reward_task == "math")
    if num is not None:
        return float(f"{num:.9g}")
    return normalize_latex(str(extracted))


def _maj_inputs(records: list[EvalRecord], reward_task: str) -> tuple[list, list[bool]]:
    """Vote keys and the correctness of each key's first sample (equal keys share one verdict even if a
    comparison failed once, so the estimator's consistency check holds)."""
    keys = [vote_key(r.extracted, reward_task) for r in records]
    verdict: dict = {}
    for k, r in zip(keys, records):
        if k is not None:
            verdict.setdefault(k, bool(r.correct))
    return keys, [verdict[k] if k is not None else False for k in keys]


def summarize_mode(
    records: list[EvalRecord], num_problems: int, ks: Sequence[int], reward_task: str, maj_expected: bool
) -> dict[str, Any]:
    """One mode's block: accuracy, pass@k / maj@k over ks (<= samples per problem), per-format table, finishes.

    ``records`` hold every generation of the mode.
    """
    by_problem: list[list[EvalRecord]] = [[] for _ in range(num_problems)]
    for r in records:
        by_problem[r.problem_index].append(r)
    for rows in by_problem:
        rows.sort(key=lambda r: r.sample)
    n = min(len(rows) for rows in by_problem)
    counts = [(len(rows), sum(r.correct for r in rows)) for rows in by_problem]
    pass_k = {str(k): mean_pass_at_k(counts, k) for k in sorted({int(k) for k in ks}) if 1 <= k <= n}
    answers, votes_correct = zip(*(_maj_inputs(rows, reward_task) for rows in by_problem))
    maj_k = k_metrics(list(answers), list(votes_correct), ks, maj_expected=maj_expected)["maj@k"]
    finishes: dict[str, int] = {}
    for r in records:
        key = r.finish_reason or "none"
        finishes[key] = finishes.get(key, 0) + 1
    return {
        "num_generations": len(records),
        "accuracy": sum(r.correct for r in records) / max(len(records), 1),
        "pass@k": pass_k,
        "maj@k": maj_k,
        "per_format": format_stats([r.format for r in records], [r.correct for r in records]),
        "finish_reasons": dict(sorted(finishes.items())),
    }


def summarize_task(
    task: str,
    records: list[EvalRecord],
    num_problems: int,
    cfg,
    *,
    step: int,
    source: str,
    checkpoint: str | None,
) -> dict:
    """``eval/<task>.json``: the documented top-level keys plus a ``greedy`` and a ``sampled`` block.

    Top level: ``pass@1`` is greedy when there is a greedy pass (else the unbiased pass@1 of the samples);
    ``pass@k`` / ``maj@k`` and ``n`` / ``temperature`` describe the samples when there are (else the greedy
    pass as k = 1); ``per_format`` is the greedy table when there is one, else the samples'.
    """
    ev = cfg.eval
    spec = get_task(task)
    blocks: dict[str, dict | None] = {GREEDY: None, SAMPLED: None}
    for mode, n, temperature in modes(ev):
        rows = [r for r in records if r.mode == mode]
        ks = [1] if mode == GREEDY else list(ev.ks)
        covered = mode_problems(ev, mode, num_problems)
        block = summarize_mode(rows, covered, ks, spec.reward_task, bool(ev.maj_expected))
        block.update({"n": n, "temperature": temperature, "num_problems": covered})
        if mode == SAMPLED:
            block["top_p"] = float(ev.top_p)
            skipped = sorted(int(k) for k in set(ev.ks) if int(k) > n)
            if skipped:
                block["ks_skipped"] = skipped
        blocks[mode] = block
    greedy, sampled = blocks[GREEDY], blocks[SAMPLED]
    top = sampled if sampled is not None else greedy
    return {
        "task": task,
        "n": top["n"],
        "temperature": top["temperature"],
        "num_problems": num_problems,
        "pass@1": greedy["accuracy"] if greedy is not None else sampled["accuracy"],
        "pass@k": top["pass@k"],
        "maj@k": top["maj@k"],
        "per_format": (greedy or sampled)["per_format"],
        "step": int(step),
        "reward_task": spec.reward_task,
        "source": source,
        "checkpoint": checkpoint,
        "max_new_tokens": int(ev.max_new_tokens),
        "greedy": greedy,
        "sampled": sampled,
    }


def metric_row(results: dict[str, dict]) -> dict[str, float]:
    """The ``phase: eval`` values of ``metrics.jsonl``: ``<task>/pass@1``, ``<task>/pass@<k>``, ``<task>/maj@<k>``,
    ``<task>/share/<fmt>`` and ``<task>/acc/<fmt>`` (formats seen)."""
    row: dict[str, float] = {}
    for task, res in results.items():
        row[f"{task}/pass@1"] = res["pass@1"]
        for k, v in res["pass@k"].items():
            row.setdefault(f"{task}/pass@{k}", v)  # pass@1 stays the top-level (greedy) one
        for k, v in res["maj@k"].items():
            row[f"{task}/maj@{k}"] = v
        for fmt, s in res["per_format"].items():
            row[f"{task}/share/{fmt}"] = s["share"]
            if s["accuracy"] is not None:
                row[f"{task}/acc/{fmt}"] = s["accuracy"]
    return row
