"""The eval task registry reads the files shipped with the package, extracts gold answers and fails clearly on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from echo_megatron.eval.tasks import TASKS, TaskError, gsm8k_gold, load_task, resolve_source


def test_gsm8k_test_split(data_dir):
    probs = load_task("gsm8k")
    assert len(probs) == 1319
    first = probs[0]
    assert first.question.startswith("Janet")
    assert first.answer == "18"
    assert first.solution.endswith("#### 18")  # the worked reference solution is kept
    assert first.prompt == first.question + "\n\n"
    assert all("," not in p.answer for p in probs)  # "1,000" -> "1000"
    assert len(load_task("gsm8k_train", max_problems=5)) == 5


def test_gsm8k_gold_extraction():
    assert gsm8k_gold("a\nb\n#### 1,234") == "1234"
    assert gsm8k_gold("x #### 3 #### -7") == "-7"
    with pytest.raises(ValueError, match="####"):
        gsm8k_gold("no marker 5")


@pytest.mark.parametrize(
    "task, n, first_answer",
    [("math500", 500, r"\left( 3, \frac{\pi}{2} \right)"), ("aime24", 30, "204"), ("amc23", 40, "27")],
)
def test_competition_sets(task, n, first_answer):
    probs = load_task(task)
    assert len(probs) == n
    assert probs[0].answer == first_answer
    assert len({p.id for p in probs}) == n  # ids are unique
    assert all(p.question and p.answer for p in probs)


def test_math500_fields():
    p = load_task("math500", max_problems=1)[0]
    assert p.id == "test/precalculus/807.json"
    assert "\\boxed" in p.solution


def test_math_train_takes_the_gold_from_the_solution(tmp_path):
    """math_train (the paper's 1B MATH RL prompts): MATH-style rows (problem, solution, level, type) given by
    path, the label = the solution's last \\boxed{}; checked on the shipped MATH-500 rows, whose answer field
    is that box."""
    import gzip

    from echo_megatron.assets import asset

    with gzip.open(asset("eval/math500_test.jsonl.gz"), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    path = tmp_path / "algebra.jsonl"
    path.write_text(
        "".join(json.dumps({k: r[k] for k in ("problem", "solution", "level")}) + "\n" for r in rows)
    )
    probs = load_task("math_train", path=str(path))
    assert [p.answer for p in probs] == [r["answer"] for r in rows]
    assert probs[0].question == rows[0]["problem"] and probs[0].solution == rows[0]["solution"]
    spec = TASKS["math_train"]
    assert (spec.hf_id, spec.hf_config, spec.hf_split, spec.reward_task) == (
        "lighteval/MATH",
        "all",
        "train",
        "math",
    )
    path.write_text(json.dumps({"problem": "p", "solution": "no box here"}) + "\n")
    with pytest.raises(TaskError, match=r"row 0: field 'solution': no \\boxed\{\} answer"):
        load_task("math_train", path=str(path))


def test_aime90_reads_the_ai_mo_fields():
    """aime90 = AI-MO/aimo-validation-aime (the paper's aime3); the shipped AIME24 file has the same fields."""
    from echo_megatron.assets import asset

    spec = TASKS["aime90"]
    assert (spec.hf_id, spec.hf_split, spec.reward_task) == ("AI-MO/aimo-validation-aime", "train", "aime")
    probs = load_task("aime90", path=str(asset("eval/aime24.jsonl.gz")))
    assert len(probs) == 30 and probs[0].answer == "204" and probs[0].question.startswith("Every morning")
    assert TASKS["aime"].hf_id == "gneubig/aime-1983-2024"  # the paper's full AIME set


def test_reward_task_names():
    assert {t.reward_task for t in TASKS.values()} == {"gsm8k", "math", "aime", "amc", "testbed"}
    assert TASKS["gsm8k"].hf_id == "openai/gsm8k" and TASKS["gsm8k"].hf_config == "main"


def test_testbed_from_path_and_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskError, match="data/testbed/test.jsonl"):
        load_task("testbed")
    f = tmp_path / "t.jsonl"
    rows = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": 7, "solution": "3+4=7"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (p,) = load_task("testbed", path=str(f))
    assert (p.id, p.answer, p.solution) == ("0", "7", "3+4=7")
    os.makedirs("data/testbed")
    test_row = {"id": "tbtest-0000", "question": "q", "answer": 7, "solutions": {"code": "c", "nl": "n"}}
    (tmp_path / "data/testbed/test.jsonl").write_text(json.dumps(test_row) + "\n")
    (p,) = load_task("testbed")  # the default path, relative to the working directory
    assert (p.id, p.answer, p.solutions, p.solution) == ("tbtest-0000", "7", {"code": "c", "nl": "n"}, "c")


def test_bad_inputs_name_file_row_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2", "answer": \n')
    with pytest.raises(TaskError, match=r"bad\.jsonl:2: malformed JSON"):
        load_task("gsm8k", path=str(bad))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"prompt": "q", "answer": "#### 1"}\n')
    with pytest.raises(
        TaskError, match=r"row 0: missing question field \(question; row has answer, prompt\)"
    ):
        load_task("gsm8k", path=str(nofield))
    nomarker = tmp_path / "nomarker.jsonl"
    nomarker.write_text('{"question": "q", "answer": "5"}\n')
    with pytest.raises(TaskError, match="field 'answer': no '#### <answer>' line"):
        load_task("gsm8k", path=str(nomarker))
    noanswer = tmp_path / "noanswer.jsonl"
    noanswer.write_text('{"question": "q", "answer": ""}\n')
    with pytest.raises(TaskError, match="missing answer field 'answer'"):
        load_task("testbed", path=str(noanswer))
    with pytest.raises(TaskError, match="file not found"):
        load_task("gsm8k", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(TaskError, match="unknown eval task 'gsm9k'"):
        load_task("gsm9k")


def test_hub_fallback_fails_clearly_offline(tmp_path):
    # 'aime' (1983-2024) has no shipped file: it reads the hub, which is unreachable here
    assert resolve_source(TASKS["aime"]) == "hf:gneubig/aime-1983-2024"
    code = "from echo_megatron.eval.tasks import load_task\nload_task('aime')"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "TaskError: task aime: no local file" in r.stderr and "pass a local file with path=" in r.stderr
