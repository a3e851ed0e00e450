"""A sandbox worker: a long-lived process that forks one hardened child per program.

Started by ``SandboxPool`` as ``python -m echo_megatron.rewards.worker`` with a clean environment and its own
session; it speaks length-prefixed JSON frames on stdin/stdout. The worker itself never runs model code, so it
stays clean; every program gets a fresh fork, which is killed (whole process group, SIGKILL) on any violation.

Isolation, set up once per worker (``enter_namespaces``):
    root      unshare(CLONE_NEWNET | CLONE_NEWNS): a network namespace with only a loopback that is down, and a
              private mount namespace where the worker's directory is a 64 MiB tmpfs (run dirs never touch the
              host disk, and cost microseconds instead of an ext4 rmdir) and /tmp, /var/tmp and /dev/shm are
              bind mounts of it (so "/tmp" writes stay in the sandbox dir even without seccomp).
    non-root  the same inside a new user namespace where the kernel allows one; otherwise none (reported).
Then per program, in the child (``child_main``), which the worker forks ahead of time ("armed": it hardens itself
while the worker waits for the next job, then reads the job from a pipe), in this order:
    setsid; stdin/stdout/stderr -> /dev/null, every other descriptor closed but the result pipe (fd 3) and the
    job pipe (fd 4, closed once read); cwd = a
    fresh directory (mode 700, owned by the sandbox uid, removed afterwards); environment emptied (HOME and
    TMPDIR = that directory); rlimits CPU = ceil(timeout) s (hard +1), AS = current size + memory_mb,
    FSIZE = output cap, NOFILE = 64, NPROC = 0, CORE = 0; as root, drop to a per-worker uid/gid with no
    supplementary groups (so the hard limits cannot be raised, NPROC applies, other users' files and processes
    are out of reach); parent-death signal SIGKILL; the seccomp deny list (``seccomp.py``); then the job
    (``runner.py``) with stdout/stderr captured and capped.
The worker waits for the result with a wall-clock deadline (default 3 s) and a cap on the bytes it reads; past
either it SIGKILLs the child. The child's exit status becomes the error kind (SIGSYS -> forbidden, SIGXCPU ->
cpu, SIGSEGV -> crash, ...).
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import importlib
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

from echo_megatron.rewards.policy import SandboxPolicy
from echo_megatron.rewards.protocol import Job, Reply, encode_frame, read_frame, write_all

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
EXIT_SETUP_FAILED = 121
READ_SLACK = 64 << 10  # bytes of JSON framing allowed on top of the output cap
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}

_libc = ctypes.CDLL(None, use_errno=True)


# --- isolation set up once per worker ---------------------------------------------------------------------
def _sys(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_namespaces(base: str, scratch_bytes: int) -> dict:
    """New network + mount namespaces (via a user namespace when not root); /tmp & co -> ``base``."""
    info = {"netns": False, "mountns": False, "userns": False, "private_tmp": False, "notes": []}
    uid, gid = os.getuid(), os.getgid()
    try:
        if os.geteuid() == 0:
            _sys(_libc.unshare(CLONE_NEWNET | CLONE_NEWNS), "unshare(NEWNET|NEWNS)")
        else:
            _sys(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS), "unshare(NEWUSER|NEWNET|NEWNS)")
            info["userns"] = True
            for path, text in (
                ("setgroups", "deny"),
                ("uid_map", f"{uid} {uid} 1"),
                ("gid_map", f"{gid} {gid} 1"),
            ):
                with open(f"/proc/self/{path}", "w") as f:
                    f.write(text)
        info["netns"] = info["mountns"] = True
    except OSError as e:
        info["notes"].append(f"no namespaces ({e}); network is blocked by seccomp only")
        return info
    try:
        _sys(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        opts = f"mode=711,size={scratch_bytes},nr_inodes=4096".encode()
        _sys(_libc.mount(b"tmpfs", base.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts), f"tmpfs on {base}")
        info["scratch_tmpfs"] = True
        if os.geteuid() == 0:
            info["exposed"] = expose_python(base)
        info["kept_from_tmp"] = keep_python_in_scratch(base)
        for target in ("/var/tmp", "/dev/shm", "/tmp"):  # /tmp last: binding it hides ``base``'s path
            if os.path.isdir(target):
                _sys(
                    _libc.mount(base.encode(), target.encode(), None, MS_BIND | MS_REC, None),
                    f"bind {target}",
                )
        info["private_tmp"] = True
    except OSError as e:
        info["notes"].append(f"no private /tmp ({e})")
    return info


def _blocked_ancestor(path: str) -> str | None:
    """The first directory on the way to ``path`` that other users cannot traverse, or None."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        st = os.stat(d)
        if (st.st_mode & 0o040000) and not st.st_mode & 0o001:
            return d
    return None


def python_paths(nested: bool = False) -> list[str]:
    """This interpreter's prefixes and import paths (real paths; unless ``nested``, those inside another one
    left out)."""
    wanted = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path}
    paths = sorted({os.path.realpath(p) for p in wanted if p and os.path.isabs(p) and os.path.exists(p)})
    if nested:
        return paths
    return [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]


def keep_python_in_scratch(base: str) -> list[str]:
    """Python paths under /tmp, /var/tmp or /dev/shm (a venv in /tmp, say) would vanish when those become
    ``base``: bind each read-only to the same relative place inside ``base``."""
    kept: list[str] = []
    real_base = os.path.realpath(base)
    for p in python_paths(nested=True):  # "/tmp" itself (a caller's cwd) is skipped, "/tmp/venv" kept
        if p == real_base or p.startswith(real_base + "/") or any(p.startswith(k + "/") for k in kept):
            continue
        for hidden in ("/tmp", "/var/tmp", "/dev/shm"):
            if not p.startswith(hidden + "/"):
                continue
            target = os.path.join(base, os.path.relpath(p, hidden))
            if os.path.isdir(p):
                os.makedirs(target, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
                open(target, "a").close()
            _sys(_libc.mount(p.encode(), target.encode(), None, MS_BIND | MS_REC, None), f"bind {p}")
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            _sys(_libc.mount(None, target.encode(), None, flags, None), f"read-only {p}")
            kept.append(p)
    return kept


def expose_python(base: str) -> list[str]:
    """Let a dropped uid import from this Python even when it lives under a private directory (pyenv in /root).

    For each such directory A (mode 700), the Python paths below it are bind-mounted to a staging point in
    ``base``, a tmpfs (mode 755) is mounted over A, and the mounts are moved back to their paths inside it:
    the sandbox sees the interpreter and its packages there, and nothing else of A.
    """
    blocked: dict[str, list[str]] = {}
    for p in python_paths():
        a = _blocked_ancestor(p)
        if a is not None and a != p:
            blocked.setdefault(a, []).append(p)
    exposed = []
    for a, inside in blocked.items():
        stages = []
        for p in inside:
            stage = tempfile.mkdtemp(prefix=".stage-", dir=base)
            _sys(_libc.mount(p.encode(), stage.encode(), None, MS_BIND | MS_REC, None), f"bind {p}")
            stages.append(stage)
        _sys(_libc.mount(b"tmpfs", a.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=755"), f"tmpfs on {a}")
        for p, stage in zip(inside, stages):
            os.makedirs(p, mode=0o755, exist_ok=True)
            _sys(_libc.mount(stage.encode(), p.encode(), None, MS_MOVE, None), f"move to {p}")
            os.rmdir(stage)
            exposed.append(p)
    return exposed


def _read_to_eof(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


class Worker:
    def __init__(self, init: dict) -> None:
        self.policy = policy = SandboxPolicy.from_frame(init)
        self.timeout_s = policy.timeout_s
        self.memory_bytes = policy.memory_mb << 20
        self.max_output = policy.max_output_bytes
        self.base = init["base"]
        self.pid = os.getpid()
        self.isolation: dict = {
            "netns": False,
            "mountns": False,
            "userns": False,
            "private_tmp": False,
            "notes": [],
        }
        if policy.namespaces:
            self.isolation.update(enter_namespaces(self.base, policy.scratch_bytes))
        else:
            self.isolation["notes"].append("namespaces disabled by config")
        self.tmp_root = "/tmp" if self.isolation.get("private_tmp") else self.base
        self.uid = None
        if policy.privdrop and os.geteuid() == 0 and not self.isolation.get("userns"):
            self.uid = int(init["uid"])
        self.isolation["privdrop"] = self.uid is not None
        if self.uid is not None and not self.isolation["mountns"] and _blocked_ancestor(sys.prefix):
            self.isolation["notes"].append(
                f"{_blocked_ancestor(sys.prefix)} is private and there is no mount namespace to expose Python: "
                f"programs (uid {self.uid}) can import only the preloaded modules"
            )
        self.preloaded, failed = [], []
        for name in init.get("preload", []):
            try:
                importlib.import_module(name)
                self.preloaded.append(name)
            except Exception as e:  # an optional library that is not installed
                failed.append(f"{name}: {type(e).__name__}")
        importlib.import_module("echo_megatron.rewards.runner")
        if "math_verify" in self.preloaded:  # the verify jobs' entry point, ready in every fork
            importlib.import_module("echo_megatron.rewards.equivalence")
        self.filter = None
        if policy.seccomp:
            try:
                from echo_megatron.rewards.seccomp import DenyFilter

                self.filter = DenyFilter(policy)
            except Exception as e:
                self.isolation["notes"].append(f"no seccomp ({e})")
        else:
            self.isolation["notes"].append("seccomp disabled by config")
        self.isolation["seccomp"] = self.filter is not None
        if failed:
            self.isolation["notes"].append("not preloaded: " + ", ".join(failed))
        self.armed: tuple[int, int, int, str] | None = None
        gc.collect()
        gc.freeze()  # keep the children's copy-on-write pages shared

    # --- the forked child ---------------------------------------------------------------------------------
    def child_main(self, job_r: int, res_w: int, rundir: str) -> None:
        """Runs in the fork: harden, wait for the job on fd 4, run it, write the reply to fd 3, _exit."""
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            res_w, job_r = fcntl.fcntl(res_w, fcntl.F_DUPFD, 16), fcntl.fcntl(job_r, fcntl.F_DUPFD, 16)
            os.dup2(res_w, 3)  # (moved above 15 first, so that neither lands on the other's target)
            os.dup2(job_r, 4)
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            os.closerange(5, soft if 0 < soft < (1 << 20) else (1 << 20))
            os.chdir(rundir)
            os.environ.clear()
            os.environ.update(HOME=rundir, TMPDIR=rundir, PATH="/usr/bin:/bin", LANG="C.UTF-8")
            tempfile.tempdir = rundir
            cpu = max(1, math.ceil(self.timeout_s))
            limits = [
                (resource.RLIMIT_CPU, cpu, cpu + 1),
                (resource.RLIMIT_AS, vm_size_bytes() + self.memory_bytes, None),
                (resource.RLIMIT_FSIZE, self.max_output, None),
                (resource.RLIMIT_NOFILE, self.policy.nofile, None),
                (resource.RLIMIT_NPROC, 0, None),
                (resource.RLIMIT_CORE, 0, None),
            ]
            for res, soft, hard in limits:
                resource.setrlimit(res, (soft, soft if hard is None else hard))
            if self.uid is not None:
                os.setgroups([])
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
            if os.getppid() != self.pid:
                os._exit(EXIT_SETUP_FAILED)
            if self.filter is not None:
                self.filter.load()
            job = Job.from_frame(json.loads(_read_to_eof(4)))
            os.close(4)
        except BaseException as e:
            reply = Reply.failure("sandbox", f"child setup: {e!r}")
            try:
                write_all(3, json.dumps(reply.to_frame()).encode())
            finally:
                os._exit(EXIT_SETUP_FAILED)
        from echo_megatron.rewards.runner import run_job

        reply = run_job(job, self.max_output)
        try:
            write_all(3, json.dumps(reply.to_frame()).encode())
        finally:
            os._exit(0)

    # --- the worker side of one program -------------------------------------------------------------------
    def arm(self) -> None:
        """Fork the next child now, so that it hardens itself while the worker waits for the next job."""
        rundir = tempfile.mkdtemp(prefix="run-", dir=self.tmp_root)
        if self.uid is not None:
            os.chown(rundir, self.uid, self.uid)
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                self.child_main(job_r, res_w, rundir)
            finally:
                os._exit(EXIT_SETUP_FAILED)
        os.close(job_r)
        os.close(res_w)
        self.armed = (pid, job_w, res_r, rundir)

    def disarm(self) -> None:
        """Kill the waiting child (at exit)."""
        if self.armed is not None:
            pid, job_w, res_r, rundir = self.armed
            self.armed = None
            os.close(job_w)
            os.close(res_r)
            self._reap(pid, 0.0, "exit")
            shutil.rmtree(rundir, ignore_errors=True)

    def run(self, job: dict) -> Reply:
        """Hand ``job`` to the armed child and collect its reply within the deadline."""
        if self.armed is None:
            self.arm()
        pid, job_w, res_r, rundir = self.armed
        self.armed = None
        t0 = time.perf_counter()
        deadline = t0 + self.timeout_s
        try:
            try:
                write_all(job_w, json.dumps(job).encode())
            except OSError:
                pass  # the child died before its job: its exit status tells why
            finally:
                os.close(job_w)
            data, why = self._collect(res_r, deadline)
        finally:
            os.close(res_r)
        status, rusage, why = self._reap(pid, deadline, why)
        shutil.rmtree(rundir, ignore_errors=True)
        return self._interpret(data, status, rusage, why).timed(time.perf_counter() - t0)

    def _collect(self, r: int, deadline: float) -> tuple[bytes, str | None]:
        """Read the reply until EOF; stop at the deadline ("timeout") or past the byte cap ("output")."""
        chunks, size, cap = [], 0, self.max_output * 4 + READ_SLACK  # JSON may escape each char
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not select.select([r], [], [], remaining)[0]:
                return b"".join(chunks), "timeout"
            chunk = os.read(r, 1 << 16)
            if not chunk:
                return b"".join(chunks), None
            size += len(chunk)
            if size > cap:
                return b"".join(chunks), "output"
            chunks.append(chunk)

    def _reap(self, pid: int, deadline: float, why: str | None):
        """Wait for the child until the deadline, SIGKILL it (and its group) if needed; (status, rusage, why)."""
        if why is None:
            done = self._wait_until(pid, deadline)
            if done is not None:
                return (*done, None)
            why = "timeout"
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _, status, rusage = os.wait4(pid, 0)
        return status, rusage, why

    @staticmethod
    def _wait_until(pid: int, deadline: float):
        """(status, rusage) once the child has exited, or None at the deadline (pidfd, else 1 ms polling)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # Linux < 5.3
            while True:
                got, status, rusage = os.wait4(pid, os.WNOHANG)
                if got == pid:
                    return status, rusage
                if time.perf_counter() >= deadline:
                    return None
                time.sleep(0.001)
        try:
            remaining = max(0.0, deadline - time.perf_counter())
            if not select.select([pidfd], [], [], remaining)[0]:
                return None
        finally:
            os.close(pidfd)
        _, status, rusage = os.wait4(pid, 0)
        return status, rusage

    def _interpret(self, data: bytes, status: int, rusage, why: str | None) -> Reply:
        err = Reply.failure
        if why == "timeout":
            return err("timeout", f"no result within {self.timeout_s:g} s (killed)")
        if why == "output":
            return err("output", "the program wrote past the output cap (killed)")
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            if sig == signal.SIGSYS:
                return err("forbidden", "a forbidden system call (seccomp)")
            cpu = rusage.ru_utime + rusage.ru_stime
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= math.ceil(self.timeout_s)):
                return err("cpu", f"CPU limit ({cpu:.1f} s)")
            if sig in CRASH_SIGNALS:
                return err("crash", f"killed by {name}")
            return err("killed", f"killed by {name}")
        code = os.WEXITSTATUS(status)
        reply = Reply.decode(data)
        if code == EXIT_SETUP_FAILED and reply is not None and reply.error == "sandbox":
            return reply
        if code != 0 or reply is None:
            return err("exit", f"the process ended (status {code}) without a valid result")
        return reply


def main() -> int:
    proto_in, proto_out = os.dup(0), os.dup(1)  # non-inheritable copies; 0/1 then point at /dev/null
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.dont_write_bytecode = True
    try:
        init = read_frame(proto_in)
        if init is None:
            return 0
        worker = Worker(init)
    except BaseException as e:
        write_all(proto_out, encode_frame({"type": "fatal", "detail": f"{type(e).__name__}: {e}"}))
        return 1
    ready = {"type": "ready", "pid": worker.pid, "isolation": worker.isolation, "preloaded": worker.preloaded}
    write_all(proto_out, encode_frame(ready))
    worker.arm()
    while True:
        job = read_frame(proto_in)
        if job is None:
            worker.disarm()
            return 0
        try:
            reply = worker.run(job)
        except Exception as e:  # a worker-side failure (e.g. no space for the run dir): report, keep serving
            reply = Reply.failure("sandbox", f"worker: {e!r}")
        write_all(proto_out, encode_frame(dict(reply.to_frame(), type="result", id=job.get("id"))))
        try:
            worker.arm()  # the next child hardens itself while the controller sends the next job
        except OSError:
            pass  # e.g. no memory to fork right now: run() arms on demand


if __name__ == "__main__":
    sys.exit(main())
