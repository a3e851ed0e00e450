"""Sandbox throughput: programs/s of the pre-forked SandboxPool vs one fresh ``python`` subprocess per program.

Both paths run the 1,000 TinyGSM-style solutions (fences removed, ``simple_math_problem()`` called) with
the same parallelism (``--workers``, default 2 = the CI machine's cores), in the same run:

    pool        ``score(completions, ..., "gsm8k", pool=pool)``: classification, extraction, every program in a
                hardened fork of a clean template (PID/mount/net/IPC namespaces, the filesystem view, a leased
                uid, rlimits, the seccomp allow list), the result read back;
    subprocess  ``python -c '<program>; print(simple_math_problem())'`` per program, ``--workers`` at a time,
                no sandboxing at all; on ``--baseline-n`` programs (default 150) and extrapolated to 1,000,
                since a fresh interpreter costs ~100-160 ms here.

Prints programs/s for both paths and the ratio. Targets on 2 cores: >= 200 programs/s and >= 10x. On a shared
machine the absolute rate follows the load average, so the pool line also prints the CPU time it used per program
and the rate that implies on idle cores.

``--layers`` prints instead what each isolation layer costs: the pool's CPU time per program (the least of
``--rounds`` passes over 300 programs, which a loaded machine inflates least) and its start time, with all layers
and with each one turned off (``unsafe_ok``); the difference is the layer's cost.

    python bench/sandbox_throughput.py [--workers 2] [--baseline-n 150] [--repeat 1]
    python bench/sandbox_throughput.py --layers [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "sft_samples"  # real samples shipped with the tests (gzip JSONL)


def sample_lines(name: str) -> list[str]:
    """The lines of ``tests/data/sft_samples/<name>.jsonl.gz``."""
    import gzip

    with gzip.open(SAMPLES / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


sys.path.insert(0, str(REPO))

from echo_megatron.rewards import SandboxPool, score  # noqa: E402
from echo_megatron.rewards.extract import code_program  # noqa: E402


def solutions() -> list[str]:
    return [
        json.loads(line)["assistant"]
        for line in sample_lines("tinygsm_style_gpt41_sample1000")
        if line.strip()
    ]


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children and, recursively, its live children (/proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:  # it exited meanwhile
        return 0.0
    own = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return own + sum(_tree_cpu_s(c) for c in children)


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds of this process plus the given workers' process trees (the template, whose reaped children
    are the programs)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime + sum(_tree_cpu_s(pid) for pid in pids)


def pool_rate(comps: list[str], workers: int, repeat: int) -> tuple[float, float, int, dict]:
    """(programs/s, CPU ms per program, programs that returned a value, isolation)."""
    with SandboxPool(workers=workers) as pool:
        pool.wait_ready()
        score(comps[:20], ["0"] * 20, "gsm8k", pool=pool)  # warm-up
        cpu0, t0 = _cpu_s(pool.worker_pids), time.perf_counter()
        for _ in range(repeat):
            results = score(comps, ["0"] * len(comps), "gsm8k", pool=pool)
        dt, cpu = time.perf_counter() - t0, _cpu_s(pool.worker_pids) - cpu0
        n = repeat * len(comps)
        return n / dt, cpu / n * 1000, sum(r.extracted is not None for r in results), pool.isolation


LAYERS_OFF = (
    ("all layers", {}),
    ("no seccomp allow list", {"seccomp": False}),
    ("no namespaces (PID, view, network, IPC)", {"namespaces": False}),
    ("no uid drop (leased uid)", {"privdrop": False}),
)


def layer_costs(comps: list[str], workers: int, rounds: int, n: int = 300) -> None:
    """Per configuration: time to ready, least CPU-ms per program; then each layer's cost."""
    rows = []
    for name, off in LAYERS_OFF:
        t0 = time.perf_counter()
        with SandboxPool(workers=workers, unsafe_ok=True, **off) as pool:
            pool.wait_ready()
            ready = time.perf_counter() - t0
            score(comps[:20], ["0"] * 20, "gsm8k", pool=pool)  # warm-up
            best = float("inf")
            for _ in range(rounds):
                cpu0 = _cpu_s(pool.worker_pids)
                score(comps[:n], ["0"] * n, "gsm8k", pool=pool)
                best = min(best, (_cpu_s(pool.worker_pids) - cpu0) / n * 1000)
            setup = pool.isolation.get("setup_ms", {})
        rows.append((name, ready, best))
        print(f"{name:<42} ready in {ready:5.2f} s {setup}  {best:5.2f} CPU-ms per program", flush=True)
    full = rows[0][2]
    for name, _, cpu in rows[1:]:
        print(f"cost of the layer missing in '{name}': {full - cpu:+.2f} CPU-ms per program")


def _children_cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _fork_cost_ms(step, k: int = 300, batches: int = 5) -> float:
    """CPU-ms per fork + ``step()`` in the child + reap (the least of ``batches``)."""
    best = float("inf")
    for _ in range(batches):
        c0 = _children_cpu_s()
        for _ in range(k // batches):
            pid = os.fork()
            if pid == 0:
                try:
                    step()
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        best = min(best, (_children_cpu_s() - c0) / (k // batches) * 1000)
    return best


def per_program_costs() -> None:
    """What the per-program steps cost, each measured alone in this process (the light template's modules are
    imported): CPU-ms per program, least of 5 batches."""
    import socket

    from echo_megatron.rewards.policy import DEFAULT_PRELOAD, SandboxPolicy
    from echo_megatron.rewards.protocol import recv_msg, send_msg
    from echo_megatron.rewards.seccomp import AllowFilter

    for name in DEFAULT_PRELOAD:
        __import__(name)
    policy = SandboxPolicy()
    flt = AllowFilter(policy)
    limits = [(resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_NPROC, 0), (resource.RLIMIT_CORE, 0)]

    def harden() -> None:
        os.setsid()
        os.chdir("/")
        os.environ.clear()
        for res, lim in limits:
            resource.setrlimit(res, (lim, lim))

    def drop_uid() -> None:
        os.setgroups([])
        os.setresgid(policy.uid_base, policy.uid_base, policy.uid_base)
        os.setresuid(policy.uid_base, policy.uid_base, policy.uid_base)

    def syscalls() -> None:
        for _ in range(20000):
            os.getppid()

    def filtered_syscalls() -> None:
        flt.load()
        syscalls()

    base = _fork_cost_ms(lambda: None)
    print(f"fork + reap of a light template (baseline, not new): {base:6.3f} CPU-ms per program")
    print(f"hardening (setsid, cwd, environment, rlimits):       {_fork_cost_ms(harden) - base:+6.3f}")
    if os.geteuid() == 0:
        print(f"uid drop to the leased uid:                          {_fork_cost_ms(drop_uid) - base:+6.3f}")
    print(f"seccomp allow list load:                             {_fork_cost_ms(flt.load) - base:+6.3f}")
    per_call = (_fork_cost_ms(filtered_syscalls, k=50) - _fork_cost_ms(syscalls, k=50)) / 20000 * 1e6
    print(
        f"seccomp allow list per system call:                  {per_call:+6.1f} ns (a program makes ~100-300)"
    )
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    n, c0 = 2000, _children_cpu_s()
    for i in range(n):  # what the pool and the template exchange per program: 2 pipes, armed + fds, go, exit
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        send_msg(a, {"op": "armed", "n": i}, (job_w, res_r))
        _, fds = recv_msg(b)
        send_msg(b, {"op": "go", "n": i})
        recv_msg(a)
        send_msg(a, {"op": "exit", "n": i, "status": 0, "cpu_s": 0.0, "why": None})
        recv_msg(b)
        for fd in (job_r, job_w, res_r, res_w, *fds):
            os.close(fd)
    print(f"pool <-> template messages and pipes:                {(_children_cpu_s() - c0) / n * 1000:+6.3f}")


def _one_subprocess(code: str) -> bool:
    program = code + "\nprint(simple_math_problem())\n"
    try:
        out = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=3, text=True)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def subprocess_rate(comps: list[str], workers: int, n: int) -> tuple[float, int]:
    programs = [code_program(c) for c in comps[:n]]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        ok = sum(ex.map(_one_subprocess, programs))
    return len(programs) / (time.perf_counter() - t0), ok


def bare_start_ms(k: int = 5) -> float:
    t0 = time.perf_counter()
    for _ in range(k):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.perf_counter() - t0) / k * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-n", type=int, default=150, help="programs run by the subprocess baseline")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the 1,000 programs on the pool path")
    ap.add_argument("--layers", action="store_true", help="the cost of each isolation layer instead")
    ap.add_argument(
        "--rounds", type=int, default=3, help="--layers: passes per configuration (the least counts)"
    )
    args = ap.parse_args()
    comps = solutions()
    print(f"{len(comps)} TinyGSM-style programs, {args.workers} workers, {os.cpu_count()} CPUs")
    if args.layers:
        print(f"load average {os.getloadavg()[0]:.1f}")
        per_program_costs()
        layer_costs(comps, args.workers, args.rounds)
        return 0
    print(f"bare `python -c pass` start: {bare_start_ms():.0f} ms")
    load0 = os.getloadavg()[0]
    rate_pool, cpu_ms, returned, iso = pool_rate(comps, args.workers, args.repeat)
    layers = [
        k for k in ("pidns", "netns", "mountns", "view", "privdrop", "caps_dropped", "seccomp") if iso.get(k)
    ]
    print(
        f"pool:       {rate_pool:7.1f} programs/s  ({returned}/{len(comps)} returned a value; layers: {layers})"
    )
    print(
        f"            {cpu_ms:.1f} CPU-ms per program (caller + workers + their forks), i.e. at most "
        f"{(os.cpu_count() or 1) * 1000 / cpu_ms:.0f} programs/s on {os.cpu_count()} idle cores; "
        f"load average {load0:.1f} when it started"
    )
    rate_sub, ok = subprocess_rate(comps, args.workers, args.baseline_n)
    n = min(args.baseline_n, len(comps))
    print(
        f"subprocess: {rate_sub:7.1f} programs/s  ({ok}/{n} returned a value; measured on {n} programs, "
        f"1,000 would take ~{len(comps) / rate_sub:.0f} s)"
    )
    ratio = rate_pool / rate_sub
    print(f"ratio pool / subprocess: {ratio:.1f}x   (targets: >= 200 programs/s, >= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
