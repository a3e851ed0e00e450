"""Hostile programs through the real sandbox and the real score(): every one must get a zero reward with an error
kind, finish within timeout + 1 s, leave the host (and the pool) alive, reach nothing on the network and create
no file outside the sandbox directory.

Each program is a TinyGSM-style solution that returns the gold answer 42 *after* its attack, and raises when the
attack visibly fails: a sandbox hole shows up as reward 1 or a missing error kind, not as a silent pass.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from echo_megatron.rewards import ERROR_KINDS, SandboxPool, score
from echo_megatron.rewards.sandbox import DEFAULT_PRELOAD

TIMEOUT_S = 1.0
TOKEN = f"pwned_{uuid.uuid4().hex[:12]}"
SECRET = f"sk-{uuid.uuid4().hex}"
HOME = str(Path.home())
REPO = str(Path(__file__).resolve().parents[1])


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


def attacks(listener: Listener) -> dict[str, str]:
    """name -> function body (without the final ``return 42``)."""
    t = TOKEN
    return {
        "infinite_loop": "while True:\n    pass",
        "sleep": "import time\ntime.sleep(60)",
        "huge_computation": "return sum(range(10**13))",
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "os_system": f"import os\nif os.system('touch /tmp/{t}_system') != 0:\n    raise OSError('system failed')",
        "subprocess_run": f"import subprocess\nsubprocess.run(['touch', '/tmp/{t}_run'], check=True)",
        "subprocess_shell": f"import subprocess\nsubprocess.check_call('echo x > /tmp/{t}_shell', shell=True)",
        "multiprocessing": "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()",
        "os_exec": f"import os\nos.execv('/bin/sh', ['sh', '-c', 'touch /tmp/{t}_exec'])",
        "alloc_10gb": "x = bytearray(10 * 1024**3)\nx[-1] = 1",
        "alloc_list_10g": "x = [0] * (10**10)",
        "alloc_grow": "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024**2))",
        "huge_output_loop": "while True:\n    print('spam' * 1000)",
        "huge_output_single": "import sys\nsys.stdout.write('x' * 50_000_000)",
        "raw_fd_flood": "import os\nwhile True:\n    os.write(1, b'x' * 65536)\n    os.write(2, b'y' * 65536)",
        "deep_recursion": "def f(n):\n    return f(n + 1) + 1\nf(0)",
        "deep_recursion_no_limit": "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1) + 1\nf(0)",
        "write_cwd": f"open('{t}_cwd', 'w').write('x')",
        "write_tmp": f"open('/tmp/{t}_tmp', 'w').write('x')",
        "write_var_tmp": f"open('/var/tmp/{t}_vartmp', 'w').write('x')",
        "write_dev_shm": f"open('/dev/shm/{t}_shm', 'w').write('x')",
        "write_home": f"open('{HOME}/{t}_home', 'w').write('x')",
        "write_repo": f"open('{REPO}/{t}_repo', 'w').write('x')",
        "write_escape_cwd": f"import os\nos.chdir('/')\nopen('{t}_root', 'w').write('x')",
        "mkdir_tmp": f"import os\nos.mkdir('/tmp/{t}_dir')",
        "symlink_tmp": f"import os\nos.symlink('/etc/passwd', '/tmp/{t}_link')",
        "read_shadow": "data = open('/etc/shadow').read()\nassert data",
        "read_parent_memory": "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb').read(1)",
        "env_secrets": (
            "import os, glob\n"
            "found = any('sk-' in v for v in os.environ.values())\n"
            "for path in ['/proc/self/environ', '/proc/1/environ', f'/proc/{os.getppid()}/environ',\n"
            "             *glob.glob('/proc/[0-9]*/environ')]:\n"
            "    try:\n"
            "        found = found or b'sk-' in open(path, 'rb').read()\n"
            "    except OSError:\n"
            "        pass\n"
            "if not found:\n"
            "    raise LookupError('no secret visible')"
        ),
        "socket_tcp_localhost": (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {listener.tcp_port}), timeout=0.5)\n"
            "s.sendall(b'pwned')"
        ),
        "socket_udp_localhost": (
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.sendto(b'pwned', ('127.0.0.1', {listener.udp_port}))"
        ),
        "signal_tampering": (
            "import signal\nfor s in (signal.SIGALRM, signal.SIGXCPU, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(0)\nwhile True:\n    pass"
        ),
        "ctypes_segfault": "import ctypes\nctypes.string_at(0)",
        "sys_exit": "import sys\nsys.exit(0)",
        "raise_system_exit": "raise SystemExit(42)",
        "raise_keyboard_interrupt": "raise KeyboardInterrupt",
        "os_exit": "import os\nos._exit(0)",
        "threads": "import threading\nfor _ in range(100):\n    threading.Thread(target=lambda: None).start()",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)",
        "raise_rlimits": (
            "import resource\n"
            "resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
            "resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))"
        ),
        "setuid_root": "import os\nos.setuid(0)",
        "unshare_escape": "import ctypes\nif ctypes.CDLL(None).unshare(0x10000000) != 0:\n    raise OSError('unshare')",
        "garbage_result": 'import os\nos.write(3, b\'{"value": "42"\')\nos._exit(0)',
        "hostile_str": "class Answer:\n    def __str__(self):\n        while True:\n            pass\nreturn Answer()",
        "unprintable_int": "return 10**100000",
    }


def program(body: str) -> str:
    return "def simple_math_problem():\n" + "\n".join(
        "    " + ln for ln in (body + "\nreturn 42").split("\n")
    )


def leftovers() -> list[str]:
    """Every path holding TOKEN where an escaped write could land."""
    found = []
    for d in ("/", "/tmp", "/var/tmp", "/dev/shm", HOME, REPO, os.getcwd()):
        try:
            found += [os.path.join(d, n) for n in os.listdir(d) if TOKEN in n]
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def secret_env():
    os.environ["ECHO_SANDBOX_TEST_SECRET"] = SECRET
    yield
    os.environ.pop("ECHO_SANDBOX_TEST_SECRET", None)


def run_suite(pool: SandboxPool, cases: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    results = score([program(b) for b in cases.values()], ["42"] * len(cases), "testbed", pool=pool)
    wall = time.perf_counter() - t0
    return {"results": dict(zip(cases, results)), "wall": wall}


def check(out: dict, listener: Listener, pool: SandboxPool) -> None:
    bad = []
    for name, r in out["results"].items():
        print(f"{name:>26}: error={r.error!s:<10} {r.elapsed:5.2f} s  {r.detail[:70]}")
        if r.reward != 0.0 or r.correct or r.error is None or r.error not in ERROR_KINDS:
            bad.append((name, r))
        if r.elapsed > TIMEOUT_S + 1.0:
            bad.append((name, f"took {r.elapsed:.2f} s"))
        if SECRET in (r.extracted or "") + r.detail:
            bad.append((name, "secret leaked"))
    assert not bad, bad
    assert not leftovers(), leftovers()
    assert not listener.hits, listener.hits
    # the host and the pool survive: the same pool still scores a normal solution
    (ok,) = score(["def simple_math_problem():\n    return 6 * 7"], ["42"], "testbed", pool=pool)
    assert ok.correct and ok.error is None
    assert all(os.path.exists(f"/proc/{pid}") for pid in pool.worker_pids)


def test_adversarial_suite(secret_env):
    listener = Listener()
    cases = attacks(listener)
    assert len(cases) >= 30
    try:
        with SandboxPool(workers=2, timeout_s=TIMEOUT_S, memory_mb=512) as pool:
            iso = pool.isolation
            print(f"\nisolation: {iso}")
            assert iso["seccomp"] or (iso["netns"] and iso["privdrop"]), "no sandbox layer to test"
            out = run_suite(pool, cases)
            print(
                f"{len(cases)} adversarial programs in {out['wall']:.1f} s (2 workers, timeout {TIMEOUT_S:g} s)"
            )
            check(out, listener, pool)
            bases = pool.base_dirs
        assert not any(os.path.exists(b) for b in bases)  # close() removed the sandbox dirs
    finally:
        listener.close()


FALLBACK_CASES = (
    "fork_bomb", "threads", "os_system", "write_tmp", "write_home", "write_repo", "read_shadow", "env_secrets",
    "socket_tcp_localhost", "socket_udp_localhost", "kill_parent", "raise_rlimits", "infinite_loop",
    "alloc_10gb", "huge_output_loop",
)  # fmt: skip


@pytest.mark.parametrize(
    "layers",
    [
        pytest.param({"namespaces": False}, id="no-namespaces(seccomp+uid)"),
        pytest.param({"seccomp": False}, id="no-seccomp(namespaces+uid)"),
    ],
)
def test_fallback_layers_still_contain_the_main_attacks(secret_env, layers):
    """Each layer alone (where the machine offers it) still blocks network, writes, processes, secrets."""
    listener = Listener()
    try:
        # without a mount namespace a dropped uid cannot read a Python under /root (pyenv): preload what the
        # attacks import, so that they reach the system calls under test
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
            if not layers.get("namespaces", True):
                if not iso["seccomp"]:
                    pytest.skip(f"libseccomp unavailable here: {iso['notes']}")
                assert not iso["netns"]
            else:
                if not (iso["netns"] and iso["privdrop"]):
                    pytest.skip(f"needs root with namespaces: {iso}")
                assert not iso["seccomp"]
            cases = {k: v for k, v in attacks(listener).items() if k in FALLBACK_CASES}
            out = run_suite(pool, cases)
            check(out, listener, pool)
    finally:
        listener.close()
