"""pass@k and maj@k against brute-force enumeration; per-format aggregation."""

from __future__ import annotations

import itertools
import random
from math import comb

import pytest

from echo_megatron.eval.estimators import (
    dominant_format,
    expected_maj_at_k,
    format_metrics,
    format_stats,
    k_metrics,
    maj_at_k,
    majority_answer,
    mean_pass_at_k,
    pass_at_k,
)


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_closed_form_large_n():
    # the product form against exact big-integer binomials where the naive ratio would overflow floats
    n, c, k = 1000, 7, 64
    exact = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 5) == 0.0  # c = 0
    assert pass_at_k(10, 10, 1) == 1.0  # c = n
    assert pass_at_k(10, 1, 10) == 1.0  # k = n, one correct sample is always drawn
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct
    assert mean_pass_at_k([(4, 0), (4, 4)], 2) == pytest.approx(0.5)
    for bad in [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    with pytest.raises(ValueError, match="no problems"):
        mean_pass_at_k([], 1)


def test_majority_tie_goes_to_first_appearance():
    assert majority_answer(["7", "3", "3", "7"]) == "7"
    assert majority_answer(["3", "7", "7", "3"]) == "3"
    assert majority_answer([None, None, "5"]) == "5"  # unparsed answers take a slot but do not vote
    assert majority_answer([None, None]) is None
    assert majority_answer(["1", "2", "2"]) == "2"


def test_maj_at_k_first_k_samples_and_ties():
    answers = ["12", "10", "10", "12", "12"]
    correct = [True, False, False, True, True]
    assert maj_at_k(answers, correct, 1) == 1.0
    assert maj_at_k(answers, correct, 3) == 0.0  # "10" x2 beats "12" x1
    assert maj_at_k(answers, correct, 4) == 1.0  # 2-2 tie: "12" appeared first
    assert maj_at_k(answers, correct, 5) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    with pytest.raises(ValueError, match="both correct and wrong"):
        maj_at_k(["1", "1"], [True, False], 2)
    with pytest.raises(ValueError, match="k <= n"):
        maj_at_k(["1"], [True], 2)


def brute_expected_maj(answers, correct, k):
    """Average of the first-appearance rule over every ordered k-subset (= random subset, random order)."""
    verdict = {a: ok for a, ok in zip(answers, correct) if a is not None}
    perms = list(itertools.permutations(range(len(answers)), k))
    wins = 0
    for p in perms:
        w = majority_answer([answers[i] for i in p])
        wins += w is not None and verdict[w]
    return wins / len(perms)


def test_expected_maj_at_k_matches_enumeration():
    rng = random.Random(0)
    for _ in range(40):
        n = rng.randint(1, 7)
        gold = "g"
        pool = [gold, "a", "b", None]
        answers = [rng.choice(pool) for _ in range(n)]
        correct = [a == gold for a in answers]
        for k in range(1, n + 1):
            got = expected_maj_at_k(answers, correct, k)
            assert got == pytest.approx(brute_expected_maj(answers, correct, k), abs=1e-12), (answers, k)


def test_expected_maj_two_correct_classes_and_ties():
    # "1/2" and "0.5" both correct (a caller that does not canonicalise); a 1-1 tie at k=2 splits evenly
    answers = ["1/2", "0.5", "3"]
    correct = [True, True, False]
    assert expected_maj_at_k(answers, correct, 3) == pytest.approx(2 / 3)
    assert expected_maj_at_k(answers, correct, 3) == pytest.approx(brute_expected_maj(answers, correct, 3))
    assert expected_maj_at_k(["x", "y"], [True, False], 2) == pytest.approx(0.5)
    assert expected_maj_at_k(["x"] * 5, [True] * 5, 5) == 1.0
    assert expected_maj_at_k([None] * 4, [False] * 4, 3) == 0.0


def test_format_stats_and_metrics():
    formats = ["code", "nl", "nl", "nl", "empty"]
    correct = [True, True, False, False, False]
    stats = format_stats(formats, correct)
    assert list(stats) == ["code", "code_interp", "nl", "other", "empty"]
    assert stats["nl"] == {"count": 3, "share": 0.6, "accuracy": pytest.approx(1 / 3)}
    assert stats["code_interp"] == {"count": 0, "share": 0.0, "accuracy": None}
    assert sum(s["share"] for s in stats.values()) == pytest.approx(1.0)
    m = format_metrics(formats, correct)
    assert m["share/code"] == 0.2 and m["acc/code"] == 1.0
    assert "acc/code_interp" not in m and m["share/code_interp"] == 0.0
    with pytest.raises(ValueError, match="unknown format"):
        format_stats(["python"], [True])
    with pytest.raises(ValueError, match="correctness flags"):
        format_stats(["nl"], [])


def test_dominant_format():
    assert dominant_format({"code": 0.2, "nl": 0.7, "code_interp": 0.1}) == "nl"
    assert dominant_format({"nl": 0.5, "code": 0.5}) == "code"  # tie: FORMATS order
    assert dominant_format({"nl": 0.0}) is None


def test_k_metrics_blocks():
    answers = [["1", "1", "2", "3"], ["5", None, "5", "6"]]
    correct = [[True, True, False, False], [False, False, False, True]]
    m = k_metrics(answers, correct, ks=[1, 2, 4, 8])
    assert list(m["pass@k"]) == ["1", "2", "4"]  # k = 8 > n = 4 is left out
    assert m["pass@k"]["1"] == pytest.approx((0.5 + 0.25) / 2)
    assert m["pass@k"]["4"] == 1.0
    assert m["maj@k"]["4"] == pytest.approx(0.5)  # "1" wins problem 0, "5" (wrong) wins problem 1
    assert m["maj@k"]["1"] == pytest.approx(0.5)
    e = k_metrics(answers, correct, ks=[2], maj_expected=True)
    assert e["maj@k"]["2"] == pytest.approx(
        (expected_maj_at_k(answers[0], correct[0], 2) + expected_maj_at_k(answers[1], correct[1], 2)) / 2
    )
