"""The capacity planner: its formulas against the papers they cite, its parameter count against the real
model, its weights + optimizer memory against a measured CPU run, and the `plan` command's output."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from echo_megatron.cluster import plan
from echo_megatron.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_1B = os.path.join(REPO, "recipes", "paper", "1b_pretrain.yaml")


def _model(**kw) -> OmegaConf:
    return load_config(None, [f"model.{k}={v}" for k, v in kw.items()]).model


def test_activations_reproduce_korthikanti_equations():
    """With the paper's assumptions (GELU MLP of 4h, MHA, dropout, no flash attention) the per-layer bytes
    are s·b·h·(34 + 5as/h) (Eq. 1), s·b·h·(10 + 24/t + 5as/(ht)) with TP (Eq. 2) and /t with TP+SP (Eq. 3);
    full recompute keeps 2·s·b·h per layer."""
    s, b, h, a = 2048, 4, 4096, 32
    m = _model(
        seq_length=s,
        hidden_size=h,
        num_attention_heads=a,
        ffn_hidden_size=4 * h,
        activation="gelu",
        attention_dropout=0.1,
        hidden_dropout=0.1,
    )
    sbh = s * b * h
    assert plan.activation_bytes_per_layer(m, b, 1, False, flash=False) == pytest.approx(
        sbh * (34 + 5 * a * s / h)
    )
    for t in (2, 4, 8):
        eq2 = sbh * (10 + 24 / t + 5 * a * s / (h * t))
        eq3 = sbh / t * (34 + 5 * a * s / h)
        assert plan.activation_bytes_per_layer(m, b, t, False, flash=False) == pytest.approx(eq2)
        assert plan.activation_bytes_per_layer(m, b, t, True, flash=False) == pytest.approx(eq3)
    # flash attention (no s x s term) without dropout: 34 - 2 masks = 32 plus a tiny log-sum-exp term
    m2 = _model(seq_length=s, hidden_size=h, num_attention_heads=a, ffn_hidden_size=4 * h, activation="gelu")
    flash = plan.activation_bytes_per_layer(m2, b, 1, False, flash=True)
    assert flash == pytest.approx(sbh * (32 + 4 * a / h))


def test_state_bytes_per_parameter_follow_megatron_table():
    """Megatron-LM 'Distributed Optimizer' table: bf16 18 -> 6 + 12/d; fp32 16 -> 8 + 8/d."""
    for d in (1, 8, 64):
        w, g, o = plan.state_bytes_per_param("bf16", False, d)
        assert (w, g, o) == (2, 4, 12)
        assert sum(plan.state_bytes_per_param("bf16", True, d)) == pytest.approx(6 + 12 / d)
        assert sum(plan.state_bytes_per_param("fp32", False, d)) == 16
        assert sum(plan.state_bytes_per_param("fp32", True, d)) == pytest.approx(8 + 8 / d)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.preset=tiny"],
        ["model.preset=paper_150m"],
        ["model.preset=paper_1b"],
        ["model.preset=3b"],  # GQA + RMSNorm + untied
        [
            "model.num_layers=3",
            "model.hidden_size=96",
            "model.num_attention_heads=6",
            "model.activation=gelu",
            "model.normalization=LayerNorm",
            "model.position_embedding_type=learned_absolute",
            "model.add_bias_linear=true",
            "model.vocab_size=1000",
        ],
    ],
    ids=["tiny", "150m", "1b", "3b", "gelu-layernorm-bias-learned"],
)
def test_parameter_count_matches_the_built_model(overrides):
    """The analytic count equals a meta-device build of the real megatron GPTModel."""
    from echo_megatron.model.params import count_parameters

    cfg = load_config(None, overrides)
    built = count_parameters(cfg)["total"]
    assert plan.count_params(cfg.model).total == built


def test_planner_pads_the_vocabulary_as_the_model_does():
    """The model pads 32,000 tokens to a multiple of 128 at every TP size that divides 128 (32,000 rows at TP 4,
    where Megatron-LM's rule, a multiple of 128 x 4, gives 32,256): the plan counts the model's rows at every
    layout, in its parameters and in its logits memory."""
    from echo_megatron.model.params import count_parameters
    from echo_megatron.model.vocab import padded_vocab_size

    cfg = load_config(None, ["model.preset=paper_150m"])
    built = count_parameters(cfg)
    for tp in (1, 2, 4, 8):
        assert padded_vocab_size(32000, 128, tp) == 32000
        pc = plan.count_params(cfg.model, tp)
        assert pc.embedding == 32000 * 768 and pc.total == built["total"], tp
        assert plan.logits_bytes(cfg.model, 1, tp) == 4.0 * 2048 * 32000 / tp


def test_the_most_loaded_pipeline_stage_is_counted():
    cfg = load_config(None, ["model.preset=7b"])
    pc = plan.count_params(cfg.model)
    assert plan.stage_params(pc, 1) == pc.total
    # 8 layers per stage; the last stage (final norm + untied output layer) outweighs the first (embedding)
    assert plan.stage_params(pc, 4) == 8 * pc.per_layer + pc.final_norm + pc.output_layer


def test_step_time_is_flops_over_mfu_times_peak():
    cfg = load_config(RECIPE_1B, ["cluster.mfu=0.5"])
    flops = plan.flops_per_step(cfg)
    n = plan.count_params(cfg.model).total
    tokens = cfg.train.global_batch_size * cfg.model.seq_length
    assert flops == pytest.approx(
        (6 * n + 6 * cfg.model.num_layers * cfg.model.seq_length * cfg.model.hidden_size) * tokens
    )
    assert plan.step_seconds(cfg, 16, recompute=False) == pytest.approx(flops / (16 * 989e12 * 0.5))
    assert plan.step_seconds(cfg, 16, recompute=True) == pytest.approx(flops / (16 * 989e12 * 0.5) * 4 / 3)
    hours = plan.estimate_gpu_hours(
        load_config(RECIPE_1B, ["cluster.nodes=1", "train.epochs=null", "train.steps=100"])
    )
    assert hours == pytest.approx(plan.step_seconds(load_config(RECIPE_1B), 8) * 100 * 8 / 3600)
    # the recipe's length is one mixture epoch: no price until its sources are preprocessed
    unknown = load_config(RECIPE_1B, ["cluster.nodes=1", "data.indexed_dir=/nonexistent"])
    assert plan.run_steps(unknown) is None and math.isnan(plan.estimate_gpu_hours(unknown))


# A CPU run of the real trainer's model + megatron optimizer: peak RSS after one step minus RSS before the
# build. glibc is told to return freed blocks (a fixed mmap threshold), so RSS is live memory, not heap
# left over from initialisation.
_MEASURE = textwrap.dedent(
    """
    import gc, json, resource, sys
    import psutil, torch
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import destroy, initialize
    from echo_megatron.training.setup import build_train_state
    from echo_megatron.training.step import lm_loss, train_step

    cfg = load_config(None, sys.argv[1:])
    _, device = initialize(cfg)
    gc.collect()
    rss0 = psutil.Process().memory_info().rss
    state = build_train_state(cfg, cfg.model.vocab_size, device, total_steps=1)
    s = cfg.model.seq_length
    tokens = torch.randint(0, cfg.model.vocab_size, (1, s))
    mb = {"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "loss_mask": torch.ones(1, s),
          "position_ids": torch.arange(s)[None]}
    train_step(state.model, state.optimizer, state.scheduler, [mb], lm_loss, s)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"delta": peak - rss0, "params": sum(p.numel() for p in state.model[0].parameters())}))
    destroy()
    """
)


def test_weights_and_optimizer_memory_match_a_measured_cpu_run():
    """fp32 on CPU: weights 4 + grads 4 + Adam m, v 8 bytes per parameter, within 20% of the peak RSS."""
    overrides = [
        "model.num_layers=8",
        "model.hidden_size=512",
        "model.num_attention_heads=8",
        "model.ffn_hidden_size=2048",
        "model.vocab_size=16384",
        "model.seq_length=32",  # activations of 1 x 32 tokens: negligible next to 50 M parameters
        "parallel.device=cpu",
        "train.precision=fp32",
        "train.micro_batch_size=1",
        "train.global_batch_size=1",
        "train.threads=1",
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_TRIM_THRESHOLD_="1048576")
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *overrides],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    cfg = load_config(None, overrides)
    mem = plan.memory(cfg, plan.layout_of(cfg, 1, 1))
    predicted = mem.weights + mem.grads + mem.optimizer
    assert mem.params_per_gpu == measured["params"]
    assert abs(predicted - measured["delta"]) <= 0.20 * measured["delta"], (predicted, measured)


def test_plan_command_prints_the_memory_table(capsys):
    from echo_megatron.cli import main

    assert main(["plan", RECIPE_1B, "--nodes", "2", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    for text in (
        "2 node(s) x 8 GPUs = 16 GPUs",
        "weights",
        "gradients",
        "optimizer states",
        "distributed optimizer",
        "activations, no recompute",
        "activations, full recompute",
        "fits *",  # the recipe's own choice (distributed optimizer, no recompute) fits
        "suggested for paper_1b: tp=1 pp=1 dp=16",
        "PFLOP per step",
        "GPU-h",
    ):
        assert text in out, text


def test_plan_flags_a_7b_that_does_not_fit_without_model_parallelism(capsys):
    from echo_megatron.cli import main

    assert main(["plan", RECIPE_1B, "model.preset=7b", "--nodes", "4", "--gpus-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert "OOM  *" in out  # tp=1 with the recipe's settings runs out of memory
    assert "suggested for 7b: tp=4 +SP pp=1 dp=8" in out
    assert "smallest layout that fits: tp=" in out


def test_estimate_gpu_hours_prices_rl_runs():
    cfg = load_config(RECIPE_1B, ["rl.base=runs/x/checkpoints", "rl.steps=100", "cluster.nodes=1"])
    h100 = plan.estimate_gpu_hours(cfg)
    h200 = plan.estimate_gpu_hours(load_config(RECIPE_1B, ["rl.base=x", "rl.steps=200", "cluster.nodes=1"]))
    assert h100 > 0 and h200 == pytest.approx(2 * h100)
    assert math.isnan(plan.estimate_gpu_hours(load_config(RECIPE_1B, ["rl.base=x", "rl.algorithm=ei"])))
