"""The format testbed and gsm8k3: determinism, correctness of every rendering, held-out split, proportions."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
from test_data_common import DEMO, demo_cfg

from echo_megatron.cli import main
from echo_megatron.config.data import TestbedConfig
from echo_megatron.data.gsm8k3 import generate_gsm8k3, render
from echo_megatron.data.testbed import assign_formats, generate, hard_problems, heldout_rows


def run_code(solution: str) -> object:
    """Call simple_math_problem() of a `code` rendering."""
    scope: dict = {}
    exec(solution, scope)
    return scope["simple_math_problem"]()


def run_code_interp(solution: str) -> tuple[str, str, str]:
    """(printed output of the <llm-code> block, the stated output, the boxed answer)."""
    code = re.search(r"<llm-code>\n(.*?)\n</llm-code>", solution, re.S).group(1)
    stated = re.search(r"<llm-code-output>\n(.*?)\n</llm-code-output>", solution, re.S).group(1)
    boxed = re.search(r"\\boxed\{([^}]*)\}", solution).group(1)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})
    return buf.getvalue().strip(), stated, boxed


def check_nl(solution: str, answer) -> None:
    steps = re.findall(r"(-?\d+(?:\.\d+)?) ?([-+*/x]) ?(-?\d+(?:\.\d+)?) = (-?\d+(?:\.\d+)?)", solution)
    assert steps, solution
    for a, op, b, c in steps:
        a, b, c = float(a), float(b), float(c)
        value = {"+": a + b, "-": a - b, "*": a * b, "x": a * b, "/": a / b}[op]
        assert abs(value - c) < 1e-6 * max(1, abs(c)), f"{a} {op} {b} != {c} in {solution!r}"
    assert re.search(r"\\boxed\{([^}]*)\}", solution).group(1) == str(answer)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        rc = main(["testbed", f"out={tmp_path / name}", f"seed={seed}", "n_train=400", "n_test=20",
                   "tokenizer=none"])  # fmt: skip
        assert rc == 0
        outs.append({f: (tmp_path / name / f).read_bytes() for f in ("train.jsonl", "test.jsonl")})
    assert outs[0] == outs[1]
    assert outs[0]["train.jsonl"] != outs[2]["train.jsonl"]


def test_every_rendering_is_correct_and_within_limits():
    cfg = TestbedConfig(n_train=1500, n_test=100, max_ops=5, seed=7)
    train, test = generate(cfg)
    for row in train:
        fmt, sol, ans = row["format"], row["solution"], row["answer"]
        assert 1 <= ans <= cfg.max_answer
        if fmt == "code":
            assert sol.startswith("def simple_math_problem():") and sol.endswith("return result")
            assert run_code(sol) == ans
        elif fmt == "code_interp":
            printed, stated, boxed = run_code_interp(sol)
            assert printed == stated == boxed == str(ans)
        else:
            check_nl(sol, ans)
        numbers = [int(n) for n in re.findall(r"\d+", row["question"] + sol)]
        assert max(numbers) <= cfg.max_answer
    for row in test:  # held-out rows carry all three renderings, each correct
        assert run_code(row["solutions"]["code"]) == row["answer"]
        assert run_code_interp(row["solutions"]["code_interp"])[0] == str(row["answer"])
        check_nl(row["solutions"]["nl"], row["answer"])


def test_held_out_questions_never_in_train_and_proportions_exact():
    train, test = generate(TestbedConfig(n_train=2000, n_test=200, seed=1))
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len({r["question"] for r in train}) == len(train)
    counts = {f: sum(r["format"] == f for r in train) for f in ("code", "code_interp", "nl")}
    assert counts == {"code": 400, "code_interp": 600, "nl": 1000}


def test_hard_split_is_harder_unseen_correct_and_leaves_the_demo_sets_alone(tmp_path):
    """test_hard.jsonl: every problem at max_ops steps with its start and + / - operands above max_operand, no
    question of train or test, every rendering correct; train/test bytes do not depend on it."""
    cfg = TestbedConfig(n_train=2000, n_test=100, n_hard=150, seed=3)
    train, test = generate(cfg)
    assert generate(TestbedConfig(n_train=2000, n_test=100, n_hard=0, seed=3)) == (train, test)
    seen = {r["question"] for r in train} | {r["question"] for r in test}
    hard = hard_problems(cfg, seen)
    assert len(hard) == 150 and not {p.question for p in hard} & seen
    for p in hard:
        assert len(p.steps) == cfg.max_ops and cfg.max_operand < p.start <= cfg.hard_max_operand
        for s in p.steps:
            if s.op in "+-":
                assert cfg.max_operand < s.operand <= cfg.hard_max_operand
    for row in heldout_rows(hard, "tbhard"):
        assert run_code(row["solutions"]["code"]) == row["answer"]
        assert run_code_interp(row["solutions"]["code_interp"])[0] == str(row["answer"])
        check_nl(row["solutions"]["nl"], row["answer"])
    train_ops = [r["question"].count(".") - 1 for r in train]  # sentences: start + steps
    assert sum(train_ops) / len(train_ops) < cfg.max_ops
    with pytest.raises(ValueError, match="hard_max_operand"):
        hard_problems(TestbedConfig(hard_max_operand=20), set())


def test_assign_formats_largest_remainder_and_bad_format():
    import random

    labels = assign_formats(7, {"code": 1, "nl": 1}, random.Random(0))
    assert sorted(labels.count(f) for f in ("code", "nl")) == [3, 4]
    with pytest.raises(ValueError, match="unknown format"):
        assign_formats(5, {"latex": 1.0}, random.Random(0))


def test_impossible_settings_are_clear_errors():
    with pytest.raises(ValueError, match="distinct problems"):
        generate(TestbedConfig(n_train=5000, n_test=10, min_operand=2, max_operand=3, min_ops=1, max_ops=1,
                               ops=["+"]))  # fmt: skip
    with pytest.raises(ValueError, match="unknown op"):
        generate(TestbedConfig(ops=["^"]))


def test_cli_writes_files_prompts_and_tokenizer(tmp_path):
    cfg = demo_cfg(tmp_path)
    rc = main(["testbed", DEMO, f"out={tmp_path}", "n_train=300", "n_test=20", "tokenizer_vocab_size=512"])
    assert rc == 0
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    prompts = [json.loads(x) for x in (tmp_path / "prompts_train.jsonl").read_text().splitlines()]
    assert [p["question"] for p in prompts] == [r["question"] for r in train]
    assert all(set(r) == {"id", "question", "solution", "format", "answer"} for r in train)
    for f in ("code", "code_interp", "nl"):
        rows = [json.loads(x) for x in (tmp_path / f"train_{f}.jsonl").read_text().splitlines()]
        assert rows and all(r["format"] == f for r in rows)
    assert (tmp_path / "tokenizer.json").is_file()
    hard = [json.loads(x) for x in (tmp_path / "test_hard.jsonl").read_text().splitlines()]
    assert len(hard) == 200 and all(set(r) == {"id", "question", "answer", "solutions"} for r in hard)
    assert cfg.data.tokenizer.path == f"{tmp_path}/tokenizer.json"


def test_gsm8k3_renders_real_gsm8k_correctly(data_dir):
    rows = [json.loads(x) for x in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()[:400]]
    out, dropped = generate_gsm8k3(rows, {"code": 1, "code_interp": 1, "nl": 1}, seed=0)
    assert len(out) + dropped == 400 and len(out) > 340
    for row, src in zip(out, [r for r in rows if render(r["question"], r["answer"])]):
        ans = float(row["answer"])
        assert row["question"] == src["question"]
        sols = render(src["question"], src["answer"])
        assert abs(float(run_code(sols["code"])) - ans) < 1e-6
        printed, stated, boxed = run_code_interp(sols["code_interp"])
        assert printed == stated and abs(float(printed) - ans) < 1e-6 and float(boxed) == ans
        assert "<<" not in sols["nl"] and sols["nl"].endswith(f"\\boxed{{{row['answer']}}}.")


def test_gsm8k3_drops_wrong_annotations():
    good = {"question": "q", "answer": "He has 2*3 = <<2*3=6>>6.\nThen 6+4 = <<6+4=10>>10.\n#### 10"}
    assert "step2 = step1 + 4" in render(good["question"], good["answer"])["code"]
    assert render("q", "2*3 = <<2*3=7>>7\n#### 7") is None  # the annotation is wrong
    assert render("q", "2*3 = <<2*3=6>>6\n#### 8") is None  # the chain does not reach the answer
    assert render("q", "<<__import__('os')=1>>\n#### 1") is None  # not arithmetic
