"""Sweep grids expand into loadable recipes with deterministic names; bad grids fail clearly; paper grids."""

from __future__ import annotations

import json
import os

import pytest

from echo_megatron.checkpoint.schedule import log_spaced_steps
from echo_megatron.cli import main
from echo_megatron.config import ConfigError, load_config
from echo_megatron.config.loader import dotlist_value
from echo_megatron.config.sweep import expand, load_grid

GRID = """
name: tiny
run_dir: runs/{grid}/{mixture}/{name}
set:
  train.steps: 5
  rollout.n: 4
axes:
  mixture:
    a: {rl.base: runs/pre_a/checkpoints}
    b+c: {rl: {base: runs/pre_b+c/checkpoints}, rollout.n: 2}
  algorithm:
    grpo: {base: bases/grpo.yaml, rl.algorithm: grpo}
    ppo: {base: bases/ppo.yaml, rl.algorithm: ppo}
  optimizer.lr: [0.001, 0.0001]
"""


@pytest.fixture
def grid_dir(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "grpo.yaml").write_text("name: g\nrun_dir: runs/fixed\nmodel: {preset: tiny}\n")
    (tmp_path / "bases" / "ppo.yaml").write_text("base: grpo.yaml\nrl: {actor_lr: 2.0e-6}\n")
    (tmp_path / "grid.yaml").write_text(GRID)
    return tmp_path


def test_expand_names_and_overrides(grid_dir):
    grid = load_grid(str(grid_dir / "grid.yaml"))
    runs = expand(grid)
    assert grid.size == len(runs) == 8
    assert [r.name for r in runs[:3]] == ["tiny-a-grpo-lr0.001", "tiny-a-grpo-lr0.0001", "tiny-a-ppo-lr0.001"]
    assert runs[-1].name == "tiny-b+c-ppo-lr0.0001"
    assert runs[-1].axes == {"mixture": "b+c", "algorithm": "ppo", "optimizer.lr": "lr0.0001"}
    assert runs[-1].run_dir == "runs/tiny/b+c/tiny-b+c-ppo-lr0.0001"
    assert runs[-1].base == str(grid_dir / "bases" / "ppo.yaml")
    assert [r.name for r in expand(load_grid(str(grid_dir / "grid.yaml")))] == [
        r.name for r in runs
    ]  # stable


def test_written_recipes_load(grid_dir, monkeypatch):
    monkeypatch.chdir(grid_dir)
    assert main(["sweep", "grid.yaml", "--out", "out"]) == 0
    written = sorted(f for f in os.listdir("out") if f.endswith(".yaml"))
    assert len(written) == 8
    cfg = load_config("out/tiny-b+c-ppo-lr0.0001.yaml")
    assert cfg.name == "tiny-b+c-ppo-lr0.0001"
    assert cfg.run_dir == "runs/tiny/b+c/tiny-b+c-ppo-lr0.0001"  # the sweep beats the base's fixed run_dir
    assert cfg.rl.base == "runs/pre_b+c/checkpoints" and cfg.rl.algorithm == "ppo"
    assert cfg.rl.actor_lr == 2.0e-6  # from the ppo base recipe (which inherits the grpo one)
    assert cfg.model.hidden_size == 64  # from the tiny preset named by the base
    assert cfg.optimizer.lr == 0.0001 and cfg.train.steps == 5
    assert cfg.rollout.n == 2  # an axis value beats the grid's `set`
    assert load_config("out/tiny-a-grpo-lr0.001.yaml").rollout.n == 4
    manifest = json.load(open("out/sweep.json"))
    assert [r["name"] for r in manifest["runs"]][:2] == ["tiny-a-grpo-lr0.001", "tiny-a-grpo-lr0.0001"]
    lines = open("out/runs.txt").read().split()
    assert len(lines) == 8 and all(os.path.isfile(p) for p in lines)


def test_dry_run_lists_and_writes_nothing(grid_dir, monkeypatch, capsys):
    monkeypatch.chdir(grid_dir)
    assert main(["sweep", "grid.yaml", "--dry-run", "--out", "out"]) == 0
    out = capsys.readouterr().out
    assert "grid tiny (grid.yaml): 8 runs = mixture 2 x algorithm 2 x optimizer.lr 2" in out
    assert "every run sets: train.steps=5 rollout.n=4" in out
    assert "tiny-b+c-ppo-lr0.0001" in out and "rl.base=runs/pre_b+c/checkpoints rollout.n=2" in out
    assert "GPU-h" in out  # the planner's cost column (echo_megatron.cluster.plan.estimate_gpu_hours)
    assert not os.path.exists("out")
    os.remove("bases/ppo.yaml")
    assert main(["sweep", "grid.yaml", "--dry-run"]) == 0
    assert "missing base recipes" in capsys.readouterr().out
    assert main(["sweep", "grid.yaml"]) == 2  # writing needs every base recipe
    assert "bases/ppo.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "grid, match",
    [
        ("axes: {train.stepz: [1, 2]}", r"axis 'train.stepz' value 1: bad key 'train.stepz'"),
        ("set: {train.steps: many}\naxes: {rollout.n: [1]}", r"set: bad key 'train.steps'"),
        ("axes: {m: {a: {rl.bse: x}}}", r"axis 'm' value 'a': bad key 'rl.bse'"),
        ("axes: {steps: [1, 2]}", "needs a dotted config key"),
        ("axes: {m: {a: 3}}", "must be a mapping of dotted keys"),
        ("axes: {x: {a: {train.steps: 1}}, y: {b: {train.steps: 2}}}", "both set 'train.steps'"),
        ("run_dir: runs/{nope}\naxes: {rollout.n: [1]}", r"unknown field 'nope'"),
        ("axes: {}", "'axes' must be a non-empty mapping"),
        ("grid: x\naxes: {rollout.n: [1]}", "unknown grid key"),
        ("axes: {m: {'a b': {train.steps: 1}, 'a_b': {train.steps: 2}}}", "labels are not unique"),
    ],
)
def test_bad_grids_fail_clearly(tmp_path, grid, match):
    p = tmp_path / "g.yaml"
    p.write_text(grid)
    with pytest.raises(ConfigError, match=match):
        expand(load_grid(str(p)))


def test_bad_grid_exit_status(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert "grid file not found" in capsys.readouterr().err


# The paper's grids (configs/pretraining_{150m,1b}_sweeps_*.yaml of rosieyzh/openrlhf-pretrain)
MIXTURES = {
    "150m": [
        "tg",
        "2xtg",
        "4xtg",
        "8xtg",
        "tg+omi1",
        "tg+2xomi1",
        "tg+4xomi1",
        "tg+8xomi1",
        "tg+omi2",
        "tg+omi1+omi2",
    ],
    "1b": ["tg", "tg+4xomi1", "tg+omi2", "omi2+mmqa", "tg+omi1+omi2"],
}
EI_MIXTURES = {"150m": ["omi1", *MIXTURES["150m"]], "1b": MIXTURES["1b"]}


def _load_all(runs) -> list:
    out = []
    for r in runs:
        lines = [f"{k}={dotlist_value(v)}" for k, v in r.all_overrides().items()]
        cfg = load_config(r.base, lines)
        assert cfg.name == r.name
        out.append(cfg)
    return out


@pytest.mark.parametrize(
    "scale, grid, prompts, steps", [("150m", "rl", "gsm8k_train", 1160), ("1b", "rl", "gsm8k_train", 1160),
                                    ("1b", "rl_math", "math_train", 1170)]
)  # fmt: skip
def test_paper_grids(repo_root, scale, grid, prompts, steps):
    sweeps = repo_root / "recipes" / "paper" / "sweeps"
    rl = expand(
        load_grid(str(sweeps / f"{scale}_{grid}.yaml"))
    )  # every override is checked against the schema
    n = len(MIXTURES[scale])
    assert len(rl) == n * 3 * 3 and len({r.name for r in rl}) == n * 9
    assert [v for v in dict.fromkeys(r.axes["mixture"] for r in rl)] == MIXTURES[scale]
    assert {r.axes["algorithm"] for r in rl} == {"ppo", "reinforce_pp", "grpo"}
    expected_bases = {
        str(repo_root / "recipes/paper/rl" / f"{scale}_{a}.yaml") for a in ("ppo", "reinforce_pp", "grpo")
    }
    assert {r.base for r in rl} == expected_bases
    one = next(r for r in rl if r.name == f"{scale}_{grid}-tg+omi2-ppo-kl1e-3")
    assert one.overrides["rl.base"] == f"runs/{scale}_tg+omi2/checkpoints"
    assert one.fixed["rl.num_rollout_samples"] == 64 and one.fixed["rollout.n"] == 8
    for cfg in _load_all(rl):  # every generated recipe loads, with the grid's prompt set and schedule
        assert (cfg.rl.prompts, cfg.rl.steps, cfg.rl.train_batch_size) == (prompts, steps, 64)
        assert list(cfg.checkpoint.save_steps) == log_spaced_steps(steps)
        assert cfg.checkpoint.save_interval == steps // 10  # the end of every episode
    ei = expand(load_grid(str(sweeps / f"{scale}_ei.yaml")))
    assert [r.axes["mixture"] for r in ei] == EI_MIXTURES[scale]
    assert {r.base for r in ei} == {str(repo_root / "recipes/paper/rl" / f"{scale}_ei.yaml")}
    assert all(cfg.rl.algorithm == "ei" and not cfg.rl.ei_accumulate for cfg in _load_all(ei))


def test_testbed_kl_grid_loads(repo_root):
    grid = expand(load_grid(str(repo_root / "recipes/demo/sweeps/kl_testbed.yaml")))
    assert [r.name for r in grid] == [f"kl_testbed-kl{k}" for k in ("0", "0.01", "0.1", "1")]
    for r, kl in zip(grid, (0.0, 0.01, 0.1, 1.0)):
        cfg = load_config(r.base, [f"{k}={dotlist_value(v)}" for k, v in r.all_overrides().items()])
        assert cfg.rl.algorithm == "grpo" and cfg.rl.steps == 150 and cfg.rl.initial_policy_kl_penalty == kl
        assert cfg.run_dir == f"runs/kl_testbed/{r.name}"
