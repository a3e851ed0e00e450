"""The study: expansion (shared bases, RL groups, --quick), the local executor (order, skip, failure, stale run
dirs, stop and restart), a tiny study run end to end with `sweep --run`, and the study report's numbers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from echo_megatron.cli import main
from echo_megatron.cluster.local import LocalExecutor, Step, order
from echo_megatron.config import ConfigError
from echo_megatron.config.study import load_study

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo"
STUDY = DEMO / "study.yaml"


def test_shipped_study_expands_into_shared_bases_and_groups():
    full, quick = load_study(str(STUDY)), load_study(str(STUDY), quick=True)
    assert len(full.bases) == 12 and {len(g) for g in full.groups.values()} == {12, 3}
    assert {b.axes["mixture"] for b in full.bases} == {"code1x", "code2x", "code4x", "code8x"}
    # every RL run starts from one of the bases, and waits for it
    by_dir = {b.run_dir: b.name for b in full.bases}
    for r in full.rl:
        assert full.needs[r.name] == by_dir[r.overrides["rl.base"]]
    algos = [r for r in full.rl if r.name in full.groups["algorithms"]]
    assert {full.needs[r.name] for r in algos} == {"study-base-code1x-m"}
    assert sorted({r.axes["algorithm"] for r in algos}) == ["ei", "grpo", "ppo", "rpp"]
    assert len({r.axes["seed"] for r in algos}) == 3
    # --quick: 2 mixtures x 2 scales x GRPO
    assert [b.name for b in quick.bases] == [
        "study-base-code1x-s", "study-base-code1x-m", "study-base-code8x-s", "study-base-code8x-m",
    ]  # fmt: skip
    assert list(quick.groups) == ["formats"] and len(quick.rl) == 4
    # --group kl: that group and the one base it starts from
    kl = load_study(str(STUDY), only=["kl"])
    assert [b.name for b in kl.bases] == ["study-base-code1x-m"] and len(kl.rl) == 3
    with pytest.raises(ConfigError, match="unknown group"):
        load_study(str(STUDY), only=["nope"])
    # the scales span >= 10x in parameters
    from echo_megatron.config import load_config
    from echo_megatron.model.params import count_parameters

    sizes = []
    for b in full.bases[:3]:  # the testbed tokenizer's 1,948 tokens
        sizes.append(count_parameters(load_config(b.base, b.override_args()), 1948)["total"])
    assert max(sizes) / min(sizes) >= 10, sizes


def _study_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(body)
    return str(path)


BASES = f"""
bases:
  base: {DEMO / "testbed.yaml"}
  axes:
    mixture: {{a: {{data.sources.tb_code.multiplier: 1}}, b: {{data.sources.tb_code.multiplier: 2}}}}
"""


@pytest.mark.parametrize(
    "body,match",
    [
        (BASES + "groups: {g: {base: x.yaml, axes: {rl.steps: [1]}}}\nquick: {bases: {mixture: [zz]}}\n",
         "quick.bases: mixture has no label"),
        (BASES + "groups: {g: {axes: {rl.stepz: [1]}}}\n", "rl.stepz"),
        (BASES + "groups: {g: {axes: {rl.steps: [1]}}}\nextra: 1\n", "unknown study key"),
        (BASES + "groups: {g: {bases: {size: [s]}, axes: {rl.steps: [1]}}}\n", "'size' is not an axis"),
        (BASES + "eval: [nope]\ngroups: {g: {axes: {rl.steps: [1]}}}\n", "unknown eval task 'nope'"),
    ],
)  # fmt: skip
def test_bad_studies_fail_in_one_line_naming_the_problem(tmp_path, body, match, capsys):
    path = _study_file(tmp_path, body)
    # eval task names are checked against the registry by the command (config/ cannot import eval/)
    if "eval:" not in body:
        with pytest.raises(ConfigError, match=match):
            load_study(path, quick=True)
    assert main(["sweep", path, "--dry-run", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and re.search(match, err)


def test_dry_run_lists_bases_groups_and_what_each_run_waits_for(capsys):
    assert main(["sweep", str(STUDY), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 bases (mixture 4 x scale 3), 27 RL runs" in out
    assert "group algorithms: 12 runs = bases 1 x algorithm 4 x seed 3" in out
    assert re.search(r"study-formats-code8x-l-seed0 +after study-base-code8x-l ", out)


# ---- the executor (steps are real echo-megatron commands, fast ones) -----------------------------------------

OK = ["config", str(DEMO / "testbed.yaml")]
BAD = ["config", "does-not-exist.yaml"]


def test_order_and_cycles():
    steps = [Step("c", [OK], ["b"]), Step("b", [OK], ["a"]), Step("a", [OK])]
    assert [s.name for s in order(steps)] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="circle"):
        order([Step("a", [OK], ["b"]), Step("b", [OK], ["a"])])
    with pytest.raises(ValueError, match="needs z"):
        order([Step("a", [OK], ["z"])])


def test_executor_skips_done_reruns_changed_and_stops_only_the_dependents_of_a_failure(tmp_path):
    lines: list[str] = []
    ex = LocalExecutor(str(tmp_path), jobs=2, echo=lines.append)
    steps = [
        Step("a", [OK], fingerprint="1"),
        Step("bad", [OK, BAD], ["a"], fingerprint="1"),
        Step("after_bad", [OK], ["bad"], fingerprint="1"),
        Step("c", [OK], ["a"], fingerprint="1"),
    ]
    got = {o.name: o for o in ex.run(steps)}
    assert got["a"].ok and got["c"].ok and not got["bad"].ok and not got["after_bad"].ok
    assert "exited 2" in got["bad"].detail and "not started" in got["after_bad"].detail
    assert "$ echo-megatron config does-not-exist.yaml" in (tmp_path / "logs" / "bad.log").read_text()
    assert sorted(os.listdir(tmp_path / "done")) == ["a.json", "c.json"]
    # rerun: a and c are skipped, bad runs again; c with a new fingerprint runs again
    steps[3] = Step("c", [OK], ["a"], fingerprint="2")
    got = {o.name: o for o in LocalExecutor(str(tmp_path), jobs=1, echo=lines.append).run(steps)}
    assert got["a"].skipped and not got["c"].skipped and got["c"].ok and not got["bad"].skipped


def test_a_step_whose_config_changed_after_it_started_refuses_its_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ex = LocalExecutor(str(tmp_path / "out"), echo=lambda _: None)
    (o,) = ex.run([Step("r", [BAD], fingerprint="1", run_dir=str(run_dir))])  # started, then failed
    assert not o.ok
    (o,) = ex.run([Step("r", [OK], fingerprint="2", run_dir=str(run_dir))])
    assert not o.ok and "remove that run dir" in o.detail
    (o,) = ex.run([Step("r", [OK], fingerprint="1", run_dir=str(run_dir))])  # same config: resumes
    assert o.ok


# ---- a tiny study, end to end ---------------------------------------------------------------------------------

TINY = f"""
name: tiny
run_dir: runs/{{grid}}/{{name}}
set:
  testbed.out: runs/tiny/data
  data.indexed_dir: runs/tiny/data/indexed
  testbed.n_train: 600
  testbed.n_test: 16
  testbed.n_hard: 16
  testbed.tokenizer_vocab_size: 512
  model.seq_length: 96
  train.steps: 20
  eval.n: 4
  eval.sample_problems: 8
  eval.ks: [1, 2, 4]
  data.num_workers: 1
eval: [testbed, testbed_hard]
bases:
  base: {DEMO / "testbed.yaml"}
  axes:
    mixture:
      code1x: {{data.sources.tb_code.multiplier: 1}}
      code8x: {{data.sources.tb_code.multiplier: 8}}
    scale:
      xs: {{model.hidden_size: 32, model.num_layers: 1, model.num_attention_heads: 2, model.ffn_hidden_size: 64}}
groups:
  formats:
    base: {DEMO / "grpo_testbed.yaml"}
    set: {{rl.steps: 4, rl.num_rollout_samples: 4, rollout.n: 4, checkpoint.save_interval: 2, rl.sample_interval: 2}}
    axes:
      seed: {{seed0: {{rl.seed: 0, rollout.seed: 0}}}}
quick:
  bases: {{mixture: [code1x]}}
"""


def _sweep(cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echo_megatron", "sweep", "tiny.yaml", *args],
        cwd=cwd, capture_output=True, text=True, timeout=900, **kw,
    )  # fmt: skip


def test_tiny_study_runs_resumes_after_a_stop_and_reports(tmp_path):
    """`sweep --run --quick`, stopped with SIGTERM mid-way, then run again: it goes on where it stopped; the full
    study then only runs what --quick did not; a third run has nothing to do; `report --study` draws it."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "echo_megatron", "sweep", "tiny.yaml", "--run", "--quick"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (tmp_path / "sweeps/tiny/done/data.json").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # inside the base's pretraining
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command" in out, out[-2000:]
    done = set(os.listdir(tmp_path / "sweeps/tiny/done"))
    assert "data.json" in done and "tiny-formats-code1x-xs-seed0.json" not in done

    r = _sweep(tmp_path, "--run", "--quick")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 step(s) already done" in r.stdout and "2 steps run" in r.stdout
    r = _sweep(tmp_path, "--run", "--jobs", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "3 step(s) already done, 2 to run" in r.stdout
    r = _sweep(tmp_path, "--run", "--jobs", "2")
    assert "0 steps run, 5 already done, 0 failed" in r.stdout

    rl = tmp_path / "runs/tiny/tiny-formats-code8x-xs-seed0"
    assert (rl / "eval" / "testbed_hard.json").is_file() and (rl / "eval" / "steps").is_dir()
    manifest = json.loads((tmp_path / "sweeps/tiny/study.json").read_text())
    assert {r["kind"] for r in manifest["runs"]} == {"base", "rl"}
    rep = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "report", "--study", "sweeps/tiny", "--out", "rep"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rep.returncode == 0, rep.stderr[-3000:]
    page = (tmp_path / "rep" / "study.html").read_text()
    for png in ("study_echo.png", "study_winners.png", "study_transfer.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 5000
    assert "one format reached" in page and "testbed_hard: greedy pass@1" in page


# ---- the report's numbers ---------------------------------------------------------------------------------------


def test_within_format_properties():
    from echo_megatron.report.properties import (
        correct_arithmetic,
        extra_program_lines,
        program_lines,
        stated_equals_executed,
    )

    code = {"completion": "def simple_math_problem():\n    a = 2\n\n    result = a * 3\n    return result"}
    assert program_lines([code]) == 4
    # "Ana has 2 pens. She buys 3 more." has two numbers: canonical = def + 2 assignments + result + return
    verbose = (
        "def simple_math_problem():\n    a = 2\n    b = 3\n    c = a + b\n    result = c\n    return result"
    )
    assert extra_program_lines([{"question": "Ana has 2 pens. She buys 3 more.", "completion": verbose}]) == 1
    ci = "<llm-code>\nprint(6)\n</llm-code>\n<llm-code-output>\n{}\n</llm-code-output>\n\\boxed{{6}}"
    rows = [{"completion": ci.format(6), "extracted": "6"}, {"completion": ci.format(7), "extracted": "6"}]
    assert stated_equals_executed(rows) == 0.5
    nl = {"completion": "She has 3 + 4 = 7.\nThen 7 * 2 = 15.\nThen 15 / 5 = 3.\n\\boxed{3}"}
    assert correct_arithmetic([nl]) == pytest.approx(2 / 3)
    assert program_lines([]) is None


def test_winner_and_gain_at_the_switch():
    from echo_megatron.report.runs import Run
    from echo_megatron.report.study import switch_gain, winner

    # nl falls, code rises between steps 4 and 7; accuracy jumps exactly there
    share = [0.1, 0.1, 0.1, 0.1, 0.2, 0.5, 0.8, 0.95, 0.95, 0.95]
    acc = [0.2, 0.2, 0.21, 0.21, 0.3, 0.5, 0.7, 0.72, 0.72, 0.73]
    rows = [
        {"step": i + 1, "phase": "rl", "accuracy": a, "share/code": s, "share/nl": 1 - s}
        for i, (s, a) in enumerate(zip(share, acc))
    ]
    run = Run(root="x", label="x", rl=rows)
    assert winner(run) == ("code", 0.95)
    during, rest = switch_gain(run, "code")
    assert during > rest > 0
