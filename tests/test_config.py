"""Config loading: presets, inheritance, overrides and clear errors (exit 2) for bad keys and types."""

from __future__ import annotations

import subprocess
import sys

import pytest
from echo_testing import REPO

from echo_megatron.config import ConfigError, load_config


def test_preset_then_recipe_then_override(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {preset: paper_150m}\ntrain: {steps: 7}\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmodel: {num_layers: 3}\n")
    cfg = load_config(str(child), ["train.steps=9"])
    assert cfg.model.hidden_size == 768  # from the preset
    assert cfg.model.num_layers == 3  # recipe beats preset
    assert cfg.train.steps == 9  # command line beats recipe


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.hidden_sise=64", "model.hidden_sise"),
        ("train.steps=abc", "train.steps"),
        ("parallel.tp=1.5", "parallel.tp"),
    ],
)
def test_bad_override_names_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_key_in_file_names_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optimizer: {lr_typo: 1.0}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "optimizer.lr_typo" in str(e.value) and str(p) in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(None, ["model.preset=nope"])


def test_cli_exit_status_2(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train: {steps: 1}\n")
    r = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "config", str(p), "model.hidden_sise=64"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "model.hidden_sise" in r.stderr


def test_child_recipe_preset_wins(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {preset: paper_150m}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel: {preset: paper_1b}\n")
    assert load_config(str(tmp_path / "child.yaml")).model.hidden_size == 2048


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epochs=1"], r"train.steps \(100\) and train.epochs \(1.0\) are both set"),
        (["train.steps=null"], "train.steps and train.epochs are both null"),
        (["train.steps=null", "train.epochs=-1"], "train.epochs must be > 0"),
        (["checkpoint.save_steps=[5,0]"], r"checkpoint.save_steps must be steps >= 1, got \[0\]"),
        (["rl.lr_decay_style=exp"], "rl.lr_decay_style: unknown 'exp'"),
        (["rl.lr_warmup_ratio=1.0"], r"rl.lr_warmup_ratio must be in \[0, 1\)"),
        (["rl.min_lr_ratio=1.5"], r"rl.min_lr_ratio must be in \[0, 1\]"),
        (["rl.critic_min_lr=-1e-7"], "rl.critic_min_lr must be >= 0"),
        (["rl.prompt_template=chat"], "rl.prompt_template: unknown 'chat' \\(separator \\| raw\\)"),
        (["rl.ei_max_new_tokens=0"], "rl.ei_max_new_tokens must be >= 1"),
        (["rl.train_batch_size=0"], "rl.train_batch_size must be >= 1"),
        (["rl.loss_agg=sum"], "rl.loss_agg: unknown 'sum' \\(token_mean \\| .* \\| micro_token_mean\\)"),
        (["rl.ppo_epochs=0"], "rl.ppo_epochs must be >= 1"),
        (
            ["rl.train_batch_size=48"],
            r"rl.train_batch_size \(48\) must divide the rollout: .* = 64 x 8 = 512",
        ),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_value_errors_exit_2_naming_the_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("rl: {train_batch_size: 7}\n")
    r = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "config", str(p)], capture_output=True, text=True
    )
    assert r.returncode == 2 and str(p) in r.stderr and "rl.train_batch_size (7) must divide" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_rl_lr_schedule_is_the_papers():
    """Warmup ceil(3% x steps), cosine to 0.1 x each peak; the critic's absolute floor (docs/paper.md)."""
    from echo_megatron.config.rl import rl_lr_schedule

    rl = load_config("recipes/paper/rl/150m_ppo.yaml").rl
    actor = rl_lr_schedule(rl, "actor", 9340)  # the paper's horizon: 10 x (7,473 x 8 // 64)
    assert (actor.peak, actor.floor, actor.warmup_steps, actor.decay_style) == (1e-6, 1e-7, 281, "cosine")
    critic = rl_lr_schedule(rl, "critic", 9340)
    assert (critic.peak, critic.floor) == (1e-6, 7e-7)  # the code's critic: the actor's LR, floor 0.1 x 7e-6
    sft = rl_lr_schedule(load_config("recipes/paper/rl/150m_ei.yaml").rl, "ei_sft", 58)
    assert (sft.peak, sft.floor, sft.warmup_steps) == (1e-4, 1e-4 * 0.1, 2)
    demo = rl_lr_schedule(load_config("recipes/demo/grpo_testbed.yaml").rl, "actor", 40)
    assert (demo.floor, demo.warmup_steps, demo.decay_style) == (
        demo.peak,
        0,
        "constant",
    )  # defaults: constant


def test_lr_at_is_megatrons_scheduler_step_by_step():
    """The RL / EI schedule a Trainable runs (training/setup.py param_scheduler, megatron's
    OptimizerParamScheduler, one step per optimizer step) gives optimizer step k the LR lr_at(schedule, k)."""
    import torch

    from echo_megatron.config.rl import LRSchedule, lr_at, updates_per_rollout
    from echo_megatron.training.setup import param_scheduler

    for style, peak, floor, warmup, total in (
        ("cosine", 1e-6, 1e-7, 3, 20),
        ("linear", 2e-4, 5e-5, 0, 7),
        ("constant", 1e-4, 1e-5, 2, 6),
    ):
        s = LRSchedule(peak, floor, warmup, style, total)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
        sched = param_scheduler(opt, s.peak, s.floor, s.warmup_steps, s.total_steps, s.decay_style, 0.0)
        seen = []
        for _ in range(total + 2):  # two steps past the horizon: the floor
            seen.append(opt.param_groups[0]["lr"])
            sched.step(increment=1)
        assert seen == pytest.approx([lr_at(s, k) for k in range(total + 2)], rel=1e-12, abs=0), style
    # hand values: warmup 3 of 20, cosine 1e-6 -> 1e-7
    s = LRSchedule(1e-6, 1e-7, 3, "cosine", 20)
    assert [lr_at(s, k) for k in (0, 1, 3)] == pytest.approx([0.0, 1e-6 / 3, 1e-6])
    assert lr_at(s, 3 + 17 / 2) == pytest.approx(1e-7 + 0.9e-6 * 0.5)  # half way: the mean of peak and floor
    assert lr_at(s, 20) == lr_at(s, 99) == pytest.approx(1e-7)
    # the paper: 512 samples / 64 per step = 8 optimizer steps a rollout; null: 1; ppo_epochs multiplies
    rl = load_config("recipes/paper/rl/150m_ppo.yaml").rl
    assert updates_per_rollout(rl, 8) == 8
    demo = load_config("recipes/demo/grpo_testbed.yaml", ["rl.ppo_epochs=2"]).rl
    assert updates_per_rollout(demo, 8) == 2


def test_prompt_templates():
    from echo_megatron.data.prompt import prompt_text

    assert prompt_text("Q?") == "Q?\n\n" and prompt_text("Q?", "raw") == "Q?"
    with pytest.raises(ValueError, match="unknown prompt template 'chat'"):
        prompt_text("Q?", "chat")
    assert load_config("recipes/paper/rl/1b_grpo.yaml").rl.prompt_template == "raw"


def test_slurm_times_stay_strings(tmp_path):
    """YAML 1.1 reads ``30:00`` as the base-60 integer 1800, which Slurm would take as 1,800 minutes."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {REPO / 'recipes' / 'tiny_cpu.yaml'}\ncluster:\n  time: 30:00\n")
    assert load_config(str(recipe)).cluster.time == "30:00"
    assert load_config(str(recipe), ["cluster.time=1:30:00"]).cluster.time == "1:30:00"
    cfg = load_config(str(recipe), ["train.steps=12", "optimizer.lr=3e-4", "parallel.tp=0x2"])
    assert (cfg.train.steps, cfg.optimizer.lr, cfg.parallel.tp) == (12, 3e-4, 2)  # other scalars as before
