"""Real Slurm: slurm/local_slurm.sh starts a one-node cluster (munged + slurmctld + slurmd) on localhost, and
these tests submit real jobs to it through `echo-megatron submit`: chained stages, a failing stage that
cancels its dependents, job arrays with per-task dependencies, a preemption (USR1 -> checkpoint -> requeue
-> resume to the same final loss), and the whole tiny pipeline. Where Slurm cannot be installed or started
the tests fail with the reason; they never pass silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import pytest

from echo_megatron.cluster import slurm
from echo_megatron.rundir import read_metrics

pytestmark = pytest.mark.slurm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "slurm", "local_slurm.sh")
TINY = os.path.join(REPO, "recipes", "tiny_cpu.yaml")
TESTBED = os.path.join(REPO, "recipes", "demo", "testbed.yaml")
GRPO = os.path.join(REPO, "recipes", "demo", "grpo_testbed.yaml")
FINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
}


@dataclass
class Cluster:
    dir: str
    conf: str
    start_seconds: float


@pytest.fixture(scope="module")
def local_slurm():
    if os.geteuid() != 0:
        pytest.fail(
            "REAL SLURM NOT TESTED: slurm/local_slurm.sh needs root to install and run the daemons", False
        )
    d = tempfile.mkdtemp(prefix="echo-slurm-", dir="/tmp")
    t0 = time.monotonic()
    out = subprocess.run(["bash", SCRIPT, "start", d], capture_output=True, text=True, timeout=900)
    took = time.monotonic() - t0
    if out.returncode != 0:
        subprocess.run(["bash", SCRIPT, "stop", d], capture_output=True, text=True, timeout=300)
        pytest.fail(
            f"REAL SLURM NOT TESTED: slurm/local_slurm.sh start failed (exit {out.returncode}):\n"
            f"{out.stdout[-1500:]}\n{out.stderr[-3000:]}",
            False,
        )
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = os.path.join(d, "slurm.conf")
    print(f"\nlocal Slurm up in {took:.1f} s ({d})")
    try:
        yield Cluster(d, os.environ["SLURM_CONF"], took)
    finally:
        stop = subprocess.run(["bash", SCRIPT, "stop", d], capture_output=True, text=True, timeout=300)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        assert stop.returncode == 0, stop.stderr
        shutil.rmtree(d, ignore_errors=True)


def submit(*args: str, cwd) -> dict[str, str]:
    """`echo-megatron submit ...` -> {stage: job id}."""
    out = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "submit", *args],
        capture_output=True,
        text=True,
        cwd=str(cwd),
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return dict(line.split("\t") for line in out.stdout.splitlines() if "\t" in line)


def records(job_id: str) -> list[dict[str, str]]:
    return slurm.show_job(job_id)


def wait_final(job_id: str, timeout: float = 600) -> list[dict[str, str]]:
    """Poll until every record (array task) of the job is in a final state."""
    deadline = time.monotonic() + timeout
    recs: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        recs = records(job_id)
        if (
            recs
            and all(r.get("JobState") in FINAL for r in recs)
            and not any("-" in r.get("ArrayTaskId", "") for r in recs)
        ):
            return recs
        time.sleep(1)
    pytest.fail(
        f"job {job_id} not finished after {timeout} s: {[(r.get('JobId'), r.get('JobState'), r.get('Reason')) for r in recs]}"
    )


def log_of(run_root: str, stage: str, job_id: str) -> str:
    with open(
        os.path.join(run_root, "slurm", f"{stage}-{job_id}.out"), encoding="utf-8", errors="replace"
    ) as f:
        return f.read()


def status_rows(root: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "status", root, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


# Every tiny CPU job: 1 node of this machine, no GPUs, not exclusive, this Python, threads capped.
CPU_JOB = (
    f"cluster: {{nodes: 1, gpus_per_node: 2, exclusive: false, time: '00:20:00', python: {sys.executable}}}"
)


def test_local_slurm_runs_a_two_task_job(local_slurm, tmp_path):
    script = _write(
        tmp_path / "hello.sbatch",
        f"#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --output={tmp_path}/hello.out\n"
        f'srun {sys.executable} -c \'import os; print("rank", os.environ["SLURM_PROCID"], "of", os.environ["SLURM_NTASKS"])\'\n',
    )
    job = slurm.sbatch(script)
    (rec,) = wait_final(job, 120)
    assert rec["JobState"] == "COMPLETED", rec
    lines = sorted((tmp_path / "hello.out").read_text().split("\n"))
    assert "rank 0 of 2" in lines and "rank 1 of 2" in lines


def test_preprocess_job_array_splits_the_shards_over_its_tasks(local_slurm, tmp_path):
    """`submit RECIPE --command preprocess --nodes 2`: two one-node array tasks, each builds its share of the
    shards, the last one merges every manifest."""
    tb = [f"testbed.out={tmp_path}/tb", "testbed.n_train=400", "testbed.n_test=10"]
    out = subprocess.run([sys.executable, "-m", "echo_megatron", "testbed", TESTBED, *tb], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    ids = submit(TESTBED, "--command", "preprocess", "--nodes", "2", *tb, f"run_dir={tmp_path}/run",
                 "cluster.gpus_per_node=1", "cluster.exclusive=false", f"cluster.python={sys.executable}",
                 "cluster.time=00:20:00", cwd=tmp_path)  # fmt: skip
    recs = wait_final(ids["preprocess"], 600)
    assert sorted(r["ArrayTaskId"] for r in recs) == ["0", "1"] and {r["JobState"] for r in recs} == {
        "COMPLETED"
    }
    logs = [
        (tmp_path / "run" / "slurm" / f"preprocess-{ids['preprocess']}_{i}.out").read_text() for i in (0, 1)
    ]
    assert "(task 0 of 2)" in logs[0] and "(task 1 of 2)" in logs[1] and "torchrun" not in logs[0] + logs[1]
    for source in ("tb_code", "tb_code_interp", "tb_nl"):
        manifest = json.loads((tmp_path / "tb" / "indexed" / source / "manifest.json").read_text())
        assert manifest["num_shards"] == 1 and manifest["docs"] > 0


def test_chained_stages_run_in_order_with_both_launchers(local_slurm, tmp_path):
    """pretrain (torchrun, 2 ranks, TP=2) -> more pretraining from its checkpoint (srun, 2 ranks, TP=2)."""
    pipe = _write(
        tmp_path / "chain.yaml",
        f"""
name: chain
run_dir: {tmp_path}/runs/chain
{CPU_JOB}
overrides: [parallel.tp=2, train.threads=1, logging.tensorboard=false, logging.progress_bar=false]
stages:
  - name: pretrain
    command: pretrain
    recipe: {TINY}
    overrides: [train.steps=6, checkpoint.save_interval=3]
  - name: more
    command: pretrain
    recipe: {TINY}
    cluster: {{launcher: srun}}
    overrides: ["checkpoint.load={{pretrain.run_dir}}/checkpoints", train.steps=4]
""",
    )
    ids = submit(pipe, cwd=tmp_path)
    assert list(ids) == ["pretrain", "more"]
    root = f"{tmp_path}/runs/chain"
    (first,) = wait_final(ids["pretrain"])
    (second,) = wait_final(ids["more"])
    assert first["JobState"] == "COMPLETED", log_of(root, "pretrain", ids["pretrain"])[-3000:]
    assert second["JobState"] == "COMPLETED", log_of(root, "more", ids["more"])[-3000:]
    assert second["StartTime"] >= first["EndTime"]  # afterok: the second job waited for the first
    assert [r["step"] for r in read_metrics(f"{root}/pretrain", "pretrain")] == list(range(1, 7))
    assert [r["step"] for r in read_metrics(f"{root}/more", "pretrain")] == list(range(1, 5))
    assert "initialised from" in log_of(root, "more", ids["more"])
    assert "torch.distributed.run" in log_of(root, "pretrain", ids["pretrain"])
    rows = {r["stage"]: r for r in status_rows(root)}
    assert rows["pretrain"]["state"] == "COMPLETED" and rows["pretrain"]["progress"].startswith(
        "step 6/6 loss"
    )
    assert rows["more"]["checkpoint"] == "iter_0000004"


def test_a_failed_stage_cancels_the_stages_after_it(local_slurm, tmp_path):
    pipe = _write(
        tmp_path / "fail.yaml",
        f"""
name: fail
run_dir: {tmp_path}/runs/fail
{CPU_JOB}
stages:
  - name: broken
    command: pretrain
    recipe: {TINY}
    cluster: {{gpus_per_node: 1}}
    overrides: [checkpoint.load={tmp_path}/no/such/checkpoint, train.threads=1]
  - name: never
    command: pretrain
    recipe: {TINY}
""",
    )
    ids = submit(pipe, cwd=tmp_path)
    (broken,) = wait_final(ids["broken"])
    (never,) = wait_final(ids["never"], 120)  # --kill-on-invalid-dep: cancelled, not pending forever
    assert broken["JobState"] == "FAILED"
    assert never["JobState"] == "CANCELLED"
    assert not os.path.exists(f"{tmp_path}/runs/fail/never/metrics.jsonl")
    states = {r["stage"]: r["state"] for r in status_rows(f"{tmp_path}/runs/fail")}
    assert states["broken"].startswith("FAILED") and states["never"].startswith("CANCELLED")


def test_a_grid_runs_as_a_job_array_and_over_chains_task_by_task(local_slurm, tmp_path):
    pipe = _write(
        tmp_path / "grid.yaml",
        f"""
name: grid
run_dir: {tmp_path}/runs/grid
{CPU_JOB}
overrides: [train.threads=1, logging.tensorboard=false, logging.progress_bar=false]
stages:
  - name: scan
    command: pretrain
    recipe: {TINY}
    cluster: {{gpus_per_node: 1, launcher: srun}}
    grid: {{optimizer.lr: [0.001, 0.003]}}
    overrides: [train.steps=3]
  - name: cont
    command: pretrain
    recipe: {TINY}
    cluster: {{gpus_per_node: 1}}
    over: scan
    overrides: ["checkpoint.load={{scan.run_dir}}/checkpoints", train.steps=2]
""",
    )
    ids = submit(pipe, cwd=tmp_path)
    scan = {r["ArrayTaskId"]: r for r in wait_final(ids["scan"])}
    cont = {r["ArrayTaskId"]: r for r in wait_final(ids["cont"])}
    assert sorted(scan) == sorted(cont) == ["0", "1"]
    root = f"{tmp_path}/runs/grid"
    for i, lr in enumerate(("0.001", "0.003")):
        s, c = scan[str(i)], cont[str(i)]
        assert s["JobState"] == c["JobState"] == "COMPLETED", (s, c)
        assert c["StartTime"] >= s["EndTime"]  # aftercorr: each task after its own scan task
        label = f"00{i}_{lr}"
        assert read_metrics(f"{root}/scan/{label}", "pretrain")[-1]["step"] == 3
        assert read_metrics(f"{root}/cont/{label}", "pretrain")[-1]["step"] == 2
    rows = status_rows(root)
    assert [r["stage"] for r in rows] == ["scan[0]", "scan[1]", "cont[0]", "cont[1]"]
    assert all(r["state"] == "COMPLETED" for r in rows)


def _diagnose(cluster: Cluster, job: str) -> str:
    """Slurm's own log lines about ``job`` (for failure messages)."""
    lines = []
    for name in ("slurmctld.log", "slurmd.log"):
        with open(os.path.join(cluster.dir, "log", name), encoding="utf-8", errors="replace") as f:
            lines += [
                f"{name}: {line.rstrip()}"
                for line in f
                if f"JobId={job} " in line
                or f"job {job} " in line
                or f"[{job}." in line
                or f"StepId={job}." in line
            ]
    return "\n".join(lines[-40:])


def _wait_rows(path: str, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if sum(1 for line in f if line.endswith("\n")) >= n:
                    return
        time.sleep(0.2)
    pytest.fail(f"{path}: fewer than {n} rows after {timeout} s")


def test_usr1_preemption_requeues_and_resumes_to_the_same_final_loss(local_slurm, tmp_path):
    """USR1 to the batch shell (what --signal=B:USR1@120 sends before the time limit) mid-run: the trainer
    saves and exits, the job requeues itself, restarts from the checkpoint and ends with the loss of an
    uninterrupted run."""
    steps = 80
    common = [
        f"train.steps={steps}",
        "checkpoint.save_interval=0",  # no periodic saves: the only mid-run checkpoint is the preemption's
        "train.threads=1",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "cluster.exclusive=false",
        "cluster.gpus_per_node=2",
        f"cluster.python={sys.executable}",
    ]
    ref = submit(TINY, *common, f"run_dir={tmp_path}/ref", cwd=tmp_path)["pretrain"]
    job = submit(TINY, *common, f"run_dir={tmp_path}/pre", cwd=tmp_path)["pretrain"]
    _wait_rows(f"{tmp_path}/pre/metrics.jsonl", 5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=60)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the trainer saves, the batch script requeues the job
        (rec,) = records(job)
        if rec.get("Restarts") == "1":
            break
        assert rec["JobState"] in ("RUNNING", "COMPLETING", "REQUEUED", "PENDING"), rec
        time.sleep(0.5)
    else:
        pytest.fail(f"job {job} was not requeued: {records(job)}\n{_diagnose(local_slurm, job)}")
    # Slurm holds a requeued job for the credential lifetime (cred_expire=10 s in slurm/local_slurm.sh; 120 s by
    # default), then starts it again by itself, once its previous run's credential has expired.
    (done,) = wait_final(job)
    (ref_done,) = wait_final(ref)
    log = log_of(f"{tmp_path}/pre", "pretrain", job)
    assert done["JobState"] == "COMPLETED" and done["Restarts"] == "1", (
        f"{done}\n{log[-3000:]}\n{_diagnose(local_slurm, job)}"
    )
    assert ref_done["JobState"] == "COMPLETED"
    assert "got SIGUSR1" in log and "requeueing job" in log and ", start 2," in log
    saved = sorted(os.listdir(f"{tmp_path}/pre/checkpoints"))
    mid = [int(d.split("_")[1]) for d in saved if d.startswith("iter_") and int(d.split("_")[1]) < steps]
    assert mid and 0 < mid[0] < steps, f"the signal came too late to test a resume: {saved}"
    assert f"resumed from {tmp_path}/pre/checkpoints/iter_{mid[0]:07d} at step {mid[0]}" in log
    a = {r["step"]: r["loss"] for r in read_metrics(f"{tmp_path}/ref", "pretrain")}
    b = {r["step"]: r["loss"] for r in read_metrics(f"{tmp_path}/pre", "pretrain")}
    assert sorted(b) == list(range(1, steps + 1))
    assert b[steps] == pytest.approx(a[steps], rel=1e-6, abs=1e-7)
    assert [b[s] for s in range(mid[0] + 1, steps + 1)] == pytest.approx(
        [a[s] for s in range(mid[0] + 1, steps + 1)], rel=1e-6
    )


def test_tiny_pipeline_testbed_to_pretrain_rl_eval(local_slurm, tmp_path):
    """The whole study as chained jobs: testbed data -> preprocess -> pretrain (2 ranks, gloo) -> GRPO -> eval."""
    from echo_megatron.cluster.submit import prepare
    from echo_megatron.commands.submit import missing_commands

    data = tmp_path / "data"
    tiny = "model.num_layers=2, model.hidden_size=64, model.num_attention_heads=4, model.ffn_hidden_size=128"
    pipe = _write(
        tmp_path / "study.yaml",
        f"""
name: study
run_dir: {tmp_path}/runs/study
{CPU_JOB}
overrides: [testbed.out={data}/testbed, data.indexed_dir={data}/indexed, testbed.n_train=400, testbed.n_test=20,
            train.threads=1, logging.tensorboard=false, logging.progress_bar=false]
stages:
  - {{name: testbed, command: testbed, recipe: {TESTBED}, cluster: {{gpus_per_node: 1, launcher: srun}}}}
  - {{name: preprocess, command: preprocess, recipe: {TESTBED}, cluster: {{gpus_per_node: 1, launcher: srun}}}}
  - name: pretrain
    command: pretrain
    recipe: {TESTBED}
    overrides: [{tiny}, train.steps=20, train.micro_batch_size=8, schedule.warmup_steps=5]
  - name: grpo
    command: rl
    recipe: {GRPO}
    overrides: ["rl.base={{pretrain.run_dir}}", rl.steps=2, rl.num_rollout_samples=4, rollout.n=4,
                rollout.max_new_tokens=24, rl.micro_batch_size=8, rewards.sandbox_workers=1]
  - name: eval
    command: eval
    recipe: {TESTBED}
    cluster: {{gpus_per_node: 1}}
    args: ["{{grpo.run_dir}}", "eval.tasks=[testbed]", eval.max_problems=8, --out, "{{run_dir}}"]
""",
    )
    _, _, rendered = prepare(pipe, [])
    missing = missing_commands(rendered)
    if missing:  # run the stages that exist now, then say loudly which are still missing
        first_missing = next(i for i, r in enumerate(rendered) if r.job.stage.command in missing)
        text = open(pipe, encoding="utf-8").read()
        cut = text.index(f"  - name: {rendered[first_missing].job.stage.name}\n")
        pipe = _write(tmp_path / "study_prefix.yaml", text[:cut])
    ids = submit(pipe, cwd=tmp_path)
    root = f"{tmp_path}/runs/study"
    for stage, job in ids.items():
        (rec,) = wait_final(job, 1200)
        assert rec["JobState"] == "COMPLETED", (stage, log_of(root, stage, job)[-3000:])
    assert os.path.exists(f"{data}/testbed/tokenizer.json")
    assert read_metrics(f"{root}/pretrain", "pretrain")[-1]["step"] == 20
    if missing:
        pytest.xfail(
            f"stages testbed -> preprocess -> pretrain ran; NOT RUN YET: {missing} (commands not in the package yet)"
        )
    assert read_metrics(f"{root}/grpo", "rl")[-1]["step"] == 2
    with open(f"{root}/eval/eval/testbed.json", encoding="utf-8") as f:
        result = json.load(f)
    assert result["task"] == "testbed" and result["num_problems"] == 8 and 0.0 <= result["pass@1"] <= 1.0
    rows = {r["stage"]: r for r in status_rows(root)}
    assert all(r["state"] == "COMPLETED" for r in rows.values()), rows
    assert rows["grpo"]["progress"].startswith("step 2/2")
    assert rows["eval"]["progress"].startswith("testbed pass@1")
