"""SandboxPool lifecycle and per-program guarantees: fresh cwd, clean environment, caps, replacement of dead
workers, idempotent close, light/heavy routing, and the seccomp filter itself."""

from __future__ import annotations

import ast
import os
import platform
import signal
import threading

import pytest

from echo_megatron.config.rl import RewardConfig
from echo_megatron.rewards import Job, SandboxError, SandboxPool
from echo_megatron.rewards.sandbox import DEFAULT_PRELOAD, DEFAULT_PRELOAD_HEAVY, HEAVY, LIGHT, VERIFIER


def fn(body: str) -> Job:
    return Job(
        "function", ("def simple_math_problem():\n" + "\n".join("    " + ln for ln in body.split("\n")),)
    )


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout_s=2.0, max_output_bytes=1000) as p:
        yield p


def test_each_program_gets_a_fresh_empty_cwd_and_a_clean_environment(pool):
    os.environ["ECHO_POOL_TEST_TOKEN"] = "visible-to-the-host-only"
    body = "import os\nreturn repr((os.getcwd(), sorted(os.listdir('.')), sorted(os.environ), os.getuid()))"
    replies = pool.run([fn(body)] * 4)
    seen = [ast.literal_eval(r.value) for r in replies]
    cwds = {cwd for cwd, _, _, _ in seen}
    assert len(cwds) == 4  # a new directory per program
    for _cwd, listing, env, uid in seen:
        assert listing == []
        assert set(env) <= {"HOME", "TMPDIR", "PATH", "LANG", "LC_CTYPE"}
        if os.geteuid() == 0 and pool.isolation["privdrop"]:
            assert uid != 0
    for base in pool.base_dirs:  # nothing is left in the workers' directories (host view)
        assert os.listdir(base) == []


def test_value_last_expression_and_printed_output(pool):
    notebook = Job("notebook", ("a = 6", "print('the answer:')\nprint(a * 7)"))
    expr = Job("notebook", ("a = 6\na * 7",))
    r1, r2, r3 = pool.run([notebook, expr, fn("result = 40 + 2\nreturn result")])
    assert (r1.value, r2.value, r3.value) == ("42", "42", "42")
    assert all(r.error is None and r.elapsed > 0 for r in (r1, r2, r3))


def test_output_cap_and_timeout(pool):
    small, big, slow, quick = pool.run(
        [
            fn("print('x' * 900)\nreturn 1"),
            fn("print('x' * 1001)\nreturn 1"),
            fn("while True:\n    pass"),
            fn("return 2"),
        ]
    )
    assert small.error is None and small.value == "1"
    assert big.error == "output"
    assert slow.error == "timeout" and slow.elapsed <= pool.timeout_s + 1.0
    assert quick.value == "2"


def test_dead_worker_is_replaced_and_its_job_reported(pool):
    victim = pool.worker_pids[0]
    timer = threading.Timer(0.5, os.kill, (victim, signal.SIGKILL))
    timer.start()
    try:
        replies = pool.run([fn("import time\ntime.sleep(1.5)\nreturn 1")] * 2)
    finally:
        timer.join()
    assert sorted(r.error or "ok" for r in replies) == ["ok", "sandbox"]
    assert victim not in pool.worker_pids
    assert [r.value for r in pool.run([fn("return 5")] * 3)] == ["5"] * 3


def test_heavy_and_verify_workers_start_only_for_their_jobs():
    """Programs naming a heavy module go to heavy workers; math-verify comparisons (the only jobs that see a gold)
    to separate verify workers, which never run model code."""
    with SandboxPool(workers=1, timeout_s=3.0) as p:
        assert p.profile_of(fn("return 1")) == LIGHT
        assert p.profile_of(fn("import sympy\nreturn sympy.Integer(3)")) == HEAVY
        assert p.profile_of(Job("verify", gold="1", pred="1")) == VERIFIER
        assert len(p.worker_pids) == 1
        light, heavy, verify = p.run(
            [
                fn("import fractions\nreturn fractions.Fraction(1, 2) * 4"),
                fn("import sympy\nx = sympy.Symbol('x')\nreturn sympy.solve(x - 3, x)[0]"),
                Job("verify", gold="\\frac{1}{2}", pred="0.5"),
            ]
        )
        assert (light.value, heavy.value, verify.equal) == ("2", "3", True)
        assert [s.profile for s in p._slots] == [LIGHT, HEAVY, VERIFIER]
        # a program that reached a verify worker (here by routing everything there) is refused by it
        p.profile_of = lambda job: VERIFIER
        (refused,) = p.run([fn("return 1")])
        assert refused.error == "sandbox" and "does not run" in refused.detail


def test_close_is_idempotent_and_cleans_up():
    p = SandboxPool(workers=2, timeout_s=1.0)
    assert p.run([fn("return 3")])[0].value == "3"
    pids, bases = p.worker_pids, p.base_dirs
    p.close()
    p.close()
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped
    assert not any(os.path.exists(b) for b in bases)
    with pytest.raises(SandboxError):
        p.run([fn("return 1")])
    with SandboxPool(workers=1) as never_used:  # closing before the workers started is fine too
        pass
    assert never_used.worker_pids == []


def test_a_worker_that_cannot_start_raises_a_clear_error():
    with pytest.raises(SandboxError, match="could not start|failed to start") as err:
        with SandboxPool(workers=1, memory_mb=64, timeout_s=1.0) as p:
            p._init["timeout_s"] = "not a number"  # a broken init frame for the next worker
            p._replace(p._slots[0])
            p.run([fn("return 1")])
    assert "\n" not in str(err.value) and "rewards.sandbox_namespaces=false" in str(err.value)


def test_a_worker_that_dies_while_starting_names_the_knob(tmp_path, monkeypatch):
    """A preloaded library that kills the interpreter at import: three failed starts, then one line."""
    (tmp_path / "dies_on_import.py").write_text("import os\nos._exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers import from this process's sys.path
    with pytest.raises(SandboxError, match="failed to start 3 times: the sandbox worker exited") as err:
        with SandboxPool(workers=1, preload=["math", "dies_on_import"]) as p:
            p.run([fn("return 1")])
    assert "\n" not in str(err.value) and "rewards.sandbox_seccomp=false" in str(err.value)


def test_a_library_under_tmp_stays_importable_beneath_the_scratch(tmp_path, monkeypatch):
    """A venv in a clone under /tmp: the scratch /tmp is mounted first and the library is bound onto it, so a
    submodule the program imports lazily (as sympy does) is still there, programs still run on the scratch, and the
    directories made to hold the bind cannot be listed."""
    pkg = tmp_path / "lazy_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "later.py").write_text("VALUE = 42\n")
    assert str(tmp_path).startswith("/tmp/")
    monkeypatch.syspath_prepend(str(tmp_path))
    with SandboxPool(workers=1, timeout_s=3.0, preload=["math", "lazy_pkg"]) as p:
        assert p.isolation["view"]
        body = (
            "import os, lazy_pkg.later\n"
            f"parent = {str(tmp_path.parent)!r}\n"
            "try:\n"
            "    listed = os.listdir(parent)\n"
            "except OSError as e:\n"
            "    listed = type(e).__name__\n"
            "return repr((lazy_pkg.later.VALUE, os.getcwd().startswith('/tmp/'), os.path.isdir(parent), listed))"
        )
        (reply,) = p.run([fn(body)])
    assert reply.error is None, reply
    # the library is found, the run dir is on the scratch, and the directories above the library are there to be
    # walked through, not listed (traverse-only): the program does not learn what else lies beside it
    assert ast.literal_eval(reply.value) == (42, True, True, "PermissionError")


def test_config_and_invalid_arguments():
    cfg = RewardConfig()
    assert (
        tuple(cfg.sandbox_preload) == DEFAULT_PRELOAD
        and tuple(cfg.sandbox_preload_heavy) == DEFAULT_PRELOAD_HEAVY
    )
    with SandboxPool.from_config(RewardConfig(sandbox_workers=1, timeout_s=0.5)) as p:
        assert p.workers == 1 and p.timeout_s == 0.5
        (r,) = p.run([fn("import time\ntime.sleep(2)\nreturn 1")])
        assert r.error == "timeout"
    for bad in ({"workers": 0}, {"timeout_s": 0}, {"memory_mb": 1}):
        with pytest.raises(ValueError):
            SandboxPool(**bad)


def test_seccomp_allow_list_kills_everything_else():
    """The filter alone (no other layer): what a program needs works, anything else kills the process, including
    system calls newer than the list (raw numbers past the x86-64 table libseccomp was built with)."""
    from echo_megatron.rewards.policy import SandboxPolicy
    from echo_megatron.rewards.seccomp import AllowFilter, SeccompUnavailable

    try:
        flt = AllowFilter(SandboxPolicy())
    except SeccompUnavailable as e:
        pytest.skip(f"libseccomp unavailable: {e}")
    for name in ("socket", "clone", "execve", "kill", "mkdir", "unshare", "ptrace", "setpriority", "flock"):
        assert name not in flt.allowed
    sigsys = -signal.SIGSYS
    cases = {
        "x = sum(range(1000))": 0,
        "open('/etc/hostname').read()": 0,
        "import os; os.listdir('/')": 0,
        "import resource; resource.getrlimit(resource.RLIMIT_AS)": 0,
        "import os, fcntl; fcntl.fcntl(0, fcntl.F_GETFL)": 0,
        "import os; assert not os.isatty(0)": 0,  # ioctl fails with ENOTTY, does not kill
        "import socket; socket.socket()": sigsys,
        "open('x_should_not_exist', 'w')": sigsys,
        "import os; os.open('/etc/hostname', os.O_RDONLY | os.O_TRUNC)": sigsys,
        "import os; os.fork()": sigsys,
        "import os, signal; os.kill(1, signal.SIGCONT)": sigsys,
        "import os; os.setpriority(os.PRIO_PROCESS, 0, 5)": sigsys,
        "import fcntl; fcntl.fcntl(0, fcntl.F_SETOWN, 1)": sigsys,
        "import resource; resource.setrlimit(resource.RLIMIT_CPU, (100, 100))": sigsys,
    }
    if platform.machine() == "x86_64":
        cases |= {
            "import ctypes; ctypes.CDLL(None).syscall(463, 0, 0, 0, 0, 0)": sigsys,  # setxattrat (Linux 6.13)
            "import ctypes; ctypes.CDLL(None).syscall(469, 0, 0, 0, 0, 0)": sigsys,  # file_setattr (Linux 6.17)
            "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39)": sigsys,  # x32 getpid
        }
    for code, expected in cases.items():
        pid = os.fork()
        if pid == 0:
            try:
                os.chdir("/proc")  # nothing can be created here even if the filter failed
                flt.load()
                exec(code)
                os._exit(0)
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        got = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        assert got == expected, (code, got)


def test_a_forked_copy_of_the_owner_cannot_stop_the_workers(pool):
    """A DataLoader-style fork of the process that owns the pool may close its copy; the workers live on."""
    pid = os.fork()
    if pid == 0:
        try:
            pool._finalizer()  # what close() / interpreter exit would run in the fork
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert [r.value for r in pool.run([fn("return 9")] * 2)] == ["9", "9"]
