"""`echo-megatron submit --dry-run` and `status` without a cluster: pipeline parsing, the rendered sbatch
scripts (checked by shellcheck), dependencies, job arrays and clear errors. The real-Slurm runs are in
tests/test_slurm_local.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from echo_megatron.cluster.pipeline import expand, load_pipeline
from echo_megatron.cluster.status import collect, format_rows, progress
from echo_megatron.cluster.submit import dependency, prepare
from echo_megatron.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "recipes", "tiny_cpu.yaml")
PIPELINE_1B = os.path.join(REPO, "recipes", "paper", "1b_pipeline.yaml")


def _cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "echo_megatron", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _shellcheck(script: str, tmp_path) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail(
            "shellcheck is not installed (Debian: apt-get install shellcheck); the lint checks need it"
        )
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    out = subprocess.run([exe, "-x", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _split_scripts(text: str) -> dict[str, str]:
    """The dry run's output -> {stage: script}."""
    scripts: dict[str, str] = {}
    stage = None
    for line in text.splitlines(keepends=True):
        if line.startswith("# ===== stage "):
            stage = line.split()[3].rstrip(":")
            scripts[stage] = ""
        elif stage:
            scripts[stage] += line
    return scripts


def test_1b_pipeline_dry_run_prints_complete_chained_scripts(tmp_path):
    out = _cli("submit", PIPELINE_1B, "--nodes", "4", "--gpus-per-node", "8", "--dry-run", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    scripts = _split_scripts(out.stdout)
    assert list(scripts) == ["pretrain", "grpo", "eval"]
    assert "--dependency=afterok:<pretrain> --kill-on-invalid-dep=yes" in out.stdout
    assert "--dependency=afterok:<grpo>" in out.stdout
    pre = scripts["pretrain"]
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --time=24:00:00",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export CUDA_DEVICE_MAX_CONNECTIONS='1'",
        'scontrol requeue "$SLURM_JOB_ID"',
    ):
        assert line in pre, line
    assert "#SBATCH --time=12:00:00" in scripts["grpo"]  # a quoted "12:00:00" stays a string
    assert "#SBATCH --nodes=1" in scripts["eval"]  # the stage's own cluster.nodes beats --nodes
    run = os.path.join(str(tmp_path), "runs", "1b_pipeline")
    assert f"ARGS=('{run}/grpo' '--out' '{run}/eval')" in scripts["eval"]  # eval settings: the GRPO run's
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    for script in scripts.values():
        _shellcheck(script, tmp_path)


@pytest.mark.parametrize(
    "overrides",
    [
        ["cluster.launcher=srun"],
        ["cluster.container=nvcr.io#nvidia/pytorch:25.01-py3", "cluster.container_mounts=/data:/data"],
        ["cluster.container=/images/echo.sif", "cluster.launcher=srun"],
        [
            "cluster.partition=gpu",
            "cluster.account=proj",
            "cluster.cpus_per_task=32",
            "cluster.mem=0",
            "cluster.requeue=false",
            "cluster.setup=[module load cuda,source /opt/venv/bin/activate]",
            "cluster.env={NCCL_SOCKET_IFNAME: ib0}",
            "cluster.sbatch_args=[--qos=high]",
        ],
    ],
    ids=["srun", "pyxis", "apptainer", "site-options"],
)
def test_rendered_variants_pass_shellcheck(tmp_path, overrides):
    layout = ["cluster.nodes=2", "cluster.gpus_per_node=4", "train.global_batch_size=16"]
    _, _, rendered = prepare(TINY, overrides, "pretrain", layout)
    script = rendered[0].script
    _shellcheck(script, tmp_path)
    text = " ".join(overrides)
    if "launcher=srun" in text:
        assert "#SBATCH --ntasks-per-node=4" in script and "torch.distributed.run" not in script
    if "pyxis" in text or "nvcr.io" in text:
        assert "--container-image='nvcr.io#nvidia/pytorch:25.01-py3'" in script
        assert f"--container-mounts='{os.getcwd()}:{os.getcwd()},/data:/data'" in script
    if ".sif" in text:
        assert "apptainer exec" in script and "/images/echo.sif" in script
    if "site-options" in text or "partition" in text:
        for line in (
            "#SBATCH --partition=gpu",
            "#SBATCH --account=proj",
            "#SBATCH --cpus-per-task=32",
            "#SBATCH --mem=0",
            "#SBATCH --no-requeue",
            "#SBATCH --qos=high",
            "module load cuda",
            "export NCCL_SOCKET_IFNAME='ib0'",
        ):
            assert line in script, line
        assert 'scontrol requeue "$SLURM_JOB_ID"' not in script


@pytest.mark.parametrize("cpus", [None, 48])
def test_preprocess_is_a_job_array_of_one_node_tasks_without_torchrun(tmp_path, cpus):
    """`submit RECIPE --command preprocess --nodes 4`: 4 one-node array tasks, task I = --shard-index I of 4."""
    paper = os.path.join(REPO, "recipes", "paper", "150m_tg+omi1+omi2.yaml")
    extra = [] if cpus is None else [f"cluster.cpus_per_task={cpus}"]
    _, _, (r,) = prepare(paper, extra, "preprocess", ["cluster.nodes=4"])
    script = r.script
    _shellcheck(script, tmp_path)
    assert r.job.is_array and [t.shard for t in r.job.tasks] == [(i, 4) for i in range(4)]
    for line in (
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --array=0-3",
        "#SBATCH --exclusive",
    ):
        assert line in script, line
    for i in range(4):
        assert f"  {i}) ARGS=('{r.job.tasks[i].config.run_dir}/slurm/preprocess.{i}.yaml' '--shard-index' '{i}' " \
               f"'--num-shards' '4') ;;" in script  # fmt: skip
    assert (
        "torch.distributed.run" not in script and "torchrun" not in script and "--gpus-per-node" not in script
    )
    cpus_flag = '--cpus-per-task="$SLURM_CPUS_ON_NODE"' if cpus is None else f"--cpus-per-task={cpus}"
    assert f'LAUNCH=(srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 {cpus_flag}' in script
    assert r.job.tasks[0].config.data.num_workers == -1  # the paper recipes: one worker per CPU of the task


def test_cpu_recipes_request_no_gpus():
    _, _, rendered = prepare(TINY, ["cluster.gpus_per_node=2"], "pretrain")
    assert "--gpus-per-node" not in rendered[0].script
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in rendered[0].script


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_grid_and_over_stages_become_arrays_with_aftercorr(tmp_path):
    pipe = _write(
        tmp_path / "p.yaml",
        f"""
name: scan
run_dir: {tmp_path}/runs/scan
cluster: {{gpus_per_node: 1}}
stages:
  - name: pre
    command: pretrain
    recipe: {TINY}
    grid: {{optimizer.lr: [0.001, 0.002], train.steps: [4, 6]}}
    array_limit: 2
  - name: more
    command: pretrain
    recipe: {TINY}
    over: pre
    overrides: ["checkpoint.load={{pre.run_dir}}/checkpoints"]
  - name: report
    command: pretrain
    recipe: {TINY}
    overrides: ["description=after {{pre.run_dir}}"]
""",
    )
    jobs = expand(load_pipeline(pipe))
    pre, more, report = jobs
    assert len(pre.tasks) == 4 and pre.is_array
    assert [t.config.optimizer.lr for t in pre.tasks] == [0.001, 0.001, 0.002, 0.002]
    assert [t.config.train.steps for t in pre.tasks] == [4, 6, 4, 6]
    assert pre.tasks[1].run_dir == f"{tmp_path}/runs/scan/pre/001_0.001_6"
    assert all(t.args is None for t in pre.tasks)
    for p, m in zip(pre.tasks, more.tasks):  # one task per task of `pre`, reading its checkpoints
        assert m.config.checkpoint.load == f"{p.run_dir}/checkpoints"
        assert os.path.basename(m.run_dir) == os.path.basename(p.run_dir)
    assert dependency(more, {"pre": "7"}) == "aftercorr:7"
    assert report.tasks[0].config.description == f"after {tmp_path}/runs/scan/pre"
    assert dependency(report, {"pre": "7", "more": "8"}) == "afterok:8"
    _, _, rendered = prepare(pipe, [])
    assert "#SBATCH --array=0-3%2" in rendered[0].script
    assert 'case "$SLURM_ARRAY_TASK_ID" in' in rendered[0].script
    assert f"  3) ARGS=('{tmp_path}/runs/scan/slurm/pre.3.yaml') ;;" in rendered[0].script
    assert "pre-%A_%a.out" in rendered[0].script


def test_a_sweep_grid_submits_as_one_job_array(tmp_path):
    grid = _write(
        tmp_path / "g.yaml",
        f"""
name: lrscan
base: {TINY}
run_dir: {tmp_path}/runs/{{grid}}/{{name}}
set: {{train.steps: 3, cluster.gpus_per_node: 1}}
axes:
  optimizer.lr: [0.001, 0.003]
  width: {{narrow: {{model.hidden_size: 64}}, wide: {{model.hidden_size: 128}}}}
""",
    )
    out = _cli("submit", grid, "--dry-run", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --array=0-3" in out.stdout
    assert f"3) ARGS=('{tmp_path}/runs/lrscan/slurm/pretrain.3.yaml')" in out.stdout  # ROOT: the runs' folder
    _, root, rendered = prepare(grid, [])
    assert root == f"{tmp_path}/runs/lrscan"
    tasks = rendered[0].job.tasks
    assert [t.config.model.hidden_size for t in tasks] == [64, 128, 64, 128]
    assert tasks[3].run_dir == f"{tmp_path}/runs/lrscan/lrscan-lr0.003-wide"


def test_shipped_recipes_submit_from_any_folder_and_an_rl_sweep_runs_rl(tmp_path):
    """From a folder that is not the repo: a shipped recipe by its recipes/ name renders, and the paper's RL grid
    (every run sets rl.base) becomes one array of `echo-megatron rl` without --command."""
    out = _cli("submit", "recipes/paper/sweeps/150m_rl.yaml", "--dry-run", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        "# stage 'rl': echo-megatron rl, 90 array tasks" in out.stdout
        and "#SBATCH --array=0-89" in out.stdout
    )
    out = _cli("submit", "recipes/paper/150m_tg.yaml", "--dry-run", cwd=str(tmp_path))
    assert out.returncode == 0 and "echo-megatron pretrain" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize(
    "body, message",
    [
        ("stages: []", "non-empty 'stages'"),
        ("stages: [{name: a, command: pretrain}]", "'recipe' (or 'sweep', or 'args') is required"),
        ("stages: [{name: a, command: pretrain, recipe: nope.yaml}]", "file not found"),
        ("stages: [{name: a, command: pretrain, recipe: TINY, colour: red}]", "unknown key(s) ['colour']"),
        (
            "stages: [{name: a, command: pretrain, recipe: TINY}, {name: a, command: pretrain, recipe: TINY}]",
            "duplicate stage name",
        ),
        ("stages: [{name: a, command: pretrain, recipe: TINY, after: [b]}]", "'after' names 'b'"),
        (
            "stages: [{name: a, command: pretrain, recipe: TINY, over: a}]",
            "'over: a' must name an earlier array stage",
        ),
        (
            "stages: [{name: a, command: pretrain, recipe: TINY, grid: {cluster.nodes: [1, 2]}}]",
            "may not vary cluster",
        ),
        (
            "stages: [{name: a, command: pretrain, recipe: TINY, overrides: ['x={b.run_dir}']}]",
            "names no earlier stage",
        ),
        ("stages: [{name: a, command: pretrain, recipe: TINY, overrides: [model.hidden=3]}]", "model.hidden"),
        ("stages: [{name: a, command: pretrain, recipe: TINY, overrides: [parallel.tp=3]}]", "not divisible"),
        ("stages: [{name: a, command: nosuch, recipe: TINY}]", "unknown command 'nosuch'"),
        (
            "stages: [{name: a, command: pretrain, recipe: TINY, grid: {train.steps: [1]}},"
            " {name: b, command: pretrain, recipe: TINY, over: a, grid: {train.steps: [2]}}]",
            "at most one of 'grid', 'sweep' and 'over'",
        ),
        (
            "stages: [{name: a, command: pretrain, recipe: TINY, overrides: [cluster.gpus_per_node=3]}]",
            "global_batch_size 8 is not a multiple of train.micro_batch_size x data-parallel size = 2 x 3",
        ),
    ],
)
def test_bad_pipelines_fail_with_a_clear_error(tmp_path, body, message):
    pipe = _write(tmp_path / "bad.yaml", body.replace("TINY", TINY))
    with pytest.raises(ConfigError) as e:
        pipeline, root, rendered = prepare(pipe, [])
        from echo_megatron.commands.submit import missing_commands

        missing_commands(rendered)
    assert message in str(e.value)
    assert "bad.yaml" in str(e.value) or "nosuch" in message or "stage 'a'" in str(e.value)


def test_submit_without_slurm_says_so(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no sbatch on PATH
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "echo_megatron",
            "submit",
            TINY,
            f"run_dir={tmp_path}/r",
            "cluster.gpus_per_node=1",
        ],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=env,
        timeout=300,
    )
    assert out.returncode == 1
    assert "'sbatch' not found" in out.stderr


def test_status_reads_a_run_dir_without_slurm(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("iter_0000004\n")
    (run / "config.yaml").write_text("train:\n  steps: 10\n")
    rows = [{"step": s, "phase": "pretrain", "loss": 5.0 - s / 10} for s in range(1, 5)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = collect(str(run))
    assert len(got) == 1
    assert got[0].progress == "step 4/10 loss 4.6"
    assert got[0].checkpoint == "iter_0000004"
    out = _cli("status", str(run), cwd=str(tmp_path))
    assert out.returncode == 0 and "step 4/10 loss 4.6" in out.stdout and "iter_0000004" in out.stdout
    text = format_rows(got, str(run))
    assert text.splitlines()[0].split()[:3] == ["stage", "job", "state"]


def test_status_counts_expert_iteration_in_rounds(tmp_path):
    run = tmp_path / "ei"
    run.mkdir()
    (run / "config.yaml").write_text("rl:\n  algorithm: ei\n  steps: 40\n  ei_rounds: 3\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "phase": "rl", "accuracy": 0.5}) + "\n")
    assert progress(str(run), "rl") == "step 2/3 accuracy 0.5"


def _doc_yaml_blocks() -> list[str]:
    with open(os.path.join(REPO, "docs", "cluster.md"), encoding="utf-8") as f:
        text = f.read()
    return [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]


def test_docs_pipeline_is_the_recipe(tmp_path):
    """The 1B pipeline shown in docs/cluster.md resolves to the same jobs as recipes/paper/1b_pipeline.yaml."""
    shown = next(b for b in _doc_yaml_blocks() if "name: 1b_pipeline" in b)
    paper = tmp_path / "paper"
    shutil.copytree(os.path.join(REPO, "recipes", "paper"), paper)
    (paper / "shown.yaml").write_text(shown)
    ours = expand(load_pipeline(str(paper / "shown.yaml")))
    real = expand(load_pipeline(PIPELINE_1B))
    assert [j.stage.name for j in ours] == [j.stage.name for j in real]
    for a, b in zip(ours, real):
        ca, cb = a.tasks[0].config, b.tasks[0].config
        assert ca == cb, a.stage.name


def test_docs_scaling_study_dry_runs(tmp_path):
    """The scaling study of docs/cluster.md: a 4-task pretraining array, then GRPO and eval task by task."""
    shown = next(b for b in _doc_yaml_blocks() if "name: scaling" in b)
    paper = tmp_path / "paper"
    shutil.copytree(os.path.join(REPO, "recipes", "paper"), paper)
    (paper / "scaling.yaml").write_text(shown)
    out = _cli("submit", str(paper / "scaling.yaml"), "--dry-run", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    scripts = _split_scripts(out.stdout)
    assert list(scripts) == ["pretrain", "grpo", "eval"]
    assert "#SBATCH --array=0-3%2" in scripts["pretrain"]
    assert "#SBATCH --array=0-3\n" in scripts["grpo"] and "#SBATCH --array=0-3\n" in scripts["eval"]
    assert "--dependency=aftercorr:<pretrain>" in out.stdout and "--dependency=aftercorr:<grpo>" in out.stdout
    _, _, rendered = prepare(str(paper / "scaling.yaml"), [])
    presets = [t.config.model.preset for t in rendered[0].job.tasks]
    assert presets == ["paper_150m", "paper_300m", "paper_500m", "paper_1b"]
    assert [t.config.model.hidden_size for t in rendered[0].job.tasks] == [768, 1024, 1536, 2048]
    for pre, rl in zip(rendered[0].job.tasks, rendered[1].job.tasks):
        assert rl.config.rl.base == f"{pre.run_dir}/checkpoints"


EXAMPLES = {
    "1b_pretrain_pyxis_torchrun.sbatch": [
        "--container",
        "/shared/images/echo-megatron.sqsh",
        "--partition",
        "gpu",
        "--account",
        "myproj",
    ],
    "1b_pretrain_apptainer_srun.sbatch": [
        "cluster.launcher=srun",
        "--container",
        "/shared/images/echo-megatron.sif",
    ],
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_slurm_examples_are_what_submit_writes(tmp_path, name):
    """slurm/examples/*.sbatch are rendered by `submit --dry-run` (submit dir shown as /path/to/echo-megatron)."""
    cwd = tmp_path / "echo-megatron"
    cwd.mkdir()
    recipe = os.path.join(REPO, "recipes", "paper", "1b_pretrain.yaml")
    out = _cli("submit", recipe, *EXAMPLES[name], "--dry-run", cwd=str(cwd))
    assert out.returncode == 0, out.stderr
    script = out.stdout.split("\n", 1)[1].replace(str(cwd), "/path/to/echo-megatron")
    path = os.path.join(REPO, "slurm", "examples", name)
    if os.environ.get("ECHO_REGEN_EXAMPLES") == "1":
        with open(path, "w", encoding="utf-8") as f:
            f.write(script)
    with open(path, encoding="utf-8") as f:
        assert f.read() == script, f"{path} is stale: rerun with ECHO_REGEN_EXAMPLES=1"


def test_a_pipeline_stage_can_run_a_sweep_grid_and_chain_over_it(tmp_path):
    grid = _write(
        tmp_path / "g.yaml",
        f"""
name: g
base: {TINY}
run_dir: {tmp_path}/runs/{{grid}}/{{name}}
set: {{cluster.gpus_per_node: 1}}
axes:
  train.steps: [2, 3]
""",
    )
    pipe = _write(
        tmp_path / "p.yaml",
        f"""
name: swp
run_dir: {tmp_path}/runs/swp
cluster: {{gpus_per_node: 1}}
stages:
  - {{name: sw, command: pretrain, sweep: g.yaml}}
  - {{name: after, command: pretrain, recipe: {TINY}, over: sw, overrides: ["checkpoint.load={{sw.run_dir}}/ckpt"]}}
""",
    )
    assert grid
    sw, after = expand(load_pipeline(pipe))
    assert [t.run_dir for t in sw.tasks] == [f"{tmp_path}/runs/g/g-steps2", f"{tmp_path}/runs/g/g-steps3"]
    assert [t.config.train.steps for t in sw.tasks] == [2, 3]
    assert [t.config.checkpoint.load for t in after.tasks] == [f"{t.run_dir}/ckpt" for t in sw.tasks]
    assert [t.run_dir for t in after.tasks] == [
        f"{tmp_path}/runs/swp/after/g-steps2",
        f"{tmp_path}/runs/swp/after/g-steps3",
    ]
    assert after.depends == [("aftercorr", "sw")]
