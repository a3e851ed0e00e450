"""Multi-node on one machine: slurm/local_cluster.sh starts a two-node Slurm (node1 and node2, each in its own
network namespace with its own address, hostname and /etc/hosts, its own slurmd; one slurmctld and munged),
and these tests submit real jobs across the two nodes through `echo-megatron submit`, one rank per node:

* DP=2 across the hosts and TP=2 spanning them: per-step losses equal the one-node runs (torchrun, 2 ranks);
* GRPO at TP=2 across the hosts: its step metrics equal the one-node run's;
* USR1 to the job: the ranks on both nodes save, the job requeues and resumes to the same losses;
* node2 lost in the middle of a checkpoint save (link cut, everything on it killed): Slurm requeues the job or
  fails it, the job (or a resubmission) resumes from the last complete checkpoint, the half-written one is
  never read, and the run ends with the uninterrupted run's losses;
* stop removes every process, namespace, link, address and file that start created.

Each node's /etc/hosts maps its own name to 127.0.1.1, as Debian/Ubuntu installers and cloud-init do: without
echo_megatron.distributed.init.gloo_interface every two-node job here fails with "Gloo connectFullMesh failed
... remote=[127.0.1.1]". Where the cluster cannot start the tests fail with the reason; they never skip.
Cost: about 450 CPU-seconds, 4-5 minutes on 2 idle cores (one cluster for the module; the one-node
references run beside the Slurm jobs; about a minute is Slurm noticing the lost node and holding requeued
jobs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from echo_testing import cli, losses

from echo_megatron.cluster import slurm

pytestmark = pytest.mark.slurm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "slurm", "local_cluster.sh")
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
STEPS = 50  # every pretraining run here: the layout runs, their references and the interrupted runs
QUIET = ["train.threads=1", "logging.tensorboard=false", "logging.progress_bar=false"]
LAYOUTS = {"dp2": [], "tp2": ["parallel.tp=2"]}
# Two nodes, one rank (gloo, CPU) per node, not exclusive so that two jobs can share the nodes.
TWO_NODES = [
    "cluster.nodes=2",
    "cluster.gpus_per_node=1",
    "cluster.exclusive=false",
    f"cluster.python={sys.executable}",
]


@dataclass
class Cluster:
    dir: str
    conf: str
    names: dict[str, str]  # DIR/cluster.env: ID, NET, SW_NS, CTL_LINK, NODE_NS_node1, NODE_NS_node2
    made: list[
        str
    ]  # DIR/cluster.state: what start created ("netns NAME", "link NAME", "mount /run/netns", ...)
    netns_inodes: set[int]  # of its namespaces: a process still in one after stop keeps it alive, unnamed
    start_seconds: float


def _script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=timeout)


def _read_names(d: str) -> dict[str, str]:
    with open(os.path.join(d, "cluster.env"), encoding="utf-8") as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line)


def _start(d: str) -> Cluster:
    if os.geteuid() != 0:
        pytest.fail(
            "MULTI-NODE NOT TESTED: slurm/local_cluster.sh needs root (network namespaces, Slurm)", False
        )
    t0 = time.monotonic()
    out = _script("start", d, timeout=900)
    took = time.monotonic() - t0
    if out.returncode != 0:
        _script("stop", d)
        pytest.fail(
            f"MULTI-NODE NOT TESTED: slurm/local_cluster.sh start failed (exit {out.returncode}):\n"
            f"{out.stdout[-1500:]}\n{out.stderr[-3000:]}",
            False,
        )
    with open(os.path.join(d, "cluster.state"), encoding="utf-8") as f:
        made = f.read().splitlines()
    inodes = {os.stat(f"/run/netns/{m.split()[1]}").st_ino for m in made if m.startswith("netns ")}
    return Cluster(d, os.path.join(d, "slurm.conf"), _read_names(d), made, inodes, took)


def _leftovers(c: Cluster) -> list[str]:
    """What of the cluster ``c`` still exists: processes, namespaces, links, addresses, files."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [
        f"netns {ns}" for ns in re.findall(r"^(\S+)", netns, re.M) if ns.startswith(f"echo{c.names['ID']}-")
    ]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {c.names['CTL_LINK']}"] if f" {c.names['CTL_LINK']}@" in links else []
    addrs = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    found += [f"address {c.names['NET']}.1"] if f" {c.names['NET']}.1/" in addrs else []
    found += [
        p
        for p in (f"/etc/netns/{c.names[k]}" for k in c.names if k.startswith("NODE_NS_"))
        if os.path.exists(p)
    ]
    for entry in c.made:  # directories and the /run/netns mount start made, unless others use them now
        kind, path = entry.split(" ", 1)
        if kind == "dir" and os.path.isdir(path) and not os.listdir(path):
            found.append(entry)
        if kind == "mount" and os.path.isdir(path) and not os.listdir(path) and os.path.ismount(path):
            found.append(entry)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            netns = int(os.readlink(f"/proc/{pid}/ns/net").split("[")[1].rstrip("]"))
        except OSError:
            continue
        if (c.dir in cmd or netns in c.netns_inodes) and int(pid) != os.getpid():
            found.append(f"process {pid}: {cmd[:200]}")
    found += [f"{c.dir}/{name}" for name in os.listdir(c.dir) if name != "log"]
    return found


@pytest.fixture(scope="module")
def cluster():
    d = tempfile.mkdtemp(prefix="echo-cluster-", dir="/tmp")
    c = _start(d)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = c.conf
    nodes = subprocess.run(["sinfo", "-N", "-o", "%N %T %o"], capture_output=True, text=True).stdout
    print(f"\ntwo-node Slurm up in {c.start_seconds:.1f} s ({d}):\n{nodes}")
    try:
        yield c
    finally:
        stop = _script("stop", d)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        left = _leftovers(c)
        shutil.rmtree(d, ignore_errors=True)
        assert stop.returncode == 0 and not left, (stop.stderr, left)


# ---- helpers -------------------------------------------------------------------------------------------


def submit(*args: str, cwd) -> str:
    """`echo-megatron submit ...` of a plain recipe -> its job id."""
    out = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "submit", *args],
        capture_output=True,
        text=True,
        cwd=str(cwd),
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (line,) = [line for line in out.stdout.splitlines() if "\t" in line]
    return line.split("\t")[1]


def record(job: str) -> dict[str, str]:
    recs = slurm.show_job(job)
    return recs[0] if recs else {}


def wait_for(job: str, done, timeout: float = 600, what: str = "finished") -> dict[str, str]:
    deadline = time.monotonic() + timeout
    rec: dict[str, str] = {}
    while time.monotonic() < deadline:
        rec = record(job)
        if rec and done(rec):
            return rec
        time.sleep(0.5)
    pytest.fail(f"job {job} not {what} after {timeout} s: {rec.get('JobState')} {rec.get('Reason')}")


def wait_final(job: str, timeout: float = 600) -> dict[str, str]:
    return wait_for(job, lambda r: r.get("JobState") in FINAL, timeout)


def log_of(run_dir: str, job: str, command: str = "pretrain") -> str:
    with open(
        os.path.join(run_dir, "slurm", f"{command}-{job}.out"), encoding="utf-8", errors="replace"
    ) as f:
        return f.read()


def why(log: str) -> str:
    """A failed job's log, for an assertion message: its first error lines, then its end."""
    errors = [line for line in log.splitlines() if re.search(r"Error|error:|failed", line)][:8]
    return "\n".join(errors) + "\n...\n" + log[-2500:]


def wait_rows(path: str, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if sum(1 for line in f if line.endswith("\n")) >= n:
                    return
        time.sleep(0.1)
    pytest.fail(f"{path}: fewer than {n} rows after {timeout} s")


def assert_same_losses(got: dict[int, float], want: dict[int, float], what: str) -> None:
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1)), (what, sorted(got))
    bad = [(s, got[s], want[s]) for s in want if abs(got[s] - want[s]) > 1e-6 * max(1.0, abs(want[s]))]
    assert not bad, f"{what}: steps whose loss differs by more than 1e-6 (step, got, want): {bad[:5]}"


def pretrain_args(run_dir: str, layout: str, *extra: str) -> list[str]:
    """A tiny pretraining run (no checkpoints but the last one unless ``extra`` says otherwise)."""
    return [
        TINY,
        f"run_dir={run_dir}",
        f"train.steps={STEPS}",
        "checkpoint.save_interval=0",
        *QUIET,
        *LAYOUTS[layout],
        *extra,
    ]


# ---- the runs several tests compare with ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=1) as ex:  # one reference at a time next to the Slurm jobs
        yield ex


@pytest.fixture(scope="module")
def one_node(pool, tmp_path_factory) -> dict[str, Future]:
    """Losses of the one-node runs (torchrun, 2 ranks on this host, no Slurm), computed in the background."""
    d = tmp_path_factory.mktemp("one_node")

    def run(layout: str) -> dict[int, float]:
        cli(["pretrain", *pretrain_args(str(d / layout), layout)], nproc=2)
        return losses(d / layout)

    return {layout: pool.submit(run, layout) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def two_node(cluster, one_node, tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Uninterrupted two-node runs of both layouts, submitted together: layout -> (run dir, job id)."""
    d = tmp_path_factory.mktemp("two_node")
    jobs = {
        layout: (str(d / layout), submit(*pretrain_args(str(d / layout), layout, *TWO_NODES), cwd=d))
        for layout in LAYOUTS
    }
    for layout, (run_dir, job) in jobs.items():
        rec = wait_final(job)
        assert rec["JobState"] == "COMPLETED", f"{layout}: {rec['JobState']}\n{why(log_of(run_dir, job))}"
    return jobs


# ---- tests ---------------------------------------------------------------------------------------------


def test_two_idle_nodes_with_their_own_hostnames_and_addresses(cluster):
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %T %o"], capture_output=True, text=True
    ).stdout.split("\n")
    net = cluster.names["NET"]
    assert [n.split() for n in nodes if n] == [["node1", "idle", f"{net}.11"], ["node2", "idle", f"{net}.12"]]
    out = subprocess.run(
        [
            "srun",
            "-N2",
            "--ntasks-per-node=1",
            "-l",
            "sh",
            "-c",
            "echo $(hostname) $(getent hosts node1 node2)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    seen = dict(line.split(": ", 1) for line in out.stdout.strip().split("\n"))
    # each node resolves its own name to 127.0.1.1 (Debian-style) and the other's to its address
    assert seen["0"].split() == ["node1", "127.0.1.1", "node1", f"{net}.12", "node2"], seen
    assert seen["1"].split() == ["node2", f"{net}.11", "node1", "127.0.1.1", "node2"], seen


def test_gloo_uses_the_interface_that_reaches_the_other_node(cluster):
    """The premise of the gloo fix, on the nodes themselves: a job's own hostname resolves to the loopback, and
    gloo_interface names the interface of the node's cluster address instead."""
    probe = (
        "import socket; from echo_megatron.distributed.init import gloo_interface; "
        "print(socket.gethostbyname(socket.gethostname()), gloo_interface())"
    )
    out = subprocess.run(
        [
            "srun",
            "-N2",
            "--ntasks-per-node=1",
            "-l",
            "--export=ALL,MASTER_ADDR=node1",
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(out.stdout.strip().split("\n")) == ["0: 127.0.1.1 eth0", "1: 127.0.1.1 eth0"], out.stdout


def test_dp2_and_tp2_across_two_nodes_equal_one_node(cluster, one_node, two_node):
    for layout, (run_dir, job) in two_node.items():
        log = log_of(run_dir, job)
        assert "nodes node[1-2]" in log and "--nnodes=2 --nproc-per-node=1" in log, log[-3000:]
        assert log.count("gloo over network interface eth0") == 2, log[-3000:]  # local rank 0 of each node
        assert_same_losses(losses(run_dir), one_node[layout].result(), f"{layout} two nodes vs one node")


def test_usr1_on_two_nodes_saves_requeues_and_resumes_exactly(cluster, two_node, tmp_path):
    """USR1 to the batch shell on node1: the ranks on both nodes save, the job requeues itself, restarts on
    both nodes from the checkpoint and ends with the losses of the uninterrupted two-node run."""
    run_dir = str(tmp_path / "usr1")
    job = submit(*pretrain_args(run_dir, "tp2", *TWO_NODES), cwd=tmp_path)
    wait_rows(f"{run_dir}/metrics.jsonl", 5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=60)
    rec = wait_final(job)
    log = log_of(run_dir, job)
    assert rec["JobState"] == "COMPLETED" and rec["Restarts"] == "1", f"{rec}\n{why(log)}"
    assert "got SIGUSR1" in log and "requeueing job" in log and ", start 2, nodes node[1-2]" in log
    saved = sorted(d for d in os.listdir(f"{run_dir}/checkpoints") if d.startswith("iter_"))
    mid = [int(d[5:]) for d in saved if int(d[5:]) < STEPS]
    assert mid and 0 < mid[0] < STEPS, f"the signal came too late to test a resume: {saved}"
    assert f"resumed from {run_dir}/checkpoints/iter_{mid[0]:07d} at step {mid[0]}" in log
    assert_same_losses(losses(run_dir), losses(two_node["tp2"][0]), "USR1-requeued vs uninterrupted")


def test_grpo_across_two_nodes_equals_one_node(cluster, pool, tmp_path_factory):
    """A tiny testbed base (pretrained here), then two GRPO steps at TP=2: on the two nodes through submit, and
    on this host under torchrun; every step metric that does not measure time is the same."""
    d = tmp_path_factory.mktemp("grpo")
    tb = [f"testbed.out={d / 'tb'}", "testbed.n_train=400", "testbed.n_test=20"]
    tiny = [
        "model.num_layers=2",
        "model.hidden_size=64",
        "model.num_attention_heads=4",
        "model.ffn_hidden_size=128",
    ]
    cli(["testbed", TESTBED, *tb])
    cli(["preprocess", TESTBED, *tb])
    cli(
        [
            "pretrain",
            TESTBED,
            *tb,
            *tiny,
            *QUIET,
            f"run_dir={d / 'base'}",
            "train.steps=30",
            "schedule.warmup_steps=5",
            "checkpoint.save_interval=0",
        ]
    )
    rl = [
        *tb,
        *QUIET,
        f"rl.base={d / 'base'}",
        "rl.steps=2",
        "rl.num_rollout_samples=4",
        "rollout.n=4",
        "rollout.max_new_tokens=24",
        "rl.micro_batch_size=8",
        "rewards.sandbox_workers=1",
        "checkpoint.save_interval=0",
        # the tiny base rarely solves a problem: the entropy bonus makes sure the policy moves
        "rl.initial_policy_kl_penalty=0.01",
        "rl.entropy_bonus=0.01",
        "parallel.tp=2",
    ]
    job = submit(GRPO, "--command", "rl", *rl, *TWO_NODES, f"run_dir={d / 'two'}", cwd=d)
    one = pool.submit(cli, ["rl", GRPO, *rl, f"run_dir={d / 'one'}"], nproc=2)
    rec = wait_final(job)
    one.result()
    assert rec["JobState"] == "COMPLETED", why(log_of(str(d / "two"), job, "rl"))

    def rows(run_dir) -> dict[int, dict]:
        with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
            return {r["step"]: r for r in map(json.loads, f) if r.get("phase") == "rl"}

    a, b = rows(d / "one"), rows(d / "two")
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        keys = [
            k
            for k, v in a[step].items()
            if isinstance(v, float) and not k.startswith(("time", "tokens_per_s"))
        ]
        assert {"pg_loss", "grad_norm", "entropy", "kl", "accuracy"} <= set(keys)
        bad = [
            (k, a[step][k], b[step][k])
            for k in keys
            if abs(a[step][k] - b[step][k]) > 1e-6 * max(1.0, abs(a[step][k]))
        ]
        assert not bad, f"step {step}: one node vs two nodes differ: {bad}"


def _node_pids(cluster: Cluster, node: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", cluster.names[f"NODE_NS_{node}"]], capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _latest(ckpt: str) -> str:
    with open(f"{ckpt}/latest", encoding="utf-8") as f:
        return f.read().strip()


def _freeze_node_mid_save(cluster: Cluster, ckpt: str, job: str) -> tuple[int, int]:
    """Wait for a checkpoint save after the first complete one, and stop every process on node2 while it is
    half-written: the trainer's save cannot finish without node2's rank. Returns (the save, the last complete
    one). A save that finished before the stop (it takes a fraction of a second) is let go, and the next one
    tried."""
    deadline = time.monotonic() + 600
    tried: set[int] = set()
    checked = time.monotonic()
    while time.monotonic() < deadline:
        names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
        pending = [int(n[5:12]) for n in names if n.startswith("iter_") and n.endswith(".tmp")]
        latest = _latest(ckpt) if "latest" in names else None
        if pending and latest and pending[0] not in tried:
            frozen = _node_pids(cluster, "node2")
            _signal(frozen, signal.SIGSTOP)
            _signal([p for p in _node_pids(cluster, "node2") if p not in frozen], signal.SIGSTOP)
            time.sleep(1.5)  # long enough for the rename, had node2's rank finished its part
            tmp, final = f"{ckpt}/iter_{pending[0]:07d}.tmp", f"{ckpt}/iter_{pending[0]:07d}"
            if os.path.isdir(tmp) and not os.path.exists(final):
                return pending[0], int(latest[5:])
            tried.add(pending[0])
            _signal(_node_pids(cluster, "node2"), signal.SIGCONT)
        if time.monotonic() - checked > 2:
            checked = time.monotonic()
            if record(job).get("JobState") in FINAL:
                pytest.fail(
                    f"job {job} ended before a save could be caught half-written (tried {sorted(tried)})"
                )
        time.sleep(0.01)
    pytest.fail("no checkpoint save caught half-written in 600 s")


def test_a_node_lost_mid_save_resumes_from_the_last_complete_checkpoint(cluster, one_node, tmp_path):
    """node2 is lost (link cut, every process on it killed) while a checkpoint is half-written. Slurm decides:
    it requeues the job (NODE_FAIL) or the job fails and is resubmitted. Either way the next start, once node2
    is back, resumes from the checkpoint `latest` names, never from the half-written one, and the run ends with
    the losses of the uninterrupted one-node run."""
    run_dir = str(tmp_path / "lost")
    ckpt = f"{run_dir}/checkpoints"
    args = pretrain_args(run_dir, "dp2", *TWO_NODES, "checkpoint.save_interval=5", "checkpoint.keep_last=3")
    job = submit(*args, cwd=tmp_path)
    wait_for(job, lambda r: r.get("JobState") == "RUNNING", 120, "running")
    caught, complete = _freeze_node_mid_save(cluster, ckpt, job)
    out = _script("crash", cluster.dir, "node2")
    assert out.returncode == 0, out.stderr
    assert _latest(ckpt) == f"iter_{complete:07d}"
    assert os.path.isdir(f"{ckpt}/iter_{caught:07d}.tmp") and not os.path.exists(f"{ckpt}/iter_{caught:07d}")
    # Slurm finds node2 silent (SlurmdTimeout) and ends the job's first run.
    rec = wait_for(job, lambda r: r.get("JobState") in FINAL or r.get("Restarts", "0") != "0", 300, "ended")
    out = _script("revive", cluster.dir, "node2")
    assert out.returncode == 0, out.stderr
    if rec.get("Restarts", "0") != "0":
        path = "Slurm requeued the job"
    else:  # it failed instead: resubmit, as a user would
        assert rec["JobState"] in FINAL - {"COMPLETED"}, rec
        path = f"the job ended {rec['JobState']} and was resubmitted"
        job = submit(*args, cwd=tmp_path)
    done = wait_final(job)
    log = log_of(run_dir, job)
    assert done["JobState"] == "COMPLETED", f"{path}, then {done['JobState']}\n{why(log)}"
    assert f"resumed from {ckpt}/iter_{complete:07d} at step {complete}" in log, f"{path}\n{why(log)}"
    print(f"\nnode2 lost in the save of step {caught}; {path}; resumed from step {complete}")
    assert _latest(ckpt) == f"iter_{STEPS:07d}"
    assert not [n for n in os.listdir(ckpt) if n.endswith(".tmp")]  # the half-written save was redone
    assert_same_losses(losses(run_dir), one_node["dp2"].result(), f"node lost mid-save ({path}) vs one node")


def test_stop_removes_everything_start_created(cluster):
    """A second cluster beside the first (its own namespaces and /24), then stop: nothing of it is left, and
    the first cluster still has its two idle nodes."""
    d = tempfile.mkdtemp(prefix="echo-cluster-", dir="/tmp")
    try:
        c = _start(d)
        assert c.names["NET"] != cluster.names["NET"] and c.names["ID"] != cluster.names["ID"]
        before = _leftovers(c)
        assert any(x.startswith("netns") for x in before) and any(x.startswith("process") for x in before)
        assert f"address {c.names['NET']}.1" in before and f"link {c.names['CTL_LINK']}" in before
        out = _script("stop", d)
        assert out.returncode == 0, out.stderr
        assert _leftovers(c) == []
        assert os.listdir(d) == ["log"]
    finally:
        _script("stop", d)
        shutil.rmtree(d, ignore_errors=True)
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.split()
    assert states == ["idle", "idle"], states
