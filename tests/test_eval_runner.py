"""The eval run and ``echo-megatron eval``: the gold check of the scoring path (reference solutions as the
generations), the aggregation of known generations into eval/<task>.json, and the command end to end on a
freshly pretrained testbed model (1 process; TP = 2 and DP = 2 under torchrun give the same generations)."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest
from echo_testing import cli

from echo_megatron.config import ConfigError, load_config
from echo_megatron.eval.aggregation import GREEDY, SAMPLED, vote_key
from echo_megatron.eval.generation import Completion, reference_generator
from echo_megatron.eval.run import Layout, chunks, evaluate
from echo_megatron.rewards.formats import FORMATS, SOLUTION_FORMATS
from echo_megatron.rundir import read_jsonl, read_metrics

TOP_KEYS = {"task", "n", "temperature", "num_problems", "pass@1", "pass@k", "maj@k", "per_format", "step"}
WRONG = "She has this many now: \\boxed{1000}"  # testbed answers are <= 999: never correct


def _cfg(*overrides: str):
    base = ["logging.tensorboard=false", "logging.progress_bar=false", "rewards.sandbox_workers=2"]
    return load_config(None, [*base, *overrides])


def _check_schema(res: dict, task: str) -> None:
    assert TOP_KEYS <= res.keys(), TOP_KEYS - res.keys()
    assert res["task"] == task
    assert list(res["per_format"]) == list(FORMATS)
    for s in res["per_format"].values():
        assert s.keys() == {"count", "share", "accuracy"}
    assert sum(s["count"] for s in res["per_format"].values()) == res["num_problems"] * (
        1 if res["greedy"] else res["n"]
    )
    assert abs(sum(s["share"] for s in res["per_format"].values()) - 1.0) < 1e-9


@pytest.fixture(scope="module")
def testbed_dir(tmp_path_factory) -> Path:
    from echo_megatron.data.testbed import write_testbed

    out = tmp_path_factory.mktemp("testbed")
    cfg = load_config(None, [f"testbed.out={out}", "testbed.n_train=500", "testbed.n_test=20"])
    write_testbed(cfg.testbed)
    return out


# ---- the gold check -----------------------------------------------------------------------------------------


def test_gold_reference_solutions_score_99_percent(tmp_path):
    """GSM8K test and MATH-500 reference solutions, fed through the runner as the generations, score >= 99%."""
    run = tmp_path / "run"
    res = evaluate(reference_generator(), ["gsm8k", "math500"], _cfg("eval.n=1"), step=7, run_dir=str(run))
    for task, size in (("gsm8k", 1319), ("math500", 500)):
        r = res[task]
        print(f"gold check {task}: pass@1 {r['pass@1']:.2%} on {r['num_problems']} problems")
        _check_schema(r, task)
        assert r["num_problems"] == size and r["step"] == 7 and r["n"] == 1 and r["temperature"] == 0.0
        assert r["pass@1"] >= 0.99 and r["pass@k"] == {"1": r["pass@1"]} and r["sampled"] is None
        assert r["per_format"]["nl"]["share"] == 1.0  # worked solutions in prose
        assert json.loads((run / "eval" / f"{task}.json").read_text()) == r
        assert json.loads((run / "eval" / "steps" / f"{task}.0000007.json").read_text()) == r  # kept by step
        rows = list(read_jsonl(str(run / "eval" / f"{task}.generations.jsonl")))
        assert len(rows) == size
        assert {
            "problem_id",
            "sample",
            "completion",
            "format",
            "extracted",
            "correct",
            "reward",
            "error",
        } <= rows[0].keys()
        assert sum(row["correct"] for row in rows) == round(r["pass@1"] * size)
    (row,) = read_metrics(str(run), "eval")
    assert row["step"] == 7 and row["gsm8k/pass@1"] == res["gsm8k"]["pass@1"]
    assert (
        row["math500/share/nl"] == 1.0
        and row["math500/acc/nl"] == res["math500"]["per_format"]["nl"]["accuracy"]
    )


def test_testbed_references_in_every_format_score_100_percent(testbed_dir, tmp_path):
    """Each of the three renderings of the testbed's test split scores 100% (code runs in the sandbox)."""
    cfg = _cfg(f"testbed.out={testbed_dir}", "eval.n=1")
    for fmt in SOLUTION_FORMATS:
        res = evaluate(reference_generator(fmt), ["testbed"], cfg)["testbed"]
        assert res["num_problems"] == 20 and res["pass@1"] == 1.0, (fmt, res["greedy"])
        assert res["per_format"][fmt] == {"count": 20, "share": 1.0, "accuracy": 1.0}
    # the harder split is its own task, read from <testbed.out>/test_hard.jsonl: 200 other problems
    hard = evaluate(reference_generator("nl"), ["testbed_hard"], cfg)["testbed_hard"]
    assert hard["num_problems"] == 200 and hard["pass@1"] == 1.0


# ---- aggregation of known generations -----------------------------------------------------------------------


def _known_generator(problems, *, n, temperature, **_):
    """Greedy: even problems right (formats rotating), odd wrong. Samples: problem p has c = min(p % 5, n)
    correct samples, placed last; the first sample of every 5th problem is empty (no vote)."""
    out = []
    for p in problems:
        idx = int(p.id.rsplit("-", 1)[1])
        right = [Completion(p.solutions[SOLUTION_FORMATS[(idx + j) % 3]]) for j in range(n)]
        if temperature == 0:
            out.append([right[0] if idx % 2 == 0 else Completion(WRONG)])
            continue
        c = min(idx % 5, n)
        row = [Completion(WRONG) for _ in range(n - c)] + right[n - c :]
        if idx % 5 == 0:
            row[0] = Completion("")
        out.append(row)
    return out


def _brute_pass_at_k(flags: list[bool], k: int) -> float:
    subsets = list(combinations(flags, k))
    return sum(any(s) for s in subsets) / len(subsets)


def _first_k_majority_correct(votes: list, right: set, k: int) -> bool:
    counts = Counter(v for v in votes[:k] if v is not None)
    if not counts:
        return False
    top = max(counts.values())
    return next(v for v in votes[:k] if counts.get(v) == top) in right


def test_aggregation_of_known_generations(testbed_dir, tmp_path):
    n, ks = 4, [1, 2, 3, 4, 8]
    cfg = _cfg(f"testbed.out={testbed_dir}", f"eval.n={n}", f"eval.ks={ks}", "eval.batch_size=8")
    run = str(tmp_path / "run")
    res = evaluate(_known_generator, ["testbed"], cfg, step=3, run_dir=run)["testbed"]
    _check_schema(res, "testbed")
    rows = list(read_jsonl(f"{run}/eval/testbed.generations.jsonl"))
    assert len(rows) == 20 * (1 + n)
    assert Counter(r["mode"] for r in rows) == {GREEDY: 20, SAMPLED: 20 * n}

    # greedy: half right, formats of the right ones rotate; the wrong ones are nl
    assert res["pass@1"] == 0.5 and res["greedy"]["accuracy"] == 0.5
    assert res["per_format"]["nl"]["count"] >= 10
    # samples: pass@k = mean over problems of the brute-force enumeration over k-subsets
    flags = [[j >= n - min(p % 5, n) for j in range(n)] for p in range(20)]
    for k in (1, 2, 3, 4):
        want = sum(_brute_pass_at_k(f, k) for f in flags) / 20
        assert res["pass@k"][str(k)] == pytest.approx(want, abs=1e-12), k
    assert "8" not in res["pass@k"] and res["sampled"]["ks_skipped"] == [8]
    values = [res["pass@k"][str(k)] for k in (1, 2, 3, 4)]
    assert values == sorted(values) and res["sampled"]["accuracy"] == pytest.approx(values[0])
    # maj@k on the first k samples: wrong answers come first, so ties go to the wrong answer
    by_problem: dict[str, list[dict]] = {}
    for r in rows:
        if r["mode"] == SAMPLED:
            by_problem.setdefault(r["problem_id"], []).append(r)
    for k in (1, 2, 3, 4):
        want = 0
        for samples in by_problem.values():
            samples.sort(key=lambda r: r["sample"])
            votes = [vote_key(r["extracted"], "testbed") for r in samples]
            right = {v for v, r in zip(votes, samples) if r["correct"]}
            want += _first_k_majority_correct(votes, right, k)
        assert res["maj@k"][str(k)] == pytest.approx(want / 20), k
    # every correct sample was scored from its own format; the empty ones are "empty"
    sampled_fmt = res["sampled"]["per_format"]
    assert sampled_fmt["empty"]["count"] == 4 and sampled_fmt["empty"]["accuracy"] == 0.0
    for fmt in ("code", "code_interp"):
        assert sampled_fmt[fmt]["count"] > 0 and sampled_fmt[fmt]["accuracy"] == 1.0
    assert sum(s["count"] for s in sampled_fmt.values()) == 20 * n

    # a second task at the same step lands in the same metrics row (read_metrics keeps one row per step)
    evaluate(reference_generator(), ["gsm8k"], _cfg("eval.max_problems=5"), step=3, run_dir=run)
    (row,) = read_metrics(run, "eval")
    assert row["testbed/pass@1"] == 0.5 and row["gsm8k/pass@1"] == 1.0
    assert row["testbed/pass@4"] == res["pass@k"]["4"] and row["testbed/maj@2"] == res["maj@k"]["2"]
    assert row["testbed/share/empty"] == 0.0  # the top-level (greedy) table


def test_samples_on_a_subset_greedy_on_all(testbed_dir, tmp_path):
    """eval.sample_problems: the n samples cover the first N problems, greedy still every problem; pass@k is the
    mean over those N (the same values as a full run restricted to them)."""
    n, over = 4, ["eval.n=4", "eval.ks=[1,2,4]", "eval.batch_size=8", f"testbed.out={testbed_dir}"]
    full = evaluate(_known_generator, ["testbed"], _cfg(*over, "eval.max_problems=7"), step=1)["testbed"]
    sub = evaluate(_known_generator, ["testbed"], _cfg(*over, "eval.sample_problems=7"), step=1)["testbed"]
    assert sub["num_problems"] == 20 and sub["greedy"]["num_problems"] == 20
    assert sub["sampled"]["num_problems"] == 7 and sub["sampled"]["num_generations"] == 7 * n
    assert sub["pass@k"] == full["pass@k"] and sub["maj@k"] == full["maj@k"]
    assert sum(s["count"] for s in sub["sampled"]["per_format"].values()) == 7 * n


def test_chunks_deal_every_problem_once_over_dp_replicas():
    for dp in (1, 2, 3):
        got = [c for r in range(dp) for c in chunks(11, 3, Layout(dp_rank=r, dp_size=dp))]
        assert sorted(got) == [(0, 3), (3, 6), (6, 9), (9, 11)]


def test_vote_keys():
    assert vote_key("1,000", "gsm8k") == vote_key("1000.0", "gsm8k") == 1000.0
    assert vote_key("\\frac{1}{2}", "math") == vote_key("0.5", "math")
    assert vote_key("x^2 + 1", "math") == vote_key("x^2+1", "math")
    assert vote_key(None, "gsm8k") is None and vote_key("  ", "math") is None


def test_bad_eval_settings_are_config_errors(testbed_dir):
    bad_settings = ("eval.n=0", "eval.ks=[0,2]", "eval.top_p=0", "eval.tasks=[nope]", "eval.max_problems=0")
    for bad in (*bad_settings, "eval.sample_problems=0"):
        cfg = _cfg(f"testbed.out={testbed_dir}", bad)
        with pytest.raises(ConfigError):
            evaluate(reference_generator(), None, cfg)


# ---- the command end to end ---------------------------------------------------------------------------------

RECIPE = "recipes/demo/testbed.yaml"
SMALL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=2",
    "model.ffn_hidden_size=128",
    "train.steps=8",
    "train.global_batch_size=8",
    "train.micro_batch_size=8",
    "train.threads=1",  # tiny ops on a busy 2-core machine: a second OpenMP thread only adds barrier waits
    "schedule.warmup_steps=2",
    "data.num_workers=0",
    "logging.tensorboard=false",
    "logging.progress_bar=false",
]
EVAL = ["eval.tasks=[testbed]", "eval.n=4", "eval.ks=[1,2,4]", "eval.max_problems=8", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def pretrained(testbed_dir) -> Path:
    """testbed -> preprocess -> a few pretraining steps: a run dir with checkpoints at steps 4 and 8 and a real
    tokenizer."""
    common = [f"testbed.out={testbed_dir}", f"run_dir={testbed_dir / 'run'}", *SMALL]
    cli(["preprocess", RECIPE, *common])
    cli(["pretrain", RECIPE, *common, "checkpoint.save_interval=4", "checkpoint.keep_last=0"])
    return testbed_dir / "run"


def _generations(path: Path) -> list[tuple]:
    return [(r["problem_id"], r["mode"], r["sample"], r["completion"]) for r in read_jsonl(str(path))]


@pytest.fixture(scope="module")
def command_run(pretrained):
    """``echo-megatron eval RUN_DIR`` in a fresh process, as a user runs it."""
    return cli(["eval", str(pretrained), *EVAL, "logging.progress_bar=true"])


def test_eval_command_end_to_end(pretrained, command_run):
    r = command_run
    res = json.loads((pretrained / "eval" / "testbed.json").read_text())
    _check_schema(res, "testbed")
    assert res["step"] == 8 and res["n"] == 4 and res["temperature"] == 0.7 and res["num_problems"] == 8
    assert res["checkpoint"].endswith("iter_0000008") and list(res["pass@k"]) == ["1", "2", "4"]
    p = [res["pass@k"][k] for k in ("1", "2", "4")]
    assert p == sorted(p) and all(0.0 <= v <= 1.0 for v in p)
    gens = list(read_jsonl(str(pretrained / "eval" / "testbed.generations.jsonl")))
    assert len(gens) == 8 * (1 + 4)
    assert all(g["format"] in FORMATS and isinstance(g["correct"], bool) for g in gens)
    assert {g["finish_reason"] for g in gens} <= {"eos", "stop", "length"}
    (row,) = read_metrics(str(pretrained), "eval")
    assert row["step"] == 8 and row["testbed/pass@1"] == res["pass@1"]
    assert "testbed  step 8  8 problems" in r.stdout and "pass@k" in r.stdout and "wrote " in r.stdout
    assert "eval/testbed" in r.stderr  # the progress bar


def test_eval_steps_loads_each_checkpoint_into_one_model(pretrained, command_run, tmp_path):
    """``eval RUN_DIR --steps 4``: step 4, then the latest (8), in one process; step 8's generations equal those of
    a fresh process on step 8 alone (the weights really are replaced), and each step is kept in eval/steps/."""
    from echo_megatron.cli import main

    out = tmp_path / "out"
    r = cli(["eval", str(pretrained), *EVAL, "--steps", "4", "--out", str(out)])
    assert "# " in r.stdout and "(step 4)" in r.stdout and "(step 8)" in r.stdout
    at4 = json.loads((out / "eval" / "steps" / "testbed.0000004.json").read_text())
    at8 = json.loads((out / "eval" / "steps" / "testbed.0000008.json").read_text())
    assert at4["step"] == 4 and at4["checkpoint"].endswith("iter_0000004")
    assert at8 == json.loads((out / "eval" / "testbed.json").read_text())  # the latest is evaluated last
    ran = json.loads((pretrained / "eval" / "testbed.json").read_text())
    assert {k: at8[k] for k in TOP_KEYS} == {k: ran[k] for k in TOP_KEYS}
    assert _generations(out / "eval" / "testbed.generations.jsonl") == _generations(
        pretrained / "eval" / "testbed.generations.jsonl"
    )
    assert sorted(row["step"] for row in read_metrics(str(out), "eval")) == [4, 8]
    assert (
        main(["eval", str(pretrained), *EVAL, "--steps", "3", "--out", str(out)]) == 2
    )  # no such checkpoint


def test_in_process_on_a_live_model_equals_the_command(pretrained, command_run, tmp_path):
    """What the RL loop and the demo do: evaluate the model they hold (no reload), then keep training it."""
    from echo_megatron.distributed.init import destroy
    from echo_megatron.eval.generation import model_generator
    from echo_megatron.rollout.loading import load_policy

    policy = load_policy(str(pretrained), EVAL)
    try:
        policy.model.train()
        generate = model_generator(policy.model, policy.tokenizer, policy.cfg)
        res = evaluate(generate, None, policy.cfg, step=policy.iteration, run_dir=str(tmp_path))
        assert policy.model.training  # the sampler restores the training mode
    finally:
        destroy()
    ran = json.loads((pretrained / "eval" / "testbed.json").read_text())
    assert {k: res["testbed"][k] for k in TOP_KEYS} == {k: ran[k] for k in TOP_KEYS}
    want = _generations(pretrained / "eval" / "testbed.generations.jsonl")
    assert _generations(tmp_path / "eval" / "testbed.generations.jsonl") == want


def _spy(fn, calls: list):
    """``fn``, recording its first argument in ``calls``."""

    def wrapped(first, **kwargs):
        calls.append(first)
        return fn(first, **kwargs)

    return wrapped


def test_eval_prompts_follow_rl_prompt_template(pretrained):
    """rl.prompt_template=raw (the paper's eval): the live model is given the question alone, not question +
    "\\n\\n" (the default). The real backend runs; a spy records the prompt ids it is given."""
    from omegaconf import OmegaConf

    from echo_megatron.distributed.init import destroy
    from echo_megatron.eval.generation import model_generator
    from echo_megatron.eval.run import task_path
    from echo_megatron.eval.tasks import load_task
    from echo_megatron.rollout.loading import load_policy

    policy = load_policy(str(pretrained), EVAL)
    try:
        tok = policy.tokenizer
        problems = load_task("testbed", path=task_path(policy.cfg, "testbed"), max_problems=3)
        kw = dict(n=1, temperature=0.0, top_p=1.0, max_new_tokens=4, seed=0)
        for template, text in (("raw", lambda q: q), ("separator", lambda q: q + "\n\n")):
            cfg = OmegaConf.merge(policy.cfg, {"rl": {"prompt_template": template}})
            gen = model_generator(policy.model, tok, cfg)
            seen: list = []
            gen.backend.generate = _spy(gen.backend.generate, seen)
            out = gen(problems, **kw)
            assert seen == [[tok.encode(text(p.question)) for p in problems]], template
            assert len(out) == 3 and all(len(c) == 1 for c in out)
        assert tok.encode("Q?") != tok.encode("Q?\n\n")  # the two templates are different prompts
    finally:
        destroy()


def test_eval_command_refuses_bad_input_with_status_2(pretrained, tmp_path):
    from echo_megatron.cli import main

    assert main(["eval", str(tmp_path / "nothing")]) == 2  # no checkpoint
    assert main(["eval", str(pretrained), "eval.ks=[0]"]) == 2
    assert main(["eval", str(pretrained), "eval.tasks=[gsm8k,nope]"]) == 2
    # a mock-data run has no tokenizer; a task file that is missing
    assert main(["eval", str(pretrained), "data.tokenizer.path=null"]) == 2
    assert main(["eval", str(pretrained), f"eval.paths.testbed={tmp_path / 'missing.jsonl'}"]) == 2
    assert not (pretrained / "eval").exists() or not list((pretrained / "eval").glob("gsm8k*"))


@pytest.mark.multiproc
def test_tp2_and_dp2_generate_what_one_process_does(pretrained, tmp_path):
    """TP = 2 keeps the ranks in lockstep; DP = 2 deals the same chunks (same seeds) to two replicas."""
    one = tmp_path / "one"
    cli(["eval", str(pretrained / "checkpoints"), *EVAL, "--out", str(one)])
    want = _generations(one / "eval" / "testbed.generations.jsonl")
    assert len(want) == 8 * 5 and read_metrics(str(one), "eval")[0]["step"] == 8  # --out: a run-dir layout
    for name, extra in (("tp2", []), ("dp2", ["parallel.tp=1"])):
        cli(["eval", str(pretrained), *EVAL, *extra, "--out", str(tmp_path / name)], nproc=2)
        assert _generations(tmp_path / name / "eval" / "testbed.generations.jsonl") == want, name
        got = json.loads((tmp_path / name / "eval" / "testbed.json").read_text())
        ref = json.loads((one / "eval" / "testbed.json").read_text())
        for key in ("pass@1", "pass@k", "maj@k", "per_format"):
            assert got[key] == ref[key], (name, key)
