"""Progress for people and for log files: a bar on a terminal, plain lines (no carriage returns) elsewhere;
and the W&B run id kept in the run directory, so a requeued job continues the same W&B run."""

from __future__ import annotations

import io
import re

from echo_testing import cli

from echo_megatron.rundir import RunDir, persistent_run_id
from echo_megatron.training.progress import Progress, format_duration, progress_line


def test_plain_lines_off_a_terminal_with_rate_eta_and_postfix():
    out = io.StringIO()
    p = Progress(10, "pretrain", initial=2, stream=out, interval_s=3600)
    for i in range(3, 11):
        p.update(1, loss=f"{1 / i:.4f}")
    p.close()
    p.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2  # the first update and the end (the interval is an hour)
    assert lines[0].startswith("[pretrain] 3/10 (30.0%) | loss 0.3333 | ")
    assert lines[1].startswith("[pretrain] 10/10 (100.0%) | loss 0.1000 | ")
    assert "eta" in lines[0] and "eta" not in lines[1]


def test_interval_zero_prints_every_update_and_disabled_prints_nothing():
    out = io.StringIO()
    p = Progress(4, "rl/grpo", stream=out, interval_s=0)
    for _ in range(4):
        p.update(1)
    p.close()
    assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == [
        f"[rl/grpo] {i}/4 ({25.0 * i:.1f}%)" for i in range(1, 5)
    ]
    quiet = io.StringIO()
    q = Progress(4, "x", enabled=False, stream=quiet)
    q.update(1)
    q.close()
    assert quiet.getvalue() == ""


def test_line_and_duration_format():
    assert (
        format_duration(5) == "5s" and format_duration(250) == "4m10s" and format_duration(11220) == "3h07m"
    )
    line = progress_line("eval/gsm8k", 50, 200, 10.0, 5.0, {"acc": "0.50"})
    assert line == "[eval/gsm8k] 50/200 (25.0%) | acc 0.50 | 10 it/s | elapsed 5s | eta 15s"


def test_pretrain_to_a_log_file_writes_readable_lines(tmp_path):
    run = tmp_path / "run"
    r = cli(
        ["pretrain", "recipes/tiny_cpu.yaml", f"run_dir={run}", "train.steps=6", "checkpoint.save_interval=0"]
    )
    assert "\r" not in r.stdout and "\r" not in r.stderr
    progress = [line for line in r.stdout.splitlines() if line.startswith("[pretrain] ")]
    assert progress and progress[-1].startswith("[pretrain] 6/6 (100.0%) | loss ")
    assert re.search(r"\| tok_s \d+ \|", progress[-1])


def test_wandb_run_id_is_made_once_and_kept(tmp_path):
    path = RunDir(str(tmp_path)).wandb_id
    first = persistent_run_id(path)
    assert re.fullmatch(r"[a-z0-9]{8}", first)
    assert persistent_run_id(path) == first  # the requeued job reads the same id
    assert open(path).read() == first + "\n"
