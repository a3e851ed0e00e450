"""The one run-directory layout that every command reads and writes.

RUN_DIR/
  config.yaml                              the resolved config, as run
  metrics.jsonl                            one JSON object per logged step: {"step", "phase", ...named values}
  checkpoints/iter_NNNNNNN/ + latest        dist_checkpointing layout; ``latest`` written last
  checkpoints/critic/iter_NNNNNNN/         PPO's critic
  samples/step_NNNNNNN.jsonl               generations with format, answer, reward
  samples/ei_round_R.jsonl                 Expert Iteration's SFT set after round R (accumulated)
  eval/<task>.json + eval/<task>.generations.jsonl
  eval/steps/<task>.NNNNNNN.json           every eval of the run by step (eval/<task>.json is the latest)
  tb/                                      TensorBoard events
  wandb_id                                 the W&B run id (a requeued job continues the same W&B run)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunDir:
    root: str

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def metrics(self) -> str:
        return os.path.join(self.root, "metrics.jsonl")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    @property
    def samples(self) -> str:
        return os.path.join(self.root, "samples")

    @property
    def eval(self) -> str:
        return os.path.join(self.root, "eval")

    @property
    def tb(self) -> str:
        return os.path.join(self.root, "tb")

    @property
    def wandb_id(self) -> str:
        return os.path.join(self.root, "wandb_id")

    @property
    def critic_checkpoints(self) -> str:
        return os.path.join(self.checkpoints, "critic")

    @property
    def slurm(self) -> str:
        return os.path.join(self.root, "slurm")

    def slurm_file(self, name: str) -> str:
        return os.path.join(self.slurm, name)

    def samples_file(self, step: int) -> str:
        return os.path.join(self.samples, f"step_{step:07d}.jsonl")

    def ei_round_file(self, rnd: int) -> str:
        return os.path.join(self.samples, f"ei_round_{rnd}.jsonl")

    def eval_file(self, task: str) -> str:
        return os.path.join(self.eval, f"{task}.json")

    def eval_generations(self, task: str) -> str:
        return os.path.join(self.eval, f"{task}.generations.jsonl")

    @property
    def eval_steps(self) -> str:
        return os.path.join(self.eval, "steps")

    def eval_step_file(self, task: str, step: int) -> str:
        """One eval of ``task`` at checkpoint ``step``, kept when a later checkpoint is evaluated."""
        return os.path.join(self.eval_steps, f"{task}.{step:07d}.json")

    def make(self) -> RunDir:
        for d in (self.root, self.checkpoints, self.samples, self.eval):
            os.makedirs(d, exist_ok=True)
        return self


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def persistent_run_id(path: str) -> str:
    """The id stored in ``path``, or a new 8-character one stored there first (W&B's id alphabet)."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            run_id = f.read().strip()
        if run_id:
            return run_id
    import secrets

    run_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
    write_text_atomic(path, run_id + "\n")
    return run_id


def read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a killed writer) is skipped, any other bad line raises."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not line.endswith("\n"):
                return
            raise ValueError(f"{path}:{i}: malformed JSON line: {e}") from e


def read_metrics(run_dir: str, phase: str | None = None) -> list[dict[str, Any]]:
    path = RunDir(run_dir).metrics
    if not os.path.exists(path):
        return []
    rows = [r for r in read_jsonl(path) if phase is None or r.get("phase") == phase]
    # A resumed run re-logs steps after its last checkpoint: keep the last row of each (phase, step).
    last: dict[tuple, dict] = {}
    for r in rows:
        last[(r.get("phase"), r.get("step"))] = r
    return sorted(last.values(), key=lambda r: (str(r.get("phase")), r.get("step", 0)))
