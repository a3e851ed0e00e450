"""``rewards.verifier: paper`` and ``formats.classifier: paper`` against the paper's own decisions.

tests/paper_verifier/expected.jsonl holds what the paper's ``math_verifier.py`` decided on each of the 101 rows of
cases.jsonl (recorded once by tests/paper_verifier/make_reference.py; its README says how). Every row is scored
here through the real sandbox, batched, on the three call paths: the RL ``reward`` (prompt + completion), ``eval``
(``run_inference_all.py``) and ``ei`` (``train_ei.py``), with the format labels of each path. Then the CLI
(``score --verifier paper`` / ``--verifier strict``), the config switch, and hostile programs under paper mode.

Cost: 13 tests in 63 s wall (31 CPU-s) on the 2-core CI machine at load average 19: the table on three paths
22 s, the CLI 14 s, the hostile programs 13 s (the time-limit rows dominate: 1 s each over 2 workers).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from adversarial_programs import HUNT_PRELUDE, HUNTS, MARK, attacks

from echo_megatron.config import ConfigError, load_config
from echo_megatron.rewards import SandboxPool, score
from echo_megatron.rewards.paper import (
    LABELS,
    first_llm_code_block,
    paper_gold,
    paper_text,
    tinygsm_program,
)
from echo_megatron.rewards.policy import SandboxPolicy

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CASES = [json.loads(line) for line in (HERE / "paper_verifier/cases.jsonl").read_text().splitlines()]
EXPECTED = [json.loads(line) for line in (HERE / "paper_verifier/expected.jsonl").read_text().splitlines()]
PAPER = Namespace(verifier="paper")
TIMEOUT_S = 1.0  # the paper's alarm is 3 s; the time-limit rows give None either way


@pytest.fixture(scope="module")
def table():
    """Every row scored on the three call paths: {purpose: [ScoreResult]}."""
    assert [c["id"] for c in CASES] == [e["id"] for e in EXPECTED] and len(CASES) == 101
    comps, golds = [c["completion"] for c in CASES], [c["gold"] for c in CASES]
    questions = [c["question"] for c in CASES]
    with SandboxPool(workers=2, timeout_s=TIMEOUT_S) as pool:
        return {
            "reward": score(comps, golds, "gsm8k", PAPER, pool, questions, "reward", "paper"),
            "eval": score(comps, golds, "gsm8k", PAPER, pool, None, "eval", "paper"),
            "ei": score(comps, golds, "gsm8k", PAPER, pool, None, "ei", "paper"),
        }


def _mismatches(results, got, want) -> list[str]:
    return [
        f"{e['id']}: {got(r)!r} != paper {want(e)!r} ({r.detail[:120]})"
        for r, e in zip(results, EXPECTED)
        if got(r) != want(e)
    ]


def test_rl_reward_and_label_match_the_paper_on_every_row(table):
    """reward_func([question + completion + '</s>'], ...) and get_llm_answer(query)[1]."""
    res = table["reward"]
    assert not _mismatches(res, lambda r: r.reward, lambda e: e["reward"])
    assert not _mismatches(res, lambda r: r.format, lambda e: LABELS[e["format_rl"]])
    assert sum(r.reward for r in res) == 69  # README: 69 of 101 rows score 1


def test_eval_accuracy_label_and_extraction_match_the_paper_on_every_row(table):
    res = table["eval"]
    assert not _mismatches(res, lambda r: r.reward, lambda e: e["eval_acc"])
    assert not _mismatches(res, lambda r: r.format, lambda e: LABELS[e["format"]])
    # the extracted answer: the matched string of math-verify's parse (the last element of its list)
    assert not _mismatches(res, lambda r: r.extracted, lambda e: (e["extracted"] or [None])[-1])
    # the question matters only in RL: the two rows where the fallback parses the question's number
    differ = {e["id"] for r, e in zip(table["reward"], EXPECTED) if r.reward != res[EXPECTED.index(e)].reward}
    assert differ == {"nl_empty_question_number_is_gold", "nl_no_number_question_number_is_gold"}


def test_ei_correctness_matches_the_paper_on_every_row(table):
    """train_ei.py: verify_llm_answer(completion, str(gold)), the prediction first."""
    assert not _mismatches(table["ei"], lambda r: r.correct, lambda e: e["ei_correct"])


def test_blind_spots_are_the_papers(table):
    """What the paper's rules decide against the strict verifier, row by row (expected.jsonl)."""
    by_id = {c["id"]: r for c, r in zip(CASES, table["eval"])}
    assert by_id["ci_print_last"].reward == 0.0  # print last: 'None', no fallback
    assert by_id["tg_returns_list"].reward == 0.0  # '[72]'
    assert by_id["ci_double_eval_side_effect"].reward == 1.0  # the last line runs twice
    assert by_id["ci_def_in_block_fails"].format == "code"  # <llm-code> failed, 'def' in the text
    assert "(the text is parsed)" in by_id["tg_helper_before"].detail


def test_pure_rules():
    """The text rules against the paper's regex and split, on inputs with several or unclosed blocks."""
    paper_re = re.compile(r"<llm-code>(.*?)</llm-code>", re.DOTALL)
    texts = [
        "a <llm-code>\n x = 1\nx\n</llm-code> b <llm-code>2</llm-code>",
        "<llm-code>open <llm-code> inner</llm-code>",
        "<llm-code>never closed",
        "</llm-code> before <llm-code>y</llm-code>",
        "no tags",
        "<llm-code></llm-code>",
    ]
    for t in texts:
        m = paper_re.search(t)
        assert first_llm_code_block(t) == (m.group(1).strip() if m else None), t
    assert tinygsm_program("prose\ndef helper():\n  pass\ndef simple_math_problem():\n  return 1") == (
        "def simple_math_problem():\n  return 1"
    )
    assert tinygsm_program("define it") == "defdefine it"
    assert paper_text("A</s>", "Q? ", "reward") == "Q? A" and paper_text("A</s>", "Q? ", "eval") == "A</s>"
    assert paper_gold("#### 1,080") == "#### 1,080" and paper_gold("3\\sqrt{13}") == "\\boxed{3\\sqrt{13}}"
    assert paper_gold("-0.5") == "-0.5" and paper_gold(231) == "231"


def test_the_extracted_gold_parses_as_the_papers_whole_label():
    """Eval and RL hand the verifier the task's extracted final answer (GSM8K's number, MATH's box content, AIME's
    integer); ``paper_gold`` makes math-verify parse it as the paper's ``parse(str(label))`` of the whole label."""
    from math_verify import parse

    from echo_megatron.eval.tasks import boxed_gold, gsm8k_gold, plain_gold

    extract = {"gsm8k": gsm8k_gold, "math": boxed_gold, "aime": plain_gold}
    wrong = [
        (c["id"], got, e["gold_parsed"])
        for c, e in zip(CASES, EXPECTED)
        if (got := [str(x) for x in parse(paper_gold(extract[c["task"]](c["gold"])))]) != e["gold_parsed"]
    ]
    assert not wrong


def _cli(tmp_path: Path, rows: list[dict], *flags: str) -> list[dict]:
    src, out = tmp_path / "in.jsonl", tmp_path / f"out{len(list(tmp_path.iterdir()))}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [
        sys.executable,
        "-m",
        "echo_megatron",
        "score",
        str(src),
        "--task",
        "gsm8k",
        "--answer-field",
        "gold",
    ]
    cmd += ["--timeout", str(TIMEOUT_S), "--out", str(out), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


CLI_ROWS = ["ci_print_last", "nl_empty_question_number_is_gold", "tg_helper_before", "nl_question_has_def"]


def test_score_cli_paper_agrees_and_strict_keeps_its_results(tmp_path):
    idx = [next(i for i, c in enumerate(CASES) if c["id"] == name) for name in CLI_ROWS]
    rows, want = [CASES[i] for i in idx], [EXPECTED[i] for i in idx]
    paper = _cli(tmp_path, rows, "--verifier", "paper", "--classifier", "paper", "--prompt-field", "question")
    assert [r["reward"] for r in paper] == [e["reward"] for e in want]
    assert [r["format"] for r in paper] == [LABELS[e["format_rl"]] for e in want]
    evals = _cli(tmp_path, rows, "--verifier", "paper", "--classifier", "paper", "--purpose", "eval")
    assert [r["reward"] for r in evals] == [e["eval_acc"] for e in want]
    # strict: the CLI gives what score() gives with the default config (today's verifier), and not the paper's
    strict = _cli(tmp_path, rows)
    with SandboxPool(workers=1, timeout_s=TIMEOUT_S) as pool:
        lib = score([r["completion"] for r in rows], [r["gold"] for r in rows], "gsm8k", pool=pool)
    assert [(r["reward"], r["format"], r["extracted"]) for r in strict] == [
        (x.reward, x.format, x.extracted) for x in lib
    ]
    assert strict[0]["reward"] == 1.0 and paper[0]["reward"] == 0.0  # print last: strict reads the output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--verifier", "lenient"], "--verifier 'lenient': unknown (strict | paper)"),
        (["--classifier", "paper"], "--classifier paper needs --verifier paper"),
        (["--purpose", "train"], "--purpose 'train': unknown (reward | eval | ei)"),
    ],
)
def test_score_cli_bad_choice_is_one_line(tmp_path, flags, message):
    src = tmp_path / "in.jsonl"
    src.write_text("")
    cmd = [sys.executable, "-m", "echo_megatron", "score", str(src), "--task", "gsm8k", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_config_switches():
    cfg = load_config(
        "recipes/demo/grpo_testbed.yaml", ["rewards.verifier=paper", "formats.classifier=paper"]
    )
    assert (cfg.rewards.verifier, cfg.formats.classifier) == ("paper", "paper")
    assert load_config("recipes/demo/grpo_testbed.yaml").formats.classifier == "strict"
    with pytest.raises(ConfigError, match="formats.classifier: paper needs rewards.verifier: paper"):
        load_config("recipes/demo/grpo_testbed.yaml", ["formats.classifier=paper"])
    with pytest.raises(ConfigError, match="rewards.verifier: unknown 'lenient'"):
        load_config("recipes/demo/grpo_testbed.yaml", ["rewards.verifier=lenient"])


def test_eval_reads_rewards_verifier_and_formats_classifier(tmp_path):
    """``evaluate`` scores with the configured verifier on the eval path: an OMI-1 solution that prints the gold
    is right for the strict verifier (its printed output) and wrong for the paper's ('None', no fallback)."""
    from echo_megatron.eval.generation import Completion
    from echo_megatron.eval.run import evaluate

    def printing(problems, *, n, **_):
        return [
            [Completion(f"Let's use Python.\n<llm-code>\nprint({p.answer})\n</llm-code>\n")] * n
            for p in problems
        ]

    base = ["logging.tensorboard=false", "logging.progress_bar=false", "rewards.sandbox_workers=1"]
    base += ["eval.max_problems=3", f"rewards.timeout_s={TIMEOUT_S}"]
    got = {}
    for verifier in ("strict", "paper"):
        cfg = load_config(None, [*base, f"rewards.verifier={verifier}", f"formats.classifier={verifier}"])
        got[verifier] = evaluate(printing, ["gsm8k"], cfg, step=0, run_dir=str(tmp_path / verifier))["gsm8k"]
    assert got["strict"]["pass@1"] == 1.0 and got["paper"]["pass@1"] == 0.0
    assert got["paper"]["per_format"]["code_interp"]["count"] == 3


# --- hostile programs under paper mode --------------------------------------------------------------------------
GOLD = str(secrets.randbelow(9 * 10**11) + 10**11)  # 12 digits, in no program's text
ATTACKS = (  # time, exits, files, environment, processes, network: each returns 42 only if it got through
    "infinite_loop", "sleep", "signal_tampering", "hostile_str", "huge_output_loop", "sys_exit", "os_exit",
    "read_shadow", "read_ssh_keys", "write_tmp", "write_home", "write_repo", "os_system", "subprocess_run",
    "fork_bomb", "socket_tcp_localhost", "threads",
)  # fmt: skip


def _indent(body: str) -> str:
    return "\n".join("    " + ln for ln in body.split("\n"))


def paper_function(body: str) -> str:
    """A TinyGSM solution the paper's path executes whole (no module-level code: it would be cut off)."""
    return "\n\ndef simple_math_problem():\n" + _indent(body)


def paper_notebook(body: str) -> str:
    """An OMI-1 solution whose first block ends in a call (exec, then eval of the last line: it runs twice)."""
    return f"Let's use Python.\n<llm-code>\ndef attack():\n{_indent(body)}\nattack()\n</llm-code>\n"


@pytest.fixture
def gold_in_env():
    os.environ["HF_TOKEN"] = f"{MARK}{GOLD}"
    yield
    os.environ.pop("HF_TOKEN", None)


def test_paper_mode_contains_hostile_programs(tmp_path, gold_in_env):
    """As in strict mode (tests/test_sandbox_adversarial.py): a hunt for the gold finds nothing (reward 0, the gold
    in no field), an attack does not get through (it would return ord("*") = 42, a value the paper's fallback
    cannot read from the text), nothing is written, and every item ends within the sandbox's limits."""
    token = f"pwned_{secrets.token_hex(6)}"
    scored = tmp_path / "scored.jsonl"
    scored.write_text(json.dumps({"completion": "1", "answer": f"{MARK}{GOLD}"}) + "\n")
    bodies = {n: b for n, b in attacks(9, 9, token, str(Path.home()), str(REPO)).items() if n in ATTACKS}
    assert set(bodies) == set(ATTACKS)
    cases = []
    for name, body in bodies.items():
        for fmt, wrap in (("code", paper_function), ("code_interp", paper_notebook)):
            cases.append((f"{fmt}:{name}", wrap(body + '\nreturn ord("*")'), "42"))
    paths = repr([str(scored), str(REPO / "README.md")])
    dirs = repr([str(REPO), str(REPO / "tests")])
    for name, body in HUNTS.items():
        body = HUNT_PRELUDE + body.replace("PATHS", paths).replace("REPO_DIRS", dirs)
        for fmt, wrap in (("code", paper_function), ("code_interp", paper_notebook)):
            cases.append((f"{fmt}:hunt:{name}", wrap(body), GOLD))
    policy = SandboxPolicy(workers=2, timeout_s=TIMEOUT_S, memory_mb=512)
    limit = 2 * TIMEOUT_S + policy.verify_timeout_s + 1.0  # <llm-code>, then TinyGSM, then the comparison
    with SandboxPool(policy) as pool:
        # the pool first handles jobs that hold the gold: a program returning it, a comparison against it
        primed = score(
            [paper_function(f"mark = '{MARK}{GOLD}'\nreturn {GOLD}")], [GOLD], "gsm8k", PAPER, pool
        )
        assert primed[0].correct
        res = score([c[1] for c in cases], [c[2] for c in cases], "gsm8k", PAPER, pool, None, "eval", "paper")
        # an attack that got through would score 1: the same wrappers around a harmless body do
        ok = [wrap('x = 1\nreturn ord("*")') for wrap in (paper_function, paper_notebook)]
        benign = score(ok, ["42", "42"], "gsm8k", PAPER, pool, None, "eval", "paper")
    bad = []
    for (name, _, _), r in zip(cases, res):
        if r.reward != 0.0 or r.correct or GOLD in (r.extracted or "") + r.detail:
            bad.append((name, r.reward, r.extracted, r.detail[:100]))
        if r.elapsed > limit:
            bad.append((name, f"took {r.elapsed:.2f} s"))
    assert not bad, bad
    assert [(r.correct, r.format) for r in benign] == [(True, "code"), (True, "code_interp")]
    for d in ("/tmp", "/var/tmp", "/dev/shm", str(Path.home()), str(REPO)):
        assert not [n for n in os.listdir(d) if token in n], d
