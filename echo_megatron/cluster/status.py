"""Where each stage of a submitted run is: Slurm's view of the job plus what the run directory holds.

Reads only ROOT/slurm/submission.json (written by ``submit``), the run-dir layout (metrics.jsonl,
checkpoints/latest, eval/*.json, config.yaml) and ``scontrol show job``; a run directory copied off the
cluster (or made without ``submit``) still shows its progress, with the Slurm columns empty.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass

from omegaconf import OmegaConf

from echo_megatron.cluster import slurm
from echo_megatron.cluster.submit import RECORD
from echo_megatron.rundir import RunDir, read_metrics

# command -> (metrics phase, config key holding the number of steps)
PHASES = {"pretrain": ("pretrain", "train.steps"), "rl": ("rl", "rl.steps")}


@dataclass
class Row:
    stage: str
    job: str  # job id, "id_task" for an array task, "" when not submitted through Slurm
    state: str  # Slurm's JobState (+ reason when pending), or "-" when Slurm does not know the job
    restarts: int
    progress: str
    checkpoint: str
    run_dir: str


def _steps_total(run_dir: str, key: str, fallback_config: str | None) -> int | None:
    for path in (RunDir(run_dir).config, fallback_config):
        if path and os.path.isfile(path):
            cfg = OmegaConf.load(path)
            if key == "rl.steps" and OmegaConf.select(cfg, "rl.algorithm") == "ei":
                key = "rl.ei_rounds"  # an Expert Iteration run logs one step per round
            value = OmegaConf.select(cfg, key, default=None)
            if value is not None:
                return int(value)
    return None


def progress(run_dir: str, command: str, config: str | None = None) -> str:
    """A one-line summary of what ``run_dir`` holds for ``command``."""
    if command == "eval" or (command not in PHASES and os.path.isdir(RunDir(run_dir).eval)):
        parts = []
        for path in sorted(glob.glob(os.path.join(RunDir(run_dir).eval, "*.json"))):
            try:
                with open(path, encoding="utf-8") as f:
                    res = json.load(f)
                parts.append(
                    f"{res.get('task', os.path.basename(path)[:-5])} pass@1 {float(res['pass@1']):.3f}"
                )
            except (OSError, ValueError, KeyError, TypeError):
                parts.append(f"{os.path.basename(path)} unreadable")
        if parts or command == "eval":
            return ", ".join(parts) or "no results yet"
    phase, key = PHASES.get(command, (None, None))
    try:
        rows = read_metrics(run_dir, phase)
    except ValueError as e:
        return f"metrics unreadable: {e}"
    if not rows:  # data commands (testbed, preprocess) write no metrics: nothing to show
        return "not started" if command in PHASES else "-"
    last = rows[-1]
    total = _steps_total(run_dir, key, config) if key else None
    text = f"step {last.get('step')}" + (f"/{total}" if total else "")
    for name in ("loss", "reward", "accuracy"):
        if isinstance(last.get(name), (int, float)):
            text += f" {name} {last[name]:.4g}"
    return text


def latest_checkpoint_name(run_dir: str) -> str:
    path = os.path.join(RunDir(run_dir).checkpoints, "latest")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "-"


def _task_ids(spec: str) -> set[int]:
    """'3' / '0-3' / '0,2-3%2' -> the task ids it covers."""
    ids: set[int] = set()
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            ids.update(range(int(a), int(b) + 1))
        elif part.isdigit():
            ids.add(int(part))
    return ids


def slurm_states(job_id: str, array: bool) -> dict[int, dict[str, str]]:
    """task index (0 for a plain job) -> Slurm's record of it."""
    out: dict[int, dict[str, str]] = {}
    for rec in slurm.show_job(job_id):
        if not array:
            out[0] = rec
            continue
        for i in _task_ids(rec.get("ArrayTaskId", "")):
            out[i] = rec
    return out


def _state(rec: dict[str, str] | None) -> tuple[str, int]:
    if not rec:
        return "-", 0
    state = rec.get("JobState", "?")
    reason = rec.get("Reason", "None")
    if reason not in ("None", "(null)") and state != "COMPLETED":
        state += f" ({reason})"
    return state, int(rec.get("Restarts", "0") or 0)


def collect(root: str) -> list[Row]:
    """One row per stage (per array task) of the submission in ``root``, or one row for a plain run dir."""
    record_path = RunDir(root).slurm_file(RECORD)
    if not os.path.isfile(record_path):
        command = "pretrain"
        phases = (
            {r.get("phase") for r in read_metrics(root)} if os.path.isfile(RunDir(root).metrics) else set()
        )
        if "rl" in phases:
            command = "rl"
        elif not phases and os.path.isdir(RunDir(root).eval):
            command = "eval"
        return [Row(command, "", "-", 0, progress(root, command), latest_checkpoint_name(root), root)]
    with open(record_path, encoding="utf-8") as f:
        record = json.load(f)
    rows = []
    for stage in record["stages"]:
        states = slurm_states(stage["job_id"], stage["array"])
        for task in stage["tasks"]:
            state, restarts = _state(states.get(task["index"]))
            job = f"{stage['job_id']}_{task['index']}" if stage["array"] else stage["job_id"]
            name = f"{stage['name']}[{task['index']}]" if stage["array"] else stage["name"]
            rows.append(
                Row(
                    name,
                    job,
                    state,
                    restarts,
                    progress(task["run_dir"], stage["command"], task.get("config")),
                    latest_checkpoint_name(task["run_dir"]),
                    task["run_dir"],
                )
            )
    return rows


def format_rows(rows: list[Row], root: str) -> str:
    """A plain-text table; run dirs are shown relative to ``root``."""
    header = ("stage", "job", "state", "restarts", "progress", "checkpoint", "run dir")
    table = [header]
    for r in rows:
        rel = os.path.relpath(r.run_dir, root)
        table.append((r.stage, r.job or "-", r.state, str(r.restarts), r.progress, r.checkpoint, rel))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines) + "\n"


def stage_state(rows: list[Row], stage: str) -> str:
    """The Slurm state word of a stage's row (without the reason), for scripts and tests."""
    for r in rows:
        if r.stage == stage:
            return re.split(r"\s", r.state, maxsplit=1)[0]
    raise KeyError(stage)
