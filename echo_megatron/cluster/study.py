"""A study on disk and as steps: one recipe per run, ``study.json`` for the report, and the executor's steps.

Steps (echo_megatron/cluster/local.py runs them):
  data           ``testbed`` + ``preprocess`` of the first base's recipe (every base shares the testbed)
  <base run>     ``pretrain`` + ``eval`` of the study's tasks                       (after data)
  <RL run>       ``rl`` + ``eval`` of the study's tasks at the log-spaced checkpoints (after its base)

A step's fingerprint is its resolved config, so editing a recipe (or the study) reruns what it changed and
nothing else.
"""

from __future__ import annotations

import json
import os

from omegaconf import OmegaConf

from echo_megatron.checkpoint.dist import saved_iterations
from echo_megatron.checkpoint.schedule import log_spaced_checkpoints
from echo_megatron.cluster.local import Step, fingerprint
from echo_megatron.config import ConfigError, load_config
from echo_megatron.config.study import Study
from echo_megatron.config.sweep import recipe_text
from echo_megatron.rundir import RunDir, write_text_atomic

MANIFEST = "study.json"
DATA_STEP = "data"


def check_eval_tasks(study: Study) -> None:
    """A ConfigError naming the first of the study's ``eval`` tasks that the eval registry does not know."""
    from echo_megatron.eval.tasks import TASKS

    unknown = [t for t in study.eval_tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"{study.path}: eval: unknown eval task '{unknown[0]}' (known: {', '.join(TASKS)})")


def write_study(study: Study, out: str) -> dict[str, str]:
    """Write ``OUT/<run>.yaml`` for every run (each loaded back, so a bad one fails here) and ``OUT/study.json``
    (every run's kind, group, axes, base run, run dir and recipe); returns run name -> recipe path."""
    os.makedirs(out, exist_ok=True)
    recipes: dict[str, str] = {}
    for r in study.runs:
        path = os.path.join(out, f"{r.name}.yaml")
        write_text_atomic(path, recipe_text(r, path, study.path))
        load_config(path)
        recipes[r.name] = os.path.abspath(path)
    group_of = {n: g for g, names in study.groups.items() for n in names}
    manifest = {
        "study": study.path,
        "name": study.name,
        "eval": list(study.eval_tasks),
        "runs": [
            {
                "name": r.name,
                "kind": "rl" if r.name in study.needs else "base",
                "group": group_of.get(r.name),
                "axes": {k: v for k, v in r.axes.items() if k != "base"},
                "base_run": study.needs.get(r.name),
                "run_dir": os.path.abspath(r.run_dir),
                "recipe": recipes[r.name],
            }
            for r in study.runs
        ],
    }
    write_text_atomic(os.path.join(out, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    return recipes


def _eval_argv(run_dir: str, tasks: tuple[str, ...], with_steps: bool) -> list[str]:
    argv = ["eval", run_dir, f"eval.tasks=[{','.join(tasks)}]"]
    if with_steps:
        steps = log_spaced_checkpoints(saved_iterations(RunDir(run_dir).checkpoints))
        if steps:
            argv += ["--steps", ",".join(map(str, steps))]
    return argv


def study_steps(study: Study, recipes: dict[str, str]) -> list[Step]:
    """The executor's steps for a written study (``recipes`` from :func:`write_study`)."""
    first = recipes[study.bases[0].name]
    data_cfg = load_config(first)
    for b in study.bases[1:]:
        cfg = load_config(recipes[b.name])
        for key, mine, first_s in (
            ("testbed", OmegaConf.to_yaml(cfg.testbed), OmegaConf.to_yaml(data_cfg.testbed)),
            ("data.indexed_dir", cfg.data.indexed_dir, data_cfg.data.indexed_dir),
        ):
            if mine != first_s:
                raise ConfigError(
                    f"{b.name}: its {key} differs from {study.bases[0].name}'s (the study shares one)"
                )
    data_fp = fingerprint(OmegaConf.to_yaml(data_cfg.testbed), OmegaConf.to_yaml(data_cfg.data.sources))
    steps = [Step(DATA_STEP, [["testbed", first], ["preprocess", first]], fingerprint=data_fp)]
    for r in study.runs:
        recipe = recipes[r.name]
        fp = fingerprint(OmegaConf.to_yaml(load_config(recipe)), ",".join(study.eval_tasks))
        run_dir = os.path.abspath(r.run_dir)
        if r.name in study.needs:
            cmds = [["rl", recipe], lambda d=run_dir: _eval_argv(d, study.eval_tasks, True)]
            steps.append(Step(r.name, cmds, needs=[study.needs[r.name]], fingerprint=fp, run_dir=run_dir))
        else:
            cmds = [["pretrain", recipe], _eval_argv(run_dir, study.eval_tasks, False)]
            steps.append(Step(r.name, cmds, needs=[DATA_STEP], fingerprint=fp, run_dir=run_dir))
    return steps
