"""The RL loop end to end on a tiny testbed base (real megatron model, sampler, sandbox scoring, gloo).

* One GRPO step and one PPO step at TP=2 equal the single-process step (losses, grad norms, entropy, KL,
  value loss within 1e-5), also the rollouts they sampled (same accuracy and format shares).
* An RL run killed after step 3 and resumed logs exactly the metrics of an uninterrupted run (mini-batches, cosine).
* Mini-batches (rl.train_batch_size): the ratio leaves 1, clip_frac > 0, the LRs follow config.rl.lr_at; a
  train batch of the whole rollout is the null step.
* Expert Iteration runs two rounds and fine-tunes on its kept solutions.
* Bad prompt files are clear errors naming file and line.
"""

from __future__ import annotations

import json

import pytest
from echo_testing import cli

from echo_megatron.rl.prompts import load_prompts

pytestmark = pytest.mark.multiproc

TINY_MODEL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.ffn_hidden_size=128",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("rlbase")
    tb = [f"testbed.out={d / 'tb'}", "testbed.n_train=400", "testbed.n_test=20"]
    recipe = "recipes/demo/testbed.yaml"
    cli(["testbed", recipe, *tb])
    cli(["preprocess", recipe, *tb])
    cli(
        [
            "pretrain",
            recipe,
            *tb,
            *TINY_MODEL,
            f"run_dir={d / 'base'}",
            "train.steps=30",
            "schedule.warmup_steps=5",
            "logging.progress_bar=false",
        ]
    )
    return d, tb


def _rl(
    base,
    name: str,
    recipe: str,
    extra: list[str],
    nproc: int = 1,
    env: dict | None = None,
    check: bool = True,
):
    d, tb = base
    args = [
        "rl",
        recipe,
        *tb,
        f"rl.base={d / 'base'}",
        f"run_dir={d / name}",
        "rl.num_rollout_samples=4",
        "rollout.n=4",
        "rollout.max_new_tokens=24",
        "rl.micro_batch_size=8",
        "logging.progress_bar=false",
        "rewards.sandbox_workers=1",
        *extra,
    ]
    return cli(args, nproc=nproc, env=env, check=check)


def _rows(run_dir) -> dict[int, dict]:
    out = {}
    for line in open(run_dir / "metrics.jsonl"):
        r = json.loads(line)
        if r["phase"] == "rl":
            out[r["step"]] = r
    return out


COMPARED = (
    "pg_loss",
    "grad_norm",
    "entropy",
    "clip_frac",
    "approx_kl",
    "value_loss",
    "critic_grad_norm",
    "kl",
    "accuracy",
    "reward",
    "share/code",
    "share/code_interp",
    "share/nl",
    "response_len",
    "adv_mean",
)


@pytest.mark.parametrize(
    "recipe, extra",
    [
        # the tiny base rarely solves a problem: the entropy bonus makes sure step 1 moves the policy
        ("recipes/demo/grpo_testbed.yaml", ["rl.initial_policy_kl_penalty=0.01", "rl.entropy_bonus=0.01"]),
        ("recipes/demo/ppo_testbed.yaml", ["rl.initial_policy_kl_penalty=0.01"]),
    ],
    ids=["grpo", "ppo"],
)
def test_tp2_step_equals_single_process(base, recipe, extra):
    d, _ = base
    name = recipe.split("/")[-1].split("_")[0]
    common = ["rl.steps=2", "checkpoint.save_interval=0", *extra]
    _rl(base, f"{name}_tp1", recipe, common)
    _rl(base, f"{name}_tp2", recipe, [*common, "parallel.tp=2"], nproc=2)
    a, b = _rows(d / f"{name}_tp1"), _rows(d / f"{name}_tp2")
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        for key in COMPARED:
            if key in a[step]:
                assert abs(a[step][key] - b[step][key]) <= 1e-5 * max(1.0, abs(a[step][key])), (step, key)
    assert "kl" in a[2] and a[2]["kl"] != 0.0  # the reference model is in play


def test_resume_after_kill_is_exact(base):
    """With mini-batches (2 shuffled optimizer steps per rollout) and a warmup + cosine schedule."""
    d, _ = base
    recipe = "recipes/demo/grpo_testbed.yaml"
    common = [
        "rl.steps=4",
        "checkpoint.save_interval=2",
        "rl.train_batch_size=8",
        "rl.entropy_bonus=0.01",
        "rl.lr_warmup_ratio=0.25",
        "rl.lr_decay_style=cosine",
        "rl.min_lr_ratio=0.1",
    ]
    _rl(base, "full", recipe, common)
    r = _rl(base, "killed", recipe, common, env={"ECHO_FAULT": "kill_at_step:3"}, check=False)
    assert r.returncode != 0
    _rl(base, "killed", recipe, common)
    a, b = _rows(d / "full"), _rows(d / "killed")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        for key in (*COMPARED, "lr", "updates"):
            if key in a[step]:
                assert a[step][key] == b[step][key], (step, key)
    assert a[1]["updates"] == 2.0 and a[1]["lr"] < a[2]["lr"] > a[4]["lr"]  # warmup, then the decay


def test_minibatches_move_the_ratio_and_follow_the_schedules(base):
    """rl.train_batch_size 8 of a 16-sample rollout, 2 ppo epochs: 4 actor and 4 critic steps per rollout. The
    old log-probs are the rollout's, so after the first update the ratio leaves 1 and the clip acts; the logged
    LRs are the means of config.rl.lr_at over each rollout's updates; checkpoint.save_steps adds step 1."""
    from echo_megatron.config.rl import LRSchedule, lr_at

    d, _ = base
    extra = [
        "rl.steps=2",
        "rl.train_batch_size=8",
        "rl.ppo_epochs=2",
        "rl.actor_lr=3e-3",  # a large step on the tiny base, so some ratios leave [0.8, 1.2]
        "rl.lr_warmup_ratio=0.2",  # ceil(0.2 x 2 rollouts x 4 updates) = 2 warmup steps
        "rl.lr_decay_style=cosine",
        "rl.min_lr_ratio=0.1",
        "rl.critic_min_lr=1e-5",
        "rl.loss_agg=micro_token_mean",
        "checkpoint.save_interval=0",
        "checkpoint.save_steps=[1]",
    ]
    _rl(base, "minibatch", "recipes/demo/ppo_testbed.yaml", extra)
    rows = _rows(d / "minibatch")
    actor = LRSchedule(3e-3, 3e-4, 2, "cosine", 8)
    critic = LRSchedule(3e-4, 1e-5, 2, "cosine", 8)  # ppo_testbed's critic_lr, the absolute floor
    for step, r in rows.items():
        assert r["updates"] == 4.0
        assert r["clip_frac"] > 0.0 and r["ratio"] != 1.0
        ks = range((step - 1) * 4, step * 4)
        assert r["lr"] == pytest.approx(sum(lr_at(actor, k) for k in ks) / 4, rel=1e-9)
        assert r["critic_lr"] == pytest.approx(sum(lr_at(critic, k) for k in ks) / 4, rel=1e-9)
    saved = sorted(p.name for p in (d / "minibatch" / "checkpoints").glob("iter_*"))
    assert saved == ["iter_0000001", "iter_0000002"]


def test_a_train_batch_of_the_whole_rollout_is_the_null_step(base):
    """rl.train_batch_size = the rollout (16) is one optimizer step on the shuffled rows: the step of
    train_batch_size null (the rows in order) up to the order of the sums."""
    d, _ = base
    recipe = "recipes/demo/grpo_testbed.yaml"
    common = ["rl.steps=2", "checkpoint.save_interval=0", "rl.initial_policy_kl_penalty=0.01"]
    common += ["rl.entropy_bonus=0.01"]
    _rl(base, "null_tbs", recipe, common)
    _rl(base, "whole_tbs", recipe, [*common, "rl.train_batch_size=16"])
    a, b = _rows(d / "null_tbs"), _rows(d / "whole_tbs")
    for step in a:
        assert a[step]["updates"] == b[step]["updates"] == 1.0
        assert a[step]["ratio"] == pytest.approx(1.0, abs=1e-6) and a[step]["clip_frac"] == 0.0
        for key in ("pg_loss", "grad_norm", "entropy", "kl", "accuracy", "response_len"):
            assert abs(a[step][key] - b[step][key]) <= 1e-5 * max(1.0, abs(a[step][key])), (step, key)


def test_expert_iteration_two_rounds(base):
    d, _ = base
    _rl(
        base,
        "ei",
        "recipes/demo/ei_testbed.yaml",
        [
            "rl.ei_rounds=2",
            "rl.ei_samples=8",
            "rl.ei_sft_batch=8",
            "rl.ei_sft_epochs=1",
            "rl.ei_accumulate=false",
            "rl.ei_max_new_tokens=12",
            "rl.lr_warmup_ratio=0.5",
            "rl.lr_decay_style=linear",
            "rl.min_lr_ratio=0.1",
        ],
    )
    rows = _rows(d / "ei")
    assert sorted(rows) == [1, 2]
    for r in rows.values():
        assert r["ei/samples"] == 4 * 8
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["response_len"] <= 12  # rl.ei_max_new_tokens, not rollout.max_new_tokens (24)
        assert r["ei/total_kept"] == r["ei/kept"]  # this round's correct samples only
        if "sft_steps" in r:  # warmup from 0 over ceil(0.5 x steps), linear to 0.1 x 1e-4
            assert r["lr"] < 1e-4 and r["sft_lr_last"] < 1e-4
    assert (d / "ei" / "samples" / "ei_round_2.jsonl").exists()
    assert (d / "ei" / "checkpoints" / "latest").read_text().strip() == "iter_0000002"


def test_bad_prompt_files(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"question": "q1", "answer": "1"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: prompt has no 'answer'"):
        load_prompts(str(p))
    p.write_text('{"question": "q1", "answer": "1"}\nnot json\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: malformed JSON"):
        load_prompts(str(p))
