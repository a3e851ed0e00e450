"""score(): the API RL and eval call. Real programs run in the real sandbox pool; real data throughout."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from echo_megatron.config.rl import RewardConfig
from echo_megatron.rewards import ERROR_KINDS, SandboxPool, ScoreResult, score
from echo_megatron.rewards.formats import CODE, CODE_INTERP, EMPTY, NL, OTHER


def _jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def pool():
    # These tests check what real solutions compute, not the time limit (the adversarial suite does): a
    # generous limit keeps a heavily loaded 2-core CI machine from turning a slow sympy import into a timeout.
    with SandboxPool(workers=2, timeout_s=15.0) as p:
        yield p


def test_tinygsm_style_solutions_execute(pool, data_dir):
    """README fact: once fences are removed, 999 of the 1,000 TinyGSM-style solutions run and return (four of
    them return None on purpose: "not enough information"); one has its body outside the function."""
    rows = _jsonl(data_dir / "sft_samples" / "tinygsm_style_gpt41_sample1000.jsonl")
    results = score([r["assistant"] for r in rows], ["0"] * len(rows), "gsm8k", pool=pool)
    assert all(r.format == CODE for r in results)
    errors = Counter(r.error for r in results)
    print(
        f"TinyGSM-style: {sum(r.extracted is not None for r in results)}/1000 returned a value; errors {errors}"
    )
    assert errors[None] + errors["no_answer"] >= 999 and errors["no_answer"] <= 4
    assert all(r.error in ERROR_KINDS for r in results if r.error is not None)


def test_testbed_renderings_score_correct_in_every_format(pool):
    from echo_megatron.config.data import TestbedConfig
    from echo_megatron.data.testbed import generate

    _, test = generate(TestbedConfig(n_train=10, n_test=200, min_ops=2, max_ops=5, seed=11))
    comps, refs, fmts = [], [], []
    for row in test:
        for fmt, sol in row["solutions"].items():
            comps.append(sol)
            refs.append(str(row["answer"]))
            fmts.append(fmt)
    results = score(comps, refs, "testbed", pool=pool)
    assert [r.format for r in results] == fmts
    assert all(r.correct and r.reward == 1.0 and r.error is None for r in results), [
        (f, r) for f, r in zip(fmts, results) if not r.correct
    ][:3]
    wrong = score(comps[:30], [str(int(x) + 1) for x in refs[:30]], "testbed", pool=pool)
    assert not any(r.correct for r in wrong) and all(r.reward == 0.0 for r in wrong)


def test_gsm8k3_renderings_score_correct(pool, data_dir):
    from echo_megatron.data.gsm8k3 import render

    comps, refs = [], []
    for r in _jsonl(data_dir / "gsm8k" / "test.jsonl")[:150]:
        sols = render(r["question"], r["answer"])
        if sols is not None:
            comps += [sols[CODE], sols[CODE_INTERP], sols[NL]]
            refs += [r["answer"]] * 3  # the whole GSM8K solution as reference: its #### N is the gold
    results = score(comps, refs, "gsm8k", pool=pool)
    acc = sum(r.correct for r in results) / len(results)
    assert len(results) >= 200 and acc == 1.0, [r for r in results if not r.correct][:3]


def test_gold_reference_solutions_score_as_eval_expects(pool, data_dir):
    gsm = _jsonl(data_dir / "gsm8k" / "test.jsonl")
    res = score([r["answer"] for r in gsm], [r["answer"] for r in gsm], "gsm8k", pool=pool)
    assert all(r.correct and r.format == NL for r in res)
    math500 = _jsonl(data_dir / "math" / "math500_test.jsonl")
    res = score([r["solution"] for r in math500], [r["answer"] for r in math500], "math", pool=pool)
    acc = sum(r.correct for r in res) / len(res)
    print(f"MATH-500 reference solutions scored as generations: {acc:.1%}")
    assert acc >= 0.99


def test_code_interp_answer_comes_from_execution_not_from_the_model(pool):
    forged = (
        "Let's use Python.\n<llm-code>\na = 3\nb = 4\nprint(a * b)\n</llm-code>\n"
        "<llm-code-output>\n999\n</llm-code-output>\nThe answer is \\boxed{999}."
    )
    r_forged, r_true = score([forged, forged], ["999", "12"], "testbed", pool=pool)
    assert r_forged.format == CODE_INTERP and r_forged.extracted == "12" and not r_forged.correct
    assert r_true.correct
    # notebook semantics: later blocks see earlier ones; the answer is the last block's last expression
    nb = "<llm-code>\nimport sympy as sp\nx = sp.Symbol('x')\nsol = sp.solve(x - 7, x)\n</llm-code>\n<llm-code-output>\n[7]\n</llm-code-output>\n<llm-code>\nsol[0] * 2\n</llm-code>"
    (r,) = score([nb], ["14"], "testbed", pool=pool)
    assert r.correct and r.extracted == "14"


def test_code_format_variants(pool):
    comps = [
        "```python\ndef simple_math_problem():\n    result = 20 / 10\n    return result\n```",  # 2.0 == 2
        "def simple_math_problem():\n    a = 5\n    result = a * 3\n    return result\n\nQuestion: Tom has",  # runaway
        "def simple_math_problem():\n    a = 5\n    b =",  # truncated: no return
        "def simple_math_problem():\n    return 1 / 0",
        "def simple_math_problem():\n    print(41 + 1)",  # prints instead of returning
        "def solve():\n    return 6 * 7",  # another name, zero arguments
    ]
    res = score(comps, ["2", "15", "5", "1", "42", "42"], "gsm8k", pool=pool)
    assert [r.correct for r in res] == [True, True, False, False, True, True]
    assert res[2].error in {"no_answer", "syntax"}
    assert res[3].error == "exception" and "ZeroDivisionError" in res[3].detail


def test_bad_and_odd_inputs_get_zero_reward_not_a_crash(pool):
    cfg = RewardConfig(correct_reward=2.0, wrong_reward=-1.0, last_number_fallback=False)
    comps = [None, "", 123, "The total is 17 apples", "\\boxed{17}", "+ = 3", "\\boxed{17}"]
    refs = ["17", "17", "123", "17", None, "17", 17]
    res = score(comps, refs, "gsm8k", cfg, pool)
    assert [r.format for r in res] == [EMPTY, EMPTY, OTHER, NL, NL, OTHER, NL]
    assert [r.error for r in res] == [
        "empty",
        "empty",
        "no_answer",
        "no_answer",
        "no_reference",
        "no_answer",
        None,
    ]
    assert [r.reward for r in res] == [-1.0] * 6 + [2.0]
    res = score(["The total is 17 apples"], ["17"], "gsm8k", RewardConfig(last_number_fallback=True), pool)
    assert res[0].correct and res[0].extracted == "17"
    assert isinstance(res[0], ScoreResult) and set(res[0].to_dict()) >= {
        "reward",
        "correct",
        "format",
        "extracted",
        "error",
        "elapsed",
    }
    with pytest.raises(ValueError, match="unknown task"):
        score(["x"], ["1"], "nope")
    with pytest.raises(ValueError, match="references"):
        score(["x", "y"], ["1"], "gsm8k")


def test_omi1_sample_by_execution(pool, data_dir):
    """OMI1 answers by running the code: 92/100 match the dataset's answer; the rest are solutions whose final
    answer is not what their code prints (e.g. code prints -6, the text boxes 6)."""
    rows = _jsonl(data_dir / "sft_samples" / "openmathinstruct1_sample100.jsonl")
    res = score(
        [r["generated_solution"] for r in rows], [r["expected_answer"] for r in rows], "math", pool=pool
    )
    acc = sum(r.correct for r in res) / len(res)
    print(f"OMI1 sample, answers by execution: {acc:.0%}; {Counter((r.format, r.correct) for r in res)}")
    assert acc >= 0.9
    assert all(r.error is None for r in res), Counter(r.error for r in res)


def test_score_without_a_pool_starts_and_closes_its_own():
    res = score(["def simple_math_problem():\n    return 7", "\\boxed{7}"], ["7", "7"], "testbed")
    assert [r.correct for r in res] == [True, True]
    assert res[0].elapsed > 0


def test_usable_from_a_process_that_runs_torch_distributed(tmp_path):
    import torch
    import torch.distributed as dist

    own = not dist.is_initialized()  # an earlier in-process test may have left its one-rank group up
    if own:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    assert dist.get_world_size() == 1
    try:
        t = torch.ones(4)
        dist.all_reduce(t)
        with SandboxPool(workers=1, timeout_s=2.0) as p:
            res = score(["def simple_math_problem():\n    return 3 * 4"] * 4, ["12"] * 4, "gsm8k", pool=p)
        assert all(r.correct for r in res)
        dist.all_reduce(t)
        assert t.sum().item() == 4.0
    finally:
        if own:
            dist.destroy_process_group()
