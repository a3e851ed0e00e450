"""Exact resume, crash consistency, preemption signals and resharding of checkpoints (real runs).

* 10 uninterrupted steps vs. a run SIGKILLed *inside* the save of step 10 (after its shards are written)
  and resumed: the killed save leaves ``latest`` at step 5, the resumed run redoes 6..10 and every logged
  loss is identical (bit for bit: same data position, optimizer, scheduler and RNG).
* The same with the distributed optimizer on 2 data-parallel ranks.
* SIGTERM mid-run: the trainer finishes the step, saves and exits 0; rerunning finishes the run.
* A checkpoint saved at TP=2 loads at TP=1 (dist_checkpointing reshards) and continues with the same loss.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from echo_testing import REPO, assert_close_losses, cli, losses, make_indexed_dataset, write_recipe

from echo_megatron.checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    a = make_indexed_dataset(str(d / "a"), 200, vocab=512, seed=3)
    b = make_indexed_dataset(str(d / "b"), 200, vocab=512, seed=4)
    return d, write_recipe(
        d / "r.yaml",
        f"""
data:
  mock: false
  blend: [{{prefix: {a}, weight: 0.5}}, {{prefix: {b}, weight: 0.5}}]
train: {{steps: 10, global_batch_size: 8, micro_batch_size: 2}}
checkpoint: {{save_interval: 5, keep_last: 3}}
logging: {{progress_bar: false, tensorboard: false}}
""",
    )


@pytest.mark.parametrize(
    "nproc, extra", [(1, []), (2, ["parallel.use_distributed_optimizer=true"])], ids=["single", "dp2_distopt"]
)
def test_sigkill_in_save_then_resume_is_exact(recipe, nproc, extra):
    d, r = recipe
    full, crashed = d / f"full{nproc}", d / f"crashed{nproc}"
    cli(["pretrain", r, f"run_dir={full}", *extra], nproc=nproc)
    res = cli(
        ["pretrain", r, f"run_dir={crashed}", *extra],
        nproc=nproc,
        env={"ECHO_FAULT": "kill_in_save:10"},
        check=False,
    )
    assert res.returncode != 0  # killed
    ckpts = crashed / "checkpoints"
    assert latest_checkpoint(str(ckpts)).endswith("iter_0000005")
    assert (ckpts / "iter_0000010.tmp").is_dir()  # the torn save is left aside, never pointed at
    cli(["pretrain", r, f"run_dir={crashed}", *extra], nproc=nproc)
    assert latest_checkpoint(str(ckpts)).endswith("iter_0000010")
    a, b = losses(full), losses(crashed)
    assert a == b, (a, b)  # identical, not merely close


def test_sigkill_mid_run_then_resume(recipe):
    d, r = recipe
    run = d / "killed"
    res = cli(["pretrain", r, f"run_dir={run}"], env={"ECHO_FAULT": "kill_at_step:7"}, check=False)
    assert res.returncode == -signal.SIGKILL
    cli(["pretrain", r, f"run_dir={run}"])
    assert losses(run) == losses(d / "full1")


def test_sigterm_saves_and_exits_zero(recipe):
    d, r = recipe
    run = d / "term"
    cmd = [
        sys.executable,
        "-m",
        "echo_megatron",
        "pretrain",
        r,
        f"run_dir={run}",
        "train.steps=100000",
        "checkpoint.save_interval=0",
    ]
    p = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out[-2000:]
    last = max(losses(run))
    assert latest_checkpoint(str(run / "checkpoints")).endswith(f"iter_{last:07d}")
    assert "stopping at step" in out


def test_save_tp2_load_tp1_same_loss(recipe):
    d, r = recipe
    tp2, tp1 = d / "tp2", d / "tp1"
    cli(["pretrain", r, f"run_dir={tp2}", "parallel.tp=2", "train.steps=6"], nproc=2)
    # Resume the TP=2 run at TP=1 from its step-5 checkpoint: step 6 must match the TP=2 run's step 6.
    (tp1 / "checkpoints").mkdir(parents=True)
    os.symlink(tp2 / "checkpoints" / "iter_0000005", tp1 / "checkpoints" / "iter_0000005")
    (tp1 / "checkpoints" / "latest").write_text("iter_0000005\n")
    cli(["pretrain", r, f"run_dir={tp1}", "train.steps=6"])
    assert_close_losses({6: losses(tp2)[6]}, losses(tp1), rtol=1e-5)


def test_missing_data_prefix_is_a_clear_error(tmp_path):
    r = write_recipe(
        tmp_path / "r.yaml", f"data: {{mock: false, blend: [{{prefix: {tmp_path}/nope, weight: 1.0}}]}}\n"
    )
    res = cli(["pretrain", r, f"run_dir={tmp_path / 'run'}"], check=False)
    assert res.returncode != 0
    assert f"{tmp_path}/nope.bin" in res.stderr and "echo-megatron preprocess" in res.stderr


def test_bad_key_exits_2_before_any_process_group():
    res = cli(["pretrain", str(REPO / "recipes" / "tiny_cpu.yaml"), "model.hidden_sise=64"], check=False)
    assert res.returncode == 2
    assert "model.hidden_sise" in res.stderr
    assert "Traceback" not in res.stderr
