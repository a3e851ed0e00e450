"""Evaluation estimators: unbiased pass@k, maj@k, and per-format share / accuracy.

All functions are pure: they take counts, answers and labels, never a model.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): with n samples of
which c are correct, the probability that at least one of k samples drawn without replacement is
correct is ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` so that no
binomial coefficient is ever formed.

maj@k: the majority answer among k sampled answers is correct. Unparsed answers (``None``) take a
sample slot but cast no vote. Tie rule (deterministic): among answers with the same top count, the one
that appears first wins. The expectation over k-subsets drawn from n samples in random order (the same
rule applied to a random arrangement, i.e. ties split evenly) is computed exactly by
:func:`expected_maj_at_k`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from math import comb, prod

from echo_megatron.rewards.formats import FORMATS


def _check_nck(n: int, c: int, k: int) -> None:
    if n < 1:
        raise ValueError(f"pass@k: n must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k: need 1 <= k <= n, got k={k}, n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, eq. 1).

    Numerically stable product form: ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``; it is exactly 1 when
    ``n - c < k`` (every k-subset then holds a correct sample).
    """
    _check_nck(n, c, k)
    if n - c < k:
        return 1.0
    return 1.0 - prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(samples: Sequence[tuple[int, int]], k: int) -> float:
    """Mean of :func:`pass_at_k` over problems given as ``(n, c)`` pairs (the benchmark pass@k)."""
    if not samples:
        raise ValueError("pass@k: no problems")
    return sum(pass_at_k(n, c, k) for n, c in samples) / len(samples)


def majority_answer(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent non-None answer; ties go to the answer that appears first; None if no votes."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def _answer_correctness(answers: Sequence[Hashable | None], correct: Sequence[bool]) -> dict:
    """answer -> correct, checking that one answer is not both correct and wrong."""
    if len(answers) != len(correct):
        raise ValueError(f"maj@k: {len(answers)} answers but {len(correct)} correctness flags")
    verdict: dict = {}
    for a, ok in zip(answers, correct):
        if a is None:
            continue
        if verdict.setdefault(a, bool(ok)) != bool(ok):
            raise ValueError(f"maj@k: answer {a!r} is marked both correct and wrong")
    return verdict


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """maj@k for one problem on the first k samples: 1.0 if their majority answer is correct, else 0.0.

    ``answers[i]`` is the canonical (already normalised) answer of sample i, None when none was found;
    ``correct[i]`` whether sample i was scored correct. Equal answers must share one verdict.
    The tie rule is :func:`majority_answer`'s (first appearance wins).
    """
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k: need 1 <= k <= n, got k={k}, n={len(answers)}")
    verdict = _answer_correctness(answers, correct)
    winner = majority_answer(answers[:k])
    return 1.0 if winner is not None and verdict[winner] else 0.0


def expected_maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int) -> float:
    """E[maj@k] over k samples drawn without replacement from the n, in random order.

    With answer classes of sizes ``d_j`` (``u`` unparsed samples), a correct class t wins with
    ``sum_a C(d_t, a) * W_t(a) / C(n, k)``, where ``W_t(a)`` counts the ways to fill the other ``k - a``
    slots so that no other class exceeds ``a``, each weighted by ``1 / (1 + #classes tied at a)`` (a
    random order breaks a tie of m classes uniformly). Classes smaller than ``a`` can never tie or win,
    so they pool with the unparsed samples into one binomial; only classes of size >= a enter a small
    dynamic programme over (slots used, classes tied). Exact; equals brute-force enumeration.
    """
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k: need 1 <= k <= n, got k={k}, n={n}")
    verdict = _answer_correctness(answers, correct)
    sizes = Counter(a for a in answers if a is not None)
    unparsed = n - sum(sizes.values())
    total = 0.0
    for target, d_t in sizes.items():
        if not verdict[target]:
            continue
        others = [d for a, d in sizes.items() if a != target]
        for a in range(1, min(d_t, k) + 1):
            rest = k - a
            free = unparsed + sum(d for d in others if d < a)  # can never reach a
            big = [d for d in others if d >= a]
            # ways[s][j]: choices of j samples from the big classes seen so far, s of them tied at a
            ways = [[0] * (rest + 1) for _ in range(len(big) + 1)]
            ways[0][0] = 1
            for seen, d in enumerate(big):
                new = [[0] * (rest + 1) for _ in range(len(big) + 1)]
                for s in range(seen + 1):
                    for j, w in enumerate(ways[s]):
                        if not w:
                            continue
                        for x in range(0, min(a, rest - j) + 1):
                            new[s + (x == a)][j + x] += w * comb(d, x)
                ways = new
            weighted = sum(
                w * comb(free, rest - j) / (1 + s)
                for s, row in enumerate(ways)
                for j, w in enumerate(row)
                if w
            )
            total += comb(d_t, a) * weighted
    return total / comb(n, k)


def k_metrics(
    answers: Sequence[Sequence[Hashable | None]],
    correct: Sequence[Sequence[bool]],
    ks: Sequence[int],
    maj_expected: bool = False,
) -> dict[str, dict[str, float]]:
    """The ``pass@k`` and ``maj@k`` blocks of ``eval/<task>.json``: ``{"pass@k": {"k": v}, "maj@k": {"k": v}}``.

    ``answers[p][i]`` / ``correct[p][i]``: sample i of problem p. Each value is the mean over problems of
    :func:`pass_at_k` and of :func:`maj_at_k` (or :func:`expected_maj_at_k` with ``maj_expected``).
    A k larger than the smallest sample count is left out; keys are strings, as JSON has them.
    """
    if len(answers) != len(correct) or not answers:
        raise ValueError(f"k_metrics: {len(answers)} answer lists but {len(correct)} correctness lists")
    n = min(len(c) for c in correct)
    maj = expected_maj_at_k if maj_expected else maj_at_k
    out: dict[str, dict[str, float]] = {"pass@k": {}, "maj@k": {}}
    for k in sorted(set(ks)):
        if not 1 <= k <= n:
            continue
        out["pass@k"][str(k)] = mean_pass_at_k([(len(c), sum(map(bool, c))) for c in correct], k)
        out["maj@k"][str(k)] = sum(maj(a, c, k) for a, c in zip(answers, correct)) / len(answers)
    return out


def format_stats(formats: Sequence[str], correct: Sequence[bool]) -> dict[str, dict]:
    """Per output format: ``{"count", "share" = count / N, "accuracy" = correct / count}``.

    Every label of :data:`~echo_megatron.rewards.formats.FORMATS` is present, in that order; a format
    with no samples has count 0, share 0.0 and accuracy None (no samples, no accuracy). This is the
    ``per_format`` block of ``eval/<task>.json``.
    """
    if len(formats) != len(correct):
        raise ValueError(f"format_stats: {len(formats)} format labels but {len(correct)} correctness flags")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"format_stats: unknown format label(s) {unknown} (known: {', '.join(FORMATS)})")
    total = len(formats)
    out: dict[str, dict] = {}
    for fmt in FORMATS:
        hits = [bool(ok) for f, ok in zip(formats, correct) if f == fmt]
        out[fmt] = {
            "count": len(hits),
            "share": len(hits) / total if total else 0.0,
            "accuracy": sum(hits) / len(hits) if hits else None,
        }
    return out


def format_metrics(formats: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """Flat metric keys for ``metrics.jsonl``: ``share/<fmt>`` for every format, ``acc/<fmt>`` where seen."""
    out: dict[str, float] = {}
    for fmt, s in format_stats(formats, correct).items():
        out[f"share/{fmt}"] = s["share"]
        if s["accuracy"] is not None:
            out[f"acc/{fmt}"] = s["accuracy"]
    return out


def dominant_format(shares: Mapping[str, float]) -> str | None:
    """The format with the largest share; ties go to the earlier label in FORMATS; None if all are 0."""
    order = {f: i for i, f in enumerate(FORMATS)}
    items = [(v, -order.get(f, len(order)), f) for f, v in shares.items() if v and v > 0]
    return max(items)[2] if items else None
