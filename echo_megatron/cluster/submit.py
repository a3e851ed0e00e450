"""Submit a recipe or a pipeline: resolve every stage, write its config and sbatch script, chain the jobs.

Files (ROOT = the pipeline's ``run_dir``, or a plain recipe's ``run_dir``)::

    ROOT/slurm/<stage>.yaml | <stage>.<task>.yaml   the resolved config each job runs
    ROOT/slurm/<stage>.sbatch                       the job script
    ROOT/slurm/<stage>-<jobid>.out                  its log (arrays: <stage>-<jobid>_<task>.out)
    ROOT/slurm/submission.json                      job ids, run dirs and dependencies (read by ``status``)
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass

from omegaconf import OmegaConf

from echo_megatron.cluster import slurm
from echo_megatron.cluster.pipeline import (
    Job,
    Pipeline,
    expand,
    load_pipeline,
    recipe_kind,
    single_stage,
    sweep_stage,
)
from echo_megatron.cluster.sbatch import config_path, render
from echo_megatron.config.loader import resolve_recipe
from echo_megatron.config.sweep import expand as expand_grid
from echo_megatron.config.sweep import load_grid
from echo_megatron.rundir import RunDir

RECORD = "submission.json"


@dataclass
class Rendered:
    job: Job
    name: str  # Slurm job name
    script_path: str
    script: str


def sweep_command(grid: str) -> str:
    """The command a sweep grid runs when ``--command`` is not given: rl when its runs set rl.base."""
    runs = expand_grid(load_grid(grid))
    return "rl" if all("rl.base" in r.overrides or "rl.base" in r.fixed for r in runs) else "pretrain"


def prepare(
    recipe: str, overrides: list[str], command: str | None = None, defaults: list[str] = ()
) -> tuple[Pipeline, str, list[Rendered]]:
    """(pipeline, root, rendered jobs) for a pipeline file, a sweep grid or a plain recipe run by ``command``.

    ROOT is the pipeline's run_dir, a plain recipe's run_dir, or the folder common to a sweep's run dirs.
    ``defaults`` (cluster.* from the submit flags) sit below a stage's own settings, ``overrides`` above.
    """
    recipe = resolve_recipe(recipe)  # recipes/paper/... names the shipped file from any folder
    kind = recipe_kind(recipe)
    if kind == "pipeline":
        pipeline = load_pipeline(recipe)
    elif kind == "sweep":
        pipeline = sweep_stage(recipe, command or sweep_command(recipe))
    else:
        pipeline = single_stage(recipe, command or "pretrain")
    jobs = expand(pipeline, overrides, defaults)
    dirs = [t.run_dir for j in jobs for t in j.tasks]
    root = pipeline.run_dir or (os.path.commonpath(dirs) if len(dirs) > 1 else dirs[0])
    workdir = os.getcwd()
    rendered = []
    for job in jobs:
        base = f"{pipeline.name}-{job.stage.name}" if pipeline.name else str(job.tasks[0].config.name)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base)[:64]
        path = RunDir(root).slurm_file(f"{job.stage.name}.sbatch")
        rendered.append(Rendered(job, name, path, render(job, root, workdir, name)))
    return pipeline, root, rendered


def dependency(job: Job, ids: dict[str, str]) -> str | None:
    """``afterok:1:2,aftercorr:3`` from the stage's dependencies and the job ids submitted so far."""
    parts: dict[str, list[str]] = {}
    for kind, stage in job.depends:
        parts.setdefault(kind, []).append(ids[stage])
    return ",".join(f"{kind}:{':'.join(v)}" for kind, v in parts.items()) or None


def dry_run(rendered: list[Rendered], out=sys.stdout) -> None:
    """Print each job's sbatch command line and script; writes and submits nothing."""
    for r in rendered:
        dep = dependency(r.job, {s: f"<{s}>" for _, s in r.job.depends})
        cmd = "sbatch --parsable" + (f" --dependency={dep} --kill-on-invalid-dep=yes" if dep else "")
        print(f"# ===== stage {r.job.stage.name}: {cmd} {r.script_path}", file=out)
        print(r.script, file=out)


def write_files(root: str, rendered: list[Rendered]) -> None:
    os.makedirs(RunDir(root).slurm, exist_ok=True)
    for r in rendered:
        for t in r.job.tasks:
            if t.args is None:  # a stage with args runs no config of ours
                OmegaConf.save(
                    t.config, config_path(root, r.job.stage.name, t.index if r.job.is_array else None)
                )
        with open(r.script_path, "w", encoding="utf-8") as f:
            f.write(r.script)
        os.chmod(r.script_path, 0o755)


def submit(pipeline: Pipeline, root: str, rendered: list[Rendered]) -> dict[str, str]:
    """Write the files, sbatch every stage in order (chained), record the ids; returns stage -> job id."""
    write_files(root, rendered)
    ids: dict[str, str] = {}
    for r in rendered:
        ids[r.job.stage.name] = slurm.sbatch(r.script_path, dependency(r.job, ids))
    record = {
        "name": pipeline.name or str(rendered[0].job.tasks[0].config.name),
        "source": pipeline.source,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "workdir": os.getcwd(),
        "stages": [
            {
                "name": r.job.stage.name,
                "command": r.job.stage.command,
                "job_id": ids[r.job.stage.name],
                "array": r.job.is_array,
                "depends": [f"{kind}:{stage}" for kind, stage in r.job.depends],
                "script": r.script_path,
                "tasks": [
                    {
                        "index": t.index,
                        "label": t.label,
                        "run_dir": t.run_dir,
                        "config": None
                        if t.args is not None
                        else config_path(root, r.job.stage.name, t.index if r.job.is_array else None),
                        "args": t.args,
                    }
                    for t in r.job.tasks
                ],
            }
            for r in rendered
        ],
    }
    with open(RunDir(root).slurm_file(RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return ids
