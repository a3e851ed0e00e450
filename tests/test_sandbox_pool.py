"""SandboxPool lifecycle and per-program guarantees: fresh cwd, clean environment, caps, replacement of dead
workers, idempotent close, light/heavy routing, and the seccomp filter itself."""

from __future__ import annotations

import ast
import os
import signal
import threading

import pytest

from echo_megatron.config.rl import RewardConfig
from echo_megatron.rewards import Job, SandboxError, SandboxPool
from echo_megatron.rewards.sandbox import DEFAULT_PRELOAD, DEFAULT_PRELOAD_HEAVY, HEAVY, LIGHT


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


def test_heavy_workers_start_only_for_heavy_jobs():
    with SandboxPool(workers=1, timeout_s=3.0) as p:
        assert p.profile_of(fn("return 1")) == LIGHT
        assert p.profile_of(fn("import sympy\nreturn sympy.Integer(3)")) == HEAVY
        assert p.profile_of(Job("verify", gold="1", pred="1")) == HEAVY
        assert len(p.worker_pids) == 1
        light, heavy, verify = p.run(
            [
                fn("import fractions\nreturn fractions.Fraction(1, 2) * 4"),
                fn("import sympy\nx = sympy.Symbol('x')\nreturn sympy.solve(x - 3, x)[0]"),
                Job("verify", gold="\\frac{1}{2}", pred="0.5"),
            ]
        )
        assert (light.value, heavy.value, verify.equal) == ("2", "3", True)
        assert len(p.worker_pids) == 2


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


def test_seccomp_filter_kills_denied_calls_only():
    from echo_megatron.rewards.policy import SandboxPolicy
    from echo_megatron.rewards.seccomp import DenyFilter, SeccompUnavailable

    try:
        flt = DenyFilter(SandboxPolicy())
    except SeccompUnavailable as e:
        pytest.skip(f"libseccomp unavailable: {e}")
    for name in ("socket", "clone", "execve", "kill", "openat", "mkdir", "unshare", "prlimit64"):
        assert name in flt.denied
    cases = {
        "x = sum(range(1000))": 0,
        "open('/etc/hostname').read()": 0,
        "import socket; socket.socket()": -signal.SIGSYS,
        "open('x_should_not_exist', 'w')": -signal.SIGSYS,
        "import os; os.fork()": -signal.SIGSYS,
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
