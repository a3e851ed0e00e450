"""Render one stage of a pipeline as an sbatch script (the template is below, readable top to bottom).

Launch: a ``preprocess`` job is an array of one-node tasks, each ``srun`` running ``echo-megatron preprocess CONFIG
--shard-index I --num-shards N`` with its worker processes on the node's CPUs (no GPUs, no torchrun; a USR1 or
requeue kills it and the requeued task keeps its finished shards). Other commands: one ``srun`` task per node runs ``torchrun`` (c10d rendezvous on the first host of the allocation,
``cluster.launcher=torchrun``), or ``srun`` starts one task per rank itself (``cluster.launcher=srun``; the
trainer reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID). Optionally inside a container: pyxis/enroot
(``srun --container-image``) or Apptainer (``apptainer exec``).

Preemption and time limits: ``--signal=B:USR1@N`` makes Slurm send SIGUSR1 to the batch shell N seconds
before the time limit (or a site's preemption warning does). The shell forwards it to the job step (``srun``
passes it to every process of the step, so each trainer rank gets it; torchrun itself runs with USR1
ignored so that it outlives its workers); the trainer finishes its step, saves a checkpoint and exits 0; the
shell then runs ``scontrol requeue`` and the next start resumes from ``RUN_DIR/checkpoints/latest``.
A USR1 always ends in a requeue (at most ``cluster.max_requeues`` times): a run that had just finished
restarts, finds its last checkpoint and exits at once. SIGTERM (scancel, ``scontrol requeue``, a
preemption by Slurm itself) reaches the trainer too, which saves and exits; the shell does not requeue
then, because Slurm already decides what happens to the job.
"""

from __future__ import annotations

import re

import jinja2
from omegaconf import DictConfig

from echo_megatron.cluster.pipeline import Job
from echo_megatron.cluster.script_values import check_script_values
from echo_megatron.config import ConfigError
from echo_megatron.rundir import RunDir

TEMPLATE = r"""#!/bin/bash
{% if c.setup %}# shellcheck disable=SC1090,SC1091  # cluster.setup may source site files that exist only there
{% endif %}# {{ title }}
# Written by `echo-megatron submit`; change the recipe and resubmit rather than editing this file.
#SBATCH --job-name={{ job_name }}
#SBATCH --nodes={{ nodes }}
#SBATCH --ntasks-per-node={{ tasks_per_node }}
{% if cpus_per_task %}#SBATCH --cpus-per-task={{ cpus_per_task }}
{% endif %}{% if gpus %}#SBATCH --gpus-per-node={{ c.gpus_per_node }}
{% endif %}{% if c.partition %}#SBATCH --partition={{ c.partition }}
{% endif %}{% if c.account %}#SBATCH --account={{ c.account }}
{% endif %}#SBATCH --time={{ c.time }}
{% if c.mem is not none %}#SBATCH --mem={{ c.mem }}
{% endif %}{% if c.exclusive %}#SBATCH --exclusive
{% endif %}{% if array %}#SBATCH --array={{ array }}
{% endif %}#SBATCH --output={{ log }}
#SBATCH --open-mode=append
#SBATCH --chdir={{ workdir }}
#SBATCH --signal=B:USR1@{{ c.signal_lead_s }}
#SBATCH --{{ "requeue" if c.requeue else "no-requeue" }}
{% for arg in c.sbatch_args %}#SBATCH {{ arg }}
{% endfor %}
set -euo pipefail

STAGE={{ stage | q }}
COMMAND={{ command | q }}
{% if array %}case "$SLURM_ARRAY_TASK_ID" in
{% for args in task_args %}  {{ loop.index0 }}) ARGS=({{ args | qjoin }}) ;;
{% endfor %}  *) echo "no array task $SLURM_ARRAY_TASK_ID in this script" >&2; exit 1 ;;
esac
{% else %}ARGS=({{ task_args[0] | qjoin }})
{% endif %}PYTHON={{ c.python | q }}

# Environment of every rank.
{% for k, v in env.items() %}export {{ k }}={{ v | q }}
{% endfor %}{% if c.setup %}
# cluster.setup
{% for line in c.setup %}{{ line }}
{% endfor %}{% endif %}
# Rendezvous: the first host of the allocation, a port derived from the job id.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$(({{ c.master_port }} + SLURM_JOB_ID % 10000))
export MASTER_ADDR MASTER_PORT

LAUNCH=(srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node={{ tasks_per_node }}{% if cpus_per_task %} --cpus-per-task={{ cpus_per_task }}{% elif launcher == "workers" %} --cpus-per-task="$SLURM_CPUS_ON_NODE"{% endif %} --kill-on-bad-exit=1)
{% if runtime == "pyxis" %}LAUNCH+=(--container-image={{ c.container | q }} --container-mounts={{ mounts | q }} --container-workdir={{ workdir | q }})
{% elif runtime == "apptainer" %}LAUNCH+=(apptainer exec{% if gpus %} --nv{% endif %} --bind {{ mounts | q }} --pwd {{ workdir | q }} {{ c.container | q }})
{% endif %}{% if launcher == "torchrun" %}# torchrun ignores USR1 (it must outlive its workers while they save); the workers get it from srun.
LAUNCH+=(bash -c 'trap "" USR1; exec "$@"' torchrun "$PYTHON" -m torch.distributed.run
  --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node={{ c.gpus_per_node }} --max-restarts=0
  --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT")
LAUNCH+=(-m echo_megatron "$COMMAND" "${ARGS[@]}")
{% else %}LAUNCH+=("$PYTHON" -m echo_megatron "$COMMAND" "${ARGS[@]}")
{% endif %}
say() { echo "[echo-megatron $(date -u +%Y-%m-%dT%H:%M:%SZ)] $*"; }

# Forward USR1 (time limit / preemption warning) and TERM to the job step; remember which came.
SIGNALLED=""
STEP_PID=""
# shellcheck disable=SC2317  # invoked by the traps below
on_signal() {
  SIGNALLED=$1
  say "got SIG$1: forwarding it to the job step (the trainer saves a checkpoint and exits)"
  if [ -n "$STEP_PID" ]; then kill -s "$1" "$STEP_PID" 2>/dev/null || true; fi
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

say "stage $STAGE, job ${SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)}, start $((${SLURM_RESTART_COUNT:-0} + 1)), nodes $SLURM_JOB_NODELIST"
say "${LAUNCH[*]}"
"${LAUNCH[@]}" &
STEP_PID=$!
# A trapped signal interrupts `wait` (status > 128) while the step still runs: wait again.
RC=0
while :; do
  if wait "$STEP_PID"; then RC=0; else RC=$?; fi
  if [ "$RC" -gt 128 ] && kill -0 "$STEP_PID" 2>/dev/null; then continue; fi
  break
done
say "job step exited with status $RC"

if [ "$SIGNALLED" = USR1 ]; then
{% if c.requeue %}  if [ "${SLURM_RESTART_COUNT:-0}" -lt {{ c.max_requeues }} ]; then
    say "requeueing job $SLURM_JOB_ID; the next start resumes from the latest checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  say "not requeueing: already restarted ${SLURM_RESTART_COUNT:-0} times (cluster.max_requeues={{ c.max_requeues }})"
{% else %}  say "not requeueing (cluster.requeue=false)"
{% endif %}  exit 1
fi
exit "$RC"
"""

# Environment every GPU job gets (cluster.env entries override or add to these).
GPU_ENV = {
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # megatron: keep TP/SP communication kernels in issue order
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a failed collective aborts the job instead of hanging it
    "NCCL_DEBUG": "WARN",
    "OMP_NUM_THREADS": "1",  # CPU threads per rank (data loading has its own workers)
}
BASE_ENV = {"PYTHONUNBUFFERED": "1"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    comment_start_string="{##",  # bash's ${#VAR} must not open a Jinja comment
    comment_end_string="##}",
)
_ENV.filters["q"] = lambda v: "'" + str(v).replace("'", "'\"'\"'") + "'"  # always single-quoted
_ENV.filters["qjoin"] = lambda items: " ".join(_ENV.filters["q"](v) for v in items)


def config_path(root: str, stage: str, index: int | None = None) -> str:
    """Where ``submit`` writes the resolved config of a stage (or of array task ``index``)."""
    return RunDir(root).slurm_file(f"{stage}.yaml" if index is None else f"{stage}.{index}.yaml")


def container_runtime(cluster: DictConfig) -> str:
    """none | pyxis | apptainer (``auto``: an image path ending in .sif is Apptainer, anything else pyxis)."""
    if not cluster.container:
        return "none"
    rt = cluster.container_runtime
    if rt == "auto":
        return "apptainer" if str(cluster.container).endswith(".sif") else "pyxis"
    if rt not in ("pyxis", "apptainer"):
        raise ConfigError(f"cluster.container_runtime: '{rt}' is not auto, pyxis or apptainer")
    return rt


def wants_gpus(cfg: DictConfig) -> bool:
    return bool(cfg.cluster.gpus) if cfg.cluster.gpus is not None else cfg.parallel.device != "cpu"


def check_layout(cfg: DictConfig, where: str, command: str = "pretrain") -> None:
    c, p = cfg.cluster, cfg.parallel
    if c.launcher not in ("torchrun", "srun"):
        raise ConfigError(f"{where}: cluster.launcher '{c.launcher}' is not torchrun or srun")
    if c.nodes < 1 or c.gpus_per_node < 1:
        raise ConfigError(f"{where}: cluster.nodes and cluster.gpus_per_node must be >= 1")
    world = c.nodes * c.gpus_per_node
    if world % (p.tp * p.pp):
        raise ConfigError(
            f"{where}: {c.nodes} nodes x {c.gpus_per_node} = {world} ranks is not divisible by "
            f"parallel.tp * parallel.pp = {p.tp} * {p.pp}"
        )
    dp = world // (p.tp * p.pp)
    t = cfg.train
    if command == "pretrain" and t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"{where}: train.global_batch_size {t.global_batch_size} is not a multiple of train.micro_batch_size "
            f"x data-parallel size = {t.micro_batch_size} x {dp} ({world} ranks / tp {p.tp} / pp {p.pp})"
        )
    for k in c.env:
        if not _ENV_NAME.match(str(k)):
            raise ConfigError(f"{where}: cluster.env key '{k}' is not a valid environment variable name")


def render(job: Job, root: str, workdir: str, job_name: str) -> str:
    """The sbatch script of ``job``; ``root`` holds slurm/ (configs, logs), ``workdir`` is the job's cwd."""
    cfg = job.tasks[0].config
    c = cfg.cluster
    where = f"stage '{job.stage.name}'"
    check_layout(cfg, where, job.stage.command)
    paths = {"run_dir": root, "the submit directory": workdir}
    check_script_values(c, f"stage {job.stage.name!r}", job.stage.name, job.stage.command, paths)
    runtime = container_runtime(c)
    sharded = job.tasks[0].shard is not None  # preprocess: one-node array tasks with worker processes
    gpus = wants_gpus(cfg) and not sharded
    env = dict(BASE_ENV)
    if gpus:
        env.update(GPU_ENV)
    env.update({str(k): str(v) for k, v in c.env.items()})
    mounts = [workdir] + (
        [root] if not root.startswith(workdir.rstrip("/") + "/") and root != workdir else []
    )
    mounts = ",".join(f"{m}:{m}" for m in mounts) + (f",{c.container_mounts}" if c.container_mounts else "")
    n = len(job.tasks)
    array = None
    if job.is_array:
        array = f"0-{n - 1}" + (f"%{job.stage.array_limit}" if job.stage.array_limit else "")
    task_args = [
        t.args
        if t.args is not None
        else [config_path(root, job.stage.name, t.index if job.is_array else None)]
        + (["--shard-index", str(t.shard[0]), "--num-shards", str(t.shard[1])] if t.shard else [])
        for t in job.tasks
    ]
    log = RunDir(root).slurm_file(f"{job.stage.name}-%A_%a.out" if array else f"{job.stage.name}-%j.out")
    launcher = "workers" if sharded else c.launcher
    tasks_per_node = 1 if launcher in ("torchrun", "workers") else c.gpus_per_node
    title = f"stage '{job.stage.name}': echo-megatron {job.stage.command}" + (
        f", {n} array tasks" if array else ""
    )
    return _ENV.from_string(TEMPLATE).render(
        title=title,
        job_name=job_name,
        c=c,
        nodes=1 if sharded else c.nodes,
        launcher=launcher,
        gpus=gpus,
        tasks_per_node=tasks_per_node,
        cpus_per_task=c.cpus_per_task,
        array=array,
        log=log,
        workdir=workdir,
        stage=job.stage.name,
        command=job.stage.command,
        task_args=task_args,
        env=env,
        runtime=runtime,
        mounts=mounts,
    )
