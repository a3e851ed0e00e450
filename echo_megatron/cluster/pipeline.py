"""Pipeline recipes: stages (command + recipe + overrides) that run as chained Slurm jobs.

A pipeline recipe is a YAML file with a ``stages`` list (a plain recipe has none)::

    name: paper_1b_grpo                 # job-name prefix
    run_dir: runs/paper_1b_grpo         # the pipeline root; stage S runs in RUN_DIR/S
    cluster: {nodes: 2, gpus_per_node: 8}   # cluster.* defaults for every stage
    overrides: [train.precision=bf16]        # k=v for every stage
    stages:
      - name: pretrain
        command: pretrain                    # an ``echo-megatron`` command
        recipe: 1b_pretrain.yaml             # relative to this file
        overrides: [train.steps=20000]
      - name: grpo
        command: rl
        recipe: 1b_pretrain.yaml
        overrides: ["rl.base={pretrain.run_dir}/checkpoints"]   # {STAGE.run_dir}: that stage's run dir
        cluster: {time: "08:00:00"}
      - name: eval
        command: eval
        recipe: 1b_pretrain.yaml
        overrides: ["checkpoint.load={grpo.run_dir}/checkpoints"]

Each stage waits for the stages in ``after`` (default: the stage before it) with ``--dependency=afterok``.
A stage with ``args`` runs ``echo-megatron COMMAND ARGS...`` for commands that take no recipe (``eval RUN_DIR
k=v --out DIR``); ``{run_dir}`` there is the stage's own run dir, and its recipe / overrides only size the job.
Array stages (one Slurm job array, one task per run):
  * ``grid: {key: [v1, v2], ...}``: the Cartesian product; task i runs in RUN_DIR/S/<i>_<values>.
  * ``sweep: GRID.yaml``: the runs of a sweep grid file (echo_megatron/config/sweep.py; named values, a base
    recipe per value, run dirs from the grid's ``run_dir`` template); ``recipe`` is then the default base.
  * ``over: A``: one task per task of the earlier array stage A, each after its own task (``aftercorr``);
    ``{A.run_dir}`` then means that task's run dir.
A sweep grid file given to ``submit`` directly is a one-stage pipeline (a job array).
A ``preprocess`` stage (or ``submit RECIPE --command preprocess``) is a job array of ``cluster.nodes`` one-node
tasks: task I runs ``preprocess CONFIG --shard-index I --num-shards N`` (worker processes, never torchrun), the
shards are dealt round-robin over the tasks, and the last task to finish merges the manifests.
Precedence for every stage: recipe (or sweep point) < pipeline ``cluster`` / ``overrides`` < ``submit`` flags
(``--nodes`` ...) < stage ``cluster`` / ``overrides`` < grid point < command-line ``k=v``. So ``--nodes 4``
sizes every stage that does not set its own ``cluster.nodes``; ``cluster.nodes=4`` on the command line
forces all of them.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from echo_megatron.config import ConfigError, load_config
from echo_megatron.config.loader import dotlist_value, read_yaml_mapping
from echo_megatron.config.sweep import expand as expand_grid
from echo_megatron.config.sweep import load_grid

STAGE_KEYS = {
    "name",
    "command",
    "recipe",
    "sweep",
    "overrides",
    "cluster",
    "grid",
    "over",
    "after",
    "array_limit",
    "args",
}
PIPELINE_KEYS = {"name", "run_dir", "description", "cluster", "overrides", "stages"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_PLACEHOLDER = re.compile(
    r"\{(?:([A-Za-z][A-Za-z0-9_-]*)\.)?run_dir\}"
)  # {STAGE.run_dir}, or {run_dir} = own


@dataclass
class Stage:
    name: str
    command: str
    recipe: str | None  # absolute path (a sweep stage may leave it to the grid's bases)
    overrides: list[str] = field(default_factory=list)  # the stage's own cluster: block and overrides
    common: list[str] = field(default_factory=list)  # the pipeline's cluster: block and overrides
    grid: dict[str, list[Any]] = field(default_factory=dict)
    over: str | None = None
    sweep: str | None = None  # absolute path of a sweep grid file
    after: list[str] = field(default_factory=list)
    array_limit: int | None = None  # at most this many array tasks at once (--array=0-N%K)
    args: list[str] | None = (
        None  # run `COMMAND ARGS...` instead of `COMMAND CONFIG` (commands without a recipe)
    )

    @property
    def is_array(self) -> bool:
        return bool(self.grid or self.over or self.sweep)


@dataclass
class Pipeline:
    name: str
    run_dir: str  # absolute
    stages: list[Stage]
    source: str  # the file it came from


@dataclass
class Task:
    """One run: the resolved config of one stage (or of one grid point of an array stage)."""

    index: int
    label: str  # "" for a plain stage, "<i>_<values>" for a grid point
    run_dir: str
    overrides: list[str]
    config: DictConfig  # with ``args``: only its cluster.* / parallel.* shape the job
    args: list[str] | None = None  # the command's arguments when the stage gives ``args``
    shard: tuple[int, int] | None = None  # (I, N): task I of a preprocess job array of N one-node tasks


@dataclass
class Job:
    """One sbatch submission: a stage with its tasks (several = a job array) and its dependencies."""

    stage: Stage
    tasks: list[Task]
    depends: list[tuple[str, str]]  # (afterok | aftercorr, stage name)

    @property
    def is_array(self) -> bool:
        return self.stage.is_array or self.tasks[0].shard is not None


def preprocess_tasks(task: Task) -> list[Task]:
    """A preprocess run as ``cluster.nodes`` tasks of one node each, task I doing shards I, I+N, ..."""
    n = int(task.config.cluster.nodes)
    return [Task(i, f"shard{i}", task.run_dir, task.overrides, task.config, shard=(i, n)) for i in range(n)]


def recipe_kind(path: str) -> str:
    """pipeline (a ``stages`` list) | sweep (a grid file with ``axes``) | recipe (anything else)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return "recipe"  # load_config reports the problem
    if isinstance(data, dict) and "stages" in data:
        return "pipeline"
    if isinstance(data, dict) and "axes" in data:
        return "sweep"
    return "recipe"


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, "must be a list of strings")
    return list(value)


def _cluster_overrides(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise _fail(where, "must be a mapping of cluster.* keys")
    return [f"cluster.{k}={dotlist_value(v)}" for k, v in value.items()]


def load_pipeline(path: str) -> Pipeline:
    """Read and check a pipeline recipe; every error names the file, the stage and the field."""
    data = read_yaml_mapping(path, "pipeline")
    if not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ConfigError(f"{path}: a pipeline needs a non-empty 'stages' list")
    unknown = set(data) - PIPELINE_KEYS
    if unknown:
        raise _fail(path, f"unknown key(s) {sorted(unknown)} (known: {sorted(PIPELINE_KEYS)})")
    name = str(data.get("name") or os.path.splitext(os.path.basename(path))[0])
    run_dir = os.path.abspath(str(data.get("run_dir") or os.path.join("runs", name)))
    base_dir = os.path.dirname(os.path.abspath(path))
    common = _cluster_overrides(data.get("cluster"), f"{path}: cluster") + _str_list(
        data.get("overrides"), f"{path}: overrides"
    )
    stages: list[Stage] = []
    for i, raw in enumerate(data["stages"]):
        where = f"{path}: stages[{i}]"
        if not isinstance(raw, dict):
            raise _fail(where, "each stage must be a mapping")
        unknown = set(raw) - STAGE_KEYS
        if unknown:
            raise _fail(where, f"unknown key(s) {sorted(unknown)} (known: {sorted(STAGE_KEYS)})")
        for key in ("name", "command"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise _fail(where, f"'{key}' is required (a string)")
        if not raw.get("recipe") and not raw.get("sweep") and not raw.get("args"):
            raise _fail(where, "'recipe' (or 'sweep', or 'args') is required")
        sname = raw["name"]
        where = f"{path}: stage '{sname}'"
        if not _NAME.match(sname):
            raise _fail(where, "a stage name is letters, digits, '_' and '-', starting with a letter")
        if any(s.name == sname for s in stages):
            raise _fail(where, "duplicate stage name")
        recipe = _path(raw.get("recipe"), base_dir, f"{where}: recipe")
        sweep = _path(raw.get("sweep"), base_dir, f"{where}: sweep")
        grid = raw.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise _fail(where, "'grid' must map keys to non-empty lists of values")
        if any(str(k).startswith("cluster.") for k in grid):
            raise _fail(
                where, "a grid may not vary cluster.* (all tasks of an array share one sbatch header)"
            )
        earlier = [s.name for s in stages]
        over = raw.get("over")
        if sum(map(bool, (grid, over, sweep))) > 1:
            raise _fail(where, "use at most one of 'grid', 'sweep' and 'over'")
        if over is not None:
            target = next((s for s in stages if s.name == over), None)
            if target is None or not target.is_array:
                raise _fail(where, f"'over: {over}' must name an earlier array stage (grid, sweep or over)")
        after = _str_list(raw.get("after"), f"{where}: after") if "after" in raw else earlier[-1:]
        for dep in after:
            if dep not in earlier:
                raise _fail(where, f"'after' names '{dep}', which is not an earlier stage ({earlier})")
        if over and over not in after:
            after.append(over)
        args = _str_list(raw.get("args"), f"{where}: args") if "args" in raw else None
        if args is not None and sweep:
            raise _fail(
                where, "a sweep stage runs its grid's recipes; 'args' is for commands without a recipe"
            )
        limit = raw.get("array_limit")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise _fail(where, "'array_limit' must be a positive integer")
        overrides = _cluster_overrides(raw.get("cluster"), f"{where}: cluster") + _str_list(
            raw.get("overrides"), f"{where}: overrides"
        )
        stages.append(
            Stage(sname, raw["command"], recipe, overrides, common, grid, over, sweep, after, limit, args)
        )
    return Pipeline(name, run_dir, stages, os.path.abspath(path))


def _path(value: Any, base_dir: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _fail(where, "must be a file path")
    path = value if os.path.isabs(value) else os.path.normpath(os.path.join(base_dir, value))
    if not os.path.isfile(path):
        raise _fail(where, f"file not found: {path}")
    return path


def single_stage(recipe: str, command: str) -> Pipeline:
    """A plain recipe as a one-stage pipeline; its run dir is the recipe's own ``run_dir``."""
    stage = Stage(name=command, command=command, recipe=os.path.abspath(recipe))
    return Pipeline(name="", run_dir="", stages=[stage], source=os.path.abspath(recipe))


def sweep_stage(grid: str, command: str) -> Pipeline:
    """A sweep grid file as a one-stage pipeline: one job array over its runs, in the grid's run dirs."""
    stage = Stage(name=command, command=command, recipe=None, sweep=os.path.abspath(grid))
    return Pipeline(name="", run_dir="", stages=[stage], source=os.path.abspath(grid))


def _sweep_points(stage: Stage, where: str) -> list[tuple[str, str, list[str]]]:
    """(base recipe, run name, overrides) of every run of the stage's sweep grid."""
    points = []
    for run in expand_grid(load_grid(stage.sweep)):
        base = run.base or stage.recipe
        if base is None:
            raise ConfigError(f"{where}: sweep run '{run.name}' has no base recipe (set 'base' in the grid)")
        points.append((base, run.name, run.override_args()))
    return points


def _grid_points(grid: dict[str, list[Any]]) -> list[list[str]]:
    keys = list(grid)
    return [
        [f"{k}={dotlist_value(v)}" for k, v in zip(keys, values)]
        for values in itertools.product(*grid.values())
    ]


def _label(i: int, point: list[str]) -> str:
    values = [kv.split("=", 1)[1] for kv in point]
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "-", "_".join(values)).strip("-")
    return f"{i:03d}_{slug}"[:80]


def _substitute(items: list[str], dirs: dict[str, str], where: str, own: str | None = None) -> list[str]:
    def one(m: re.Match) -> str:
        if m.group(1) is None:
            if own is None:
                raise ConfigError(f"{where}: '{{run_dir}}' (the stage's own run dir) is only known in 'args'")
            return own
        if m.group(1) not in dirs:
            raise ConfigError(f"{where}: '{m.group(0)}' names no earlier stage (known: {sorted(dirs)})")
        return dirs[m.group(1)]

    return [_PLACEHOLDER.sub(one, item) for item in items]


def expand(pipeline: Pipeline, extra: list[str] = (), defaults: list[str] = ()) -> list[Job]:
    """Resolve every task's config; placeholders become run dirs.

    ``defaults`` (the submit flags) go over the pipeline's common settings, ``extra`` (command-line k=v)
    over everything.
    """
    jobs: list[Job] = []
    stage_dirs: dict[str, str] = {}  # stage -> its run dir (an array stage: the folder holding its tasks)
    task_dirs: dict[str, list[str]] = {}  # array stage -> its tasks' run dirs
    for stage in pipeline.stages:
        where = f"{pipeline.source}: stage '{stage.name}'"
        tasks: list[Task] = []
        if stage.sweep:
            for i, (base, label, lines) in enumerate(_sweep_points(stage, where)):
                own = stage.common + list(defaults) + stage.overrides + list(extra)
                overrides = lines + _substitute(own, stage_dirs, where)
                tasks.append(_task(i, label, base, overrides, None, where))
        else:
            points = (
                [[]]
                if not stage.is_array
                else (_grid_points(stage.grid) if stage.grid else [[] for _ in task_dirs[stage.over]])
            )
            for i, point in enumerate(points):
                dirs = dict(stage_dirs)
                label = ""
                if stage.over:
                    dirs[stage.over] = task_dirs[stage.over][i]
                    label = os.path.basename(task_dirs[stage.over][i])
                elif stage.grid:
                    label = _label(i, point)
                own = _substitute(stage.common + list(defaults) + stage.overrides, dirs, where)
                overrides = own + point + _substitute(list(extra), dirs, where)
                run_dir = (
                    os.path.join(pipeline.run_dir, stage.name, label).rstrip(os.sep)
                    if pipeline.run_dir
                    else None
                )
                if run_dir:
                    name = f"{pipeline.name}-{stage.name}" + (f"-{label}" if label else "")
                    overrides = overrides + [f"name={name}", f"run_dir={run_dir}"]
                task = _task(i, label, stage.recipe, overrides, run_dir, where)
                if stage.args is not None:
                    task.args = _substitute(stage.args, dirs, where, own=task.run_dir)
                tasks.append(task)
        if stage.command == "preprocess" and not stage.is_array and stage.args is None:
            tasks = preprocess_tasks(tasks[0])
        clusters = {OmegaConf.to_yaml(t.config.cluster) for t in tasks}
        if len(clusters) > 1:
            raise ConfigError(f"{where}: the tasks of one array must share their cluster.* settings")
        if stage.is_array:
            stage_dirs[stage.name] = (
                os.path.commonpath([t.run_dir for t in tasks])
                if len(tasks) > 1
                else os.path.dirname(tasks[0].run_dir)
            )
            task_dirs[stage.name] = [t.run_dir for t in tasks]
        else:
            stage_dirs[stage.name] = tasks[0].run_dir
        depends = [("aftercorr" if dep == stage.over else "afterok", dep) for dep in stage.after]
        jobs.append(Job(stage, tasks, depends))
    return jobs


def _task(
    index: int, label: str, recipe: str | None, overrides: list[str], run_dir: str | None, where: str
) -> Task:
    try:
        cfg = load_config(recipe, overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}{f' task {index} ({label})' if label else ''}: {e}") from e
    cfg = OmegaConf.merge(cfg, {"run_dir": os.path.abspath(run_dir or cfg.run_dir)})
    return Task(index, label, cfg.run_dir, overrides, cfg)
