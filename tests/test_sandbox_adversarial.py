"""Hostile programs through the real sandbox and the real score() (programs: tests/adversarial_programs.py).

Every program, in both code formats, must get reward 0 with an error kind (or, for the number traps, be judged
wrong), finish within timeout + 1 s, reach nothing on the network, create no file outside the sandbox, leak no
secret, find no gold, and leave the pool working: a benign program afterwards still scores 1, and once the pool
is closed no process of its uids is left. Before the hunts, the same pool handled jobs that held the gold G (a
program that returned it, a math-verify comparison against it, a decoy process whose command line holds it).

Cost: 250 programs, 11-30 s on the 2-core CI machine (the time-limit attacks dominate: 1 s each over 2 workers).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from adversarial_programs import HUNT_PRELUDE, HUNTS, MARK, NUMBER_TRAPS, attacks

from echo_megatron.rewards import ERROR_KINDS, SandboxError, SandboxPool, score
from echo_megatron.rewards.leases import processes_of
from echo_megatron.rewards.sandbox import DEFAULT_PRELOAD

TIMEOUT_S = 1.0
TOKEN = f"pwned_{uuid.uuid4().hex[:12]}"
SECRET = f"sk-{uuid.uuid4().hex}"
GOLD = str(secrets.randbelow(9 * 10**11) + 10**11)  # 12 digits, in no program's text
HOME = str(Path.home())
REPO = str(Path(__file__).resolve().parents[1])
BENIGN = {
    "code": "def simple_math_problem():\n    return 6 * 7",
    "code_interp": "Let's use Python.\n<llm-code>\na = 6\na * 7\n</llm-code>\n",
}


class Listener:
    """A TCP and a UDP server on localhost that record whatever reaches them."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.tcp.settimeout(0.2)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.tcp_port, self.udp_port = self.tcp.getsockname()[1], self.udp.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, addr = self.tcp.accept()
                self.hits.append(f"tcp {addr}")
                conn.close()
            except OSError:
                pass
            try:
                data, addr = self.udp.recvfrom(1024)
                self.hits.append(f"udp {addr} {data[:20]!r}")
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.tcp.close()
        self.udp.close()


def _indent(body: str) -> str:
    return "\n".join("    " + ln for ln in body.split("\n"))


def as_code(body: str, prelude: str = "") -> str:
    """A TinyGSM-style solution (format ``code``)."""
    return prelude + "def simple_math_problem():\n" + _indent(body)


def as_notebook(body: str, prelude: str = "") -> str:
    """An OMI-1 solution (format ``code_interp``) whose last expression is the attack's value."""
    return f"Let's use Python to solve this.\n<llm-code>\n{prelude}def attack():\n{_indent(body)}\nattack()\n</llm-code>\n"


def hunt_paths(scored: Path) -> list[str]:
    """Where a gold could be read from the file system: the scored lines, data sets, the repository."""
    data = glob.glob(f"{REPO}/tests/data/**/*.gz", recursive=True) + glob.glob(
        f"{REPO}/echo_megatron/assets/**/*.gz"
    )
    return [str(scored), *data, f"{REPO}/README.md", f"{REPO}/pyproject.toml"]


def programs(listener: Listener, scored: Path) -> list[tuple[str, str, str, str]]:
    """(name, completion, gold, task) for every hostile program, both formats."""
    out = []
    for name, body in attacks(listener.tcp_port, listener.udp_port, TOKEN, HOME, REPO).items():
        for fmt, wrap in (("code", as_code), ("code_interp", as_notebook)):
            out.append((f"{fmt}:{name}", wrap(body + "\nreturn 42"), "42", "testbed"))
    subst = {
        "PATHS": repr(hunt_paths(scored)),
        "REPO_DIRS": repr([REPO, f"{REPO}/tests", f"{REPO}/echo_megatron/assets"]),
    }
    for name, body in HUNTS.items():
        for key, value in subst.items():
            body = body.replace(key, value)
        for fmt, wrap in (("code", as_code), ("code_interp", as_notebook)):
            out.append((f"{fmt}:hunt:{name}", wrap(body, HUNT_PRELUDE), GOLD, "testbed"))
    for name, expr, gold, task in NUMBER_TRAPS:
        for fmt, wrap in (("code", as_code), ("code_interp", as_notebook)):
            out.append((f"{fmt}:trap:{name}", wrap(f"return {expr}"), gold, task))
    return out


def prime(pool: SandboxPool) -> None:
    """Jobs that hold the gold, in every worker profile: a program that returns it (light and heavy), a
    math-verify comparison against it, and a program that tries to stash it for later programs."""
    holders = [
        f"def simple_math_problem():\n    mark = '{MARK}{GOLD}'\n    return {GOLD}",
        f"def simple_math_problem():\n    import sympy\n    mark = '{MARK}{GOLD}'\n    return sympy.Integer({GOLD})",
        f"def simple_math_problem():\n    import os\n    try:\n        open('/dev/shm/stash', 'w').write('{MARK}{GOLD}')\n"
        f"    except OSError:\n        pass\n    return {GOLD}",
    ]
    res = score(holders, [GOLD] * len(holders), "testbed", pool=pool)
    assert res[0].correct and res[1].correct  # they did run, and did hold the gold
    (verified,) = score([f"\\boxed{{\\sqrt{{2}} \\cdot {GOLD}}}"], [f"{GOLD}\\sqrt{{2}}"], "math", pool=pool)
    assert verified.error is None and verified.correct  # a math-verify job in a verify worker saw the gold


def leftovers() -> list[str]:
    """Every path holding TOKEN where an escaped write could land."""
    found = []
    for d in ("/", "/tmp", "/var/tmp", "/dev/shm", "/run", "/run/lock", HOME, REPO, os.getcwd()):
        try:
            found += [os.path.join(d, n) for n in os.listdir(d) if TOKEN in n]
        except OSError:
            pass
    return found


@pytest.fixture
def secret_env():
    os.environ["ECHO_SANDBOX_TEST_SECRET"] = SECRET
    os.environ["HF_TOKEN"] = f"{MARK}{GOLD}"
    yield
    os.environ.pop("ECHO_SANDBOX_TEST_SECRET", None)
    os.environ.pop("HF_TOKEN", None)


def run_and_check(pool: SandboxPool, cases: list[tuple[str, str, str, str]], listener: Listener) -> float:
    """Score every case, assert the contract (module docstring); returns the wall time."""
    t0 = time.perf_counter()
    results = {}
    for task in sorted({c[3] for c in cases}):
        mine = [c for c in cases if c[3] == task]
        for c, r in zip(mine, score([c[1] for c in mine], [c[2] for c in mine], task, pool=pool)):
            results[c[0]] = r
    wall = time.perf_counter() - t0
    bad = []
    for name, r in results.items():
        print(f"{name:>44}: reward={r.reward} error={r.error!s:<10} {r.elapsed:5.2f} s  {r.detail[:60]}")
        trap = ":trap:" in name
        if r.reward != 0.0 or r.correct or (not trap and (r.error is None or r.error not in ERROR_KINDS)):
            bad.append((name, r))
        if r.elapsed > TIMEOUT_S + 1.0:
            bad.append((name, f"took {r.elapsed:.2f} s"))
        if SECRET in (r.extracted or "") + r.detail or GOLD in (r.extracted or "") + r.detail:
            bad.append((name, "secret or gold leaked"))
    assert not bad, bad
    assert not leftovers(), leftovers()
    assert not listener.hits, listener.hits
    # the pool survives: benign programs in both formats still score 1
    ok = score(list(BENIGN.values()), ["42", "42"], "testbed", pool=pool)
    assert [r.correct for r in ok] == [True, True] and [r.format for r in ok] == list(BENIGN)
    assert all(os.path.exists(f"/proc/{pid}") for pid in pool.worker_pids)
    return wall


def assert_nothing_left(uids: list[int], pids: list[int], bases: list[str]) -> None:
    """After close(): no process of the pool's uids or workers, no directory."""
    deadline = time.monotonic() + 5.0
    while any(processes_of(u) for u in uids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for u in uids for p in processes_of(u)]
    assert not [p for p in pids if os.path.exists(f"/proc/{p}") and "zombie" not in _state(p)]
    assert not any(os.path.exists(b) for b in bases)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return f.read()
    except OSError:
        return "zombie"


def test_adversarial_suite(tmp_path, secret_env):
    listener = Listener()
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", f"{MARK}{GOLD}"])
    scored = tmp_path / "scored.jsonl"
    scored.write_text(json.dumps({"completion": "\\boxed{1}", "answer": f"{MARK}{GOLD}"}) + "\n")
    cases = programs(listener, scored)
    assert len(cases) >= 100 and {n.split(":")[0] for n, *_ in cases} == {"code", "code_interp"}
    try:
        with SandboxPool(workers=2, timeout_s=TIMEOUT_S, memory_mb=512) as pool:
            iso = pool.isolation
            print(f"\nisolation: {iso}")
            assert iso["safe"] and iso["pidns"] and iso["view"] and iso["seccomp"] and iso["caps_dropped"]
            prime(pool)
            wall = run_and_check(pool, cases, listener)
            print(
                f"{len(cases)} hostile programs in {wall:.1f} s (2 workers per profile, timeout {TIMEOUT_S:g} s)"
            )
            uids, pids, bases = pool.uids, pool.worker_pids, pool.base_dirs
            assert len(set(uids)) == len(uids) == len(pids)  # one uid per worker
        assert_nothing_left(uids, pids, bases)
    finally:
        decoy.kill()
        decoy.wait()
        listener.close()


def test_two_pools_share_no_uid_and_see_no_process_of_the_other():
    """Leases are host-wide: two live pools get disjoint uids; each program is in its worker's PID namespace."""
    pid_of = as_code("import os\nreturn os.getpid() * 1000 + os.getppid()")
    with SandboxPool(workers=2, timeout_s=2.0) as a, SandboxPool(workers=2, timeout_s=2.0) as b:
        ra = score([pid_of] * 2, ["0"] * 2, "testbed", pool=a)
        rb = score([pid_of] * 2, ["0"] * 2, "testbed", pool=b)
        assert not set(a.uids) & set(b.uids)
        for r in ra + rb:  # pid small, parent = the template, PID 1 of the namespace
            pid, ppid = divmod(int(r.extracted), 1000)
            assert ppid == 1 and pid < 1000, r


@pytest.mark.parametrize("layer", ["namespaces", "seccomp", "privdrop"])
def test_an_unsafe_pool_refuses_to_start_in_one_line(layer):
    if layer == "privdrop" and os.geteuid() != 0:
        pytest.skip("privdrop applies to root only")
    with pytest.raises(SandboxError) as err:
        with SandboxPool(workers=1, **{layer: False}) as p:
            p.wait_ready()
    msg = str(err.value)
    assert "\n" not in msg and "not safe here" in msg and "rewards.sandbox_unsafe_ok=true" in msg


def test_extraction_is_linear_and_capped():
    """Unclosed \\boxed{ / <llm-code> / fences at the cap parse in well under a second; past it, no parse."""
    from echo_megatron.rewards.extract import MAX_COMPLETION_CHARS

    near_cap = MAX_COMPLETION_CHARS - 10
    texts = [
        "\\boxed{" * (near_cap // 7),
        "\\boxed " * (near_cap // 7),
        "```" + " " * near_cap,
        "answer is" + " " * near_cap + "\n",
        "x" * (MAX_COMPLETION_CHARS + 1),
    ]
    t0 = time.perf_counter()
    res = score(texts, ["1"] * len(texts), "gsm8k")
    assert time.perf_counter() - t0 < 5.0
    assert all(r.reward == 0.0 for r in res) and res[-1].error == "too_long"
    assert max(r.elapsed for r in res[:-1]) < 1.0, [r.elapsed for r in res]


FALLBACK_CASES = (
    "fork_bomb", "threads", "os_system", "write_tmp", "write_home", "write_repo", "read_shadow",
    "socket_tcp_localhost", "socket_udp_localhost", "kill_parent", "raise_rlimits", "infinite_loop",
    "alloc_10gb", "huge_output_loop", "write_run_lock", "renice_pid_1",
)  # fmt: skip


@pytest.mark.parametrize(
    "layers",
    [
        pytest.param({"namespaces": False}, id="no-namespaces(seccomp+uid)"),
        pytest.param({"seccomp": False}, id="no-seccomp(namespaces+view+uid)"),
    ],
)
def test_fallback_layers_still_contain_the_main_attacks(secret_env, layers):
    """The unsafe modes (opted into) still block network, writes, processes and secrets with what is left."""
    listener = Listener()
    try:
        # without a filesystem view the programs import from the host: preload what the attacks import
        preload = (
            *DEFAULT_PRELOAD,
            "socket",
            "encodings.idna",
            "glob",
            "subprocess",
            "threading",
            "resource",
        )
        with SandboxPool(
            workers=2, timeout_s=TIMEOUT_S, memory_mb=512, preload=preload, unsafe_ok=True, **layers
        ) as pool:
            iso = pool.isolation
            assert not iso["safe"] and iso["unsafe"]
            if not layers.get("namespaces", True):
                if not iso["seccomp"]:
                    pytest.skip(f"libseccomp unavailable here: {iso['notes']}")
                assert not iso["netns"]
            else:
                if not (iso["netns"] and iso["privdrop"]):
                    pytest.skip(f"needs root with namespaces: {iso}")
                assert not iso["seccomp"]
            body = attacks(listener.tcp_port, listener.udp_port, TOKEN, HOME, REPO)
            cases = [(f"code:{k}", as_code(body[k] + "\nreturn 42"), "42", "testbed") for k in FALLBACK_CASES]
            run_and_check(pool, cases, listener)
    finally:
        listener.close()
