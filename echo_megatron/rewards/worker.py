"""A sandbox worker: a template process, in its own namespaces and filesystem view, that forks one child per job.

``SandboxPool`` starts ``python -m echo_megatron.rewards.worker FD`` with an empty environment, its own session
and one end of a SOCK_SEQPACKET socket (FD). That process reads the init message (the ``SandboxPolicy``, its role,
its leased uid), unshares its namespaces (``jail.enter_namespaces``) and forks the **template**, PID 1 of the new
PID namespace; it then only waits for the template. The template imports the preloaded modules, compiles the
seccomp filter, mounts the filesystem view and pivots into it (``jail.py``), and then serves the pool:

    template -> pool   ready {isolation}            once set up (or fatal {detail})
    template -> pool   armed {n} + [job_w, res_r]   a spare child n has been forked (it hardens itself); the pool
                                                    owns the write end of its job pipe and the read end of its
                                                    result pipe. The next spare is forked as soon as one starts
                                                    its job, so the pool never waits for a fork between jobs
    pool -> template   go {n}                       the job is written: the wall-clock deadline starts
    pool -> template   kill {n}                     the child wrote past the output cap
    template -> pool   exit {n, status, cpu_s, why} the child ended (``why``: timeout / killed), and was reaped

Job and reply bytes travel on the pipes between the pool and the child only: **the template never reads or holds
any job, gold or reply**, so a child (a fresh fork of it) finds no trace of earlier jobs, and whatever a child
changes in its own memory dies with it. Each child hardens itself before it reads its job (``child_main``):
setsid; stdin/stdout/stderr -> /dev/null; every descriptor closed but the result pipe (3) and the job pipe (4);
cwd = a fresh run dir (mode 700, owned by the program's uid) on the scratch tmpfs; an empty environment;
rlimits (CPU = ceil(timeout) + 1 s, AS = the template's size + memory_mb, FSIZE = output cap, NOFILE, NPROC 0, CORE 0,
MEMLOCK 0, MSGQUEUE 0); as root, the worker's leased uid/gid with no groups (which drops every capability); in a
user namespace, every capability dropped (bounding set too); parent-death signal; the seccomp allow list. After
each child the template SIGKILLs and reaps whatever else is left in its process group (nothing can be: it may
neither fork nor change its group) and removes its run dir.

Cost of each layer, in CPU-ms per program, each step measured alone by ``python bench/sandbox_throughput.py
--layers`` on the 2-core CI machine (load average 7-9, so every figure is inflated alike): fork + reap of the
light template 1.9 (the baseline, as before); hardening (setsid, cwd, environment, rlimits) 0.56 and the uid drop
0.14 (as before); the seccomp allow list 0.39 to load (the deny list it replaces: 0.42) and 15-75 ns more per
system call than the deny list (a program makes 100-300); the pool <-> template messages and pipes, new with the
clean template, 0.07; the PID namespace and the filesystem view, nothing per program. Per worker, once:
namespaces + view 20-26 ms, compiling the filter 16-20 ms, leasing the uid 10-19 ms (a /proc scan for strays).
End to end (the bench's pool path, 5 interleaved runs each at load average 10-13): 7.9 CPU-ms and 87 programs/s
against 7.4 CPU-ms and 80 programs/s for the previous design; the same within the machine's noise.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import logging
import math
import os
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass

from echo_megatron.rewards import jail
from echo_megatron.rewards.policy import SandboxPolicy
from echo_megatron.rewards.protocol import EXIT_SETUP_FAILED, Job, Reply, recv_msg, send_msg, write_all
from echo_megatron.rewards.runner import VERIFY, role_of, run_job

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_VERSION_3 = 0x20080522
# constant comparisons a verify template runs at start (no job's data): fractions, radicals, polynomials, sets
WARM_UP = (
    ("1", "1"),
    ("\\frac{1}{2}", "0.5"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("x^2", "x^3"),
    ("\\{1,2\\}", "[1, 2)"),
)

_libc = ctypes.CDLL(None, use_errno=True)


def vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def drop_capabilities() -> None:
    """Clear the bounding, ambient, effective, permitted and inheritable capability sets (user-namespace mode,
    where the program keeps the template's uid)."""
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if _libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _read_to_eof(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Child:
    n: int  # the template's sequence number of the child
    pid: int
    pidfd: int | None  # None on Linux < 5.3 (polled instead)
    rundir: str
    deadline: float | None = None  # monotonic; set by the pool's "go"
    why: str | None = None  # set when the template kills it: "timeout" or "killed"


class Template:
    """The process every job's child is forked from. Built once per worker; see the module docstring."""

    def __init__(self, sock: socket.socket, init: dict, ns: dict, notes: list[str], alive_fd: int) -> None:
        self.sock, self.alive_fd = sock, alive_fd
        self.policy = policy = SandboxPolicy.from_frame(init)
        self.role = str(init["role"])
        self.iso: dict = {
            k: bool(ns.get(k)) for k in ("pidns", "mountns", "netns", "ipcns", "utsns", "userns")
        }
        self.iso.update(view=False, private_tmp=False, notes=list(notes), role=self.role)
        if self.iso["pidns"]:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if select.select([alive_fd], [], [], 0)[0]:  # the worker died before the line above
                os._exit(1)
            _libc.sethostname(b"sandbox", 7)
        # no ptrace or /proc/PID/mem of the template, even by a process of its uid
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        t0 = time.perf_counter()
        self.preloaded, failed = [], []
        for name in init["preload"]:
            try:
                importlib.import_module(name)
                self.preloaded.append(name)
            except Exception as e:  # an optional library that is not installed
                failed.append(f"{name}: {type(e).__name__}")
        if failed:
            self.iso["notes"].append("not preloaded: " + ", ".join(failed))
        importlib.import_module("echo_megatron.rewards.runner")
        self.timeout_s = policy.verify_timeout_s if self.role == VERIFY else policy.timeout_s
        if self.role == VERIFY:  # math-verify builds its parsers on first use: once here, not in every child
            logging.getLogger("math_verify").setLevel(
                logging.ERROR
            )  # "timeout disabled": the sandbox times out
            equivalence = importlib.import_module("echo_megatron.rewards.equivalence")
            for gold, pred in WARM_UP:
                equivalence.math_verify_equal(gold, pred)
        t1 = time.perf_counter()
        self.filter = self._seccomp()
        self.memory_limit = vm_size_bytes() + (policy.memory_mb << 20)
        t2 = time.perf_counter()
        self.run_root = self._view(init["base"])
        t3 = time.perf_counter()
        ms = {"preload": t1 - t0, "seccomp": t2 - t1, "view": t3 - t2}
        self.iso["setup_ms"] = {k: round(v * 1000, 1) for k, v in ms.items()}
        userns = self.iso["userns"]
        self.uid = (
            int(init["uid"]) if init.get("uid") is not None and not userns and os.geteuid() == 0 else None
        )
        if policy.privdrop and os.geteuid() == 0 and not userns and self.uid is None:
            self.iso["notes"].append("no uid leased")
        if not policy.privdrop:
            self.uid = None
        self.iso.update(
            privdrop=self.uid is not None, uid=self.uid, caps_dropped=self.uid is not None or userns
        )
        self.iso["unsafe"] = unsafe = self._unsafe()
        self.iso["safe"] = not unsafe
        self.counter = 0
        self.running: _Child | None = None  # the child running the pool's current job
        self.spare: _Child | None = None  # the next one, hardened, waiting for its job
        gc.collect()
        gc.freeze()  # keep the children's copy-on-write pages shared

    def _seccomp(self):
        if not self.policy.seccomp:
            self.iso["notes"].append("seccomp disabled by config")
            self.iso["seccomp"] = False
            return None
        try:
            from echo_megatron.rewards.seccomp import AllowFilter

            flt = AllowFilter(self.policy)
        except Exception as e:
            self.iso["notes"].append(f"no seccomp ({e})")
            flt = None
        self.iso["seccomp"] = flt is not None
        return flt

    def _view(self, base: str) -> str:
        """Mount the filesystem view and pivot into it (namespace mode); the directory run dirs go in."""
        if not self.iso["mountns"]:
            return base
        try:
            import echo_megatron

            hidden = [os.path.abspath(p) for p in echo_megatron.__path__]
            binds, masks = jail.view_mounts(list(sys.modules.values()), hidden)
            self.iso["exposed"] = jail.build_view(base, binds, masks, self.policy.scratch_bytes)
            jail.pivot_into(base)
            jail.forget_host_paths()
        except OSError as e:
            self.iso["notes"].append(f"no filesystem view ({e})")
            return base
        self.iso["view"] = self.iso["private_tmp"] = True
        return "/tmp"

    def _unsafe(self) -> list[str]:
        iso, why = self.iso, []
        if not iso["pidns"]:
            why.append("no PID namespace (programs see the host's processes)")
        if not iso["view"]:
            why.append("no filesystem view (programs read the host's files)")
        if not iso["netns"]:
            why.append("no network namespace")
        if not iso["seccomp"]:
            why.append("no seccomp allow list")
        if not iso["caps_dropped"]:
            why.append(f"programs run as uid {os.geteuid()} with its privileges")
        return why

    # --- serving the pool ---------------------------------------------------------------------------------
    def serve(self) -> None:
        """One child runs the current job while a spare, already hardened, waits for the next one (forked from
        this clean template, like every child): the pool never waits for a fork between two jobs."""
        send_msg(self.sock, {"op": "ready", "isolation": self.iso, "preloaded": self.preloaded})
        while True:
            if self.spare is None:
                self.spare = self.arm()
            kids = [c for c in (self.running, self.spare) if c is not None]
            waits = [self.sock.fileno(), self.alive_fd] + [c.pidfd for c in kids if c.pidfd is not None]
            run, timeout = self.running, None
            if run and run.deadline is not None and run.why is None:
                timeout = max(0.0, run.deadline - time.monotonic())
            if any(c.pidfd is None for c in kids):  # no pidfd (Linux < 5.3): poll the children
                timeout = 0.001 if timeout is None else min(timeout, 0.001)
            ready = select.select(waits, [], [], timeout)[0]
            if self.alive_fd in ready:
                return  # the worker process is gone: so is the pool's interest
            if self.sock.fileno() in ready and not self._command():
                return
            run = self.running
            if run and run.why is None and run.deadline is not None and time.monotonic() >= run.deadline:
                self._kill(run, "timeout")
            for child in kids:
                if child.pidfd is None or child.pidfd in ready:
                    self._maybe_reap(child)

    def _command(self) -> bool:
        msg, fds = recv_msg(self.sock)
        for fd in fds:  # the pool never sends descriptors
            os.close(fd)
        if msg is None:
            return False
        spare, run = self.spare, self.running
        if msg.get("op") == "go" and run is None and spare is not None and msg.get("n") == spare.n:
            spare.deadline = time.monotonic() + self.timeout_s
            self.running, self.spare = spare, None
        elif msg.get("op") == "kill" and run is not None and msg.get("n") == run.n and run.why is None:
            self._kill(run, "killed")
        return True  # anything else is about a child already reaped

    @staticmethod
    def _kill(child: _Child, why: str) -> None:
        child.why = why
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _maybe_reap(self, child: _Child) -> None:
        got, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if got == 0:
            return
        if child.pidfd is not None:
            os.close(child.pidfd)
        try:  # whatever it may have left in its process group (it cannot fork under seccomp / NPROC 0, but)
            os.killpg(child.pid, signal.SIGKILL)
            while os.waitid(os.P_PGID, child.pid, os.WEXITED) is not None:
                pass
        except (ProcessLookupError, ChildProcessError):
            pass
        try:
            os.rmdir(child.rundir)  # empty: under seccomp a program cannot create a file
        except OSError:
            shutil.rmtree(child.rundir, ignore_errors=True)
        cpu = rusage.ru_utime + rusage.ru_stime
        send_msg(self.sock, {"op": "exit", "n": child.n, "status": status, "cpu_s": cpu, "why": child.why})
        if child is self.running:
            self.running = None
        else:
            self.spare = None

    def arm(self) -> _Child:
        """Fork a child that hardens itself and waits for its job; hand its pipes to the pool."""
        self.counter += 1
        rundir = tempfile.mkdtemp(prefix=f"run-{self.counter}-", dir=self.run_root)
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
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        try:
            send_msg(self.sock, {"op": "armed", "n": self.counter}, (job_w, res_r))
        finally:
            os.close(job_w)
            os.close(res_r)
        return _Child(self.counter, pid, pidfd, rundir)

    # --- the forked child ---------------------------------------------------------------------------------
    def child_main(self, job_r: int, res_w: int, rundir: str) -> None:
        """Runs in the fork: harden, read the job from fd 4, run it, write the reply to fd 3, _exit."""
        parent = os.getppid()
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            # (moved above 4 first, so that neither lands on the other's target)
            res_w, job_r = os.dup(res_w), os.dup(job_r)
            os.dup2(res_w, 3)
            os.dup2(job_r, 4)
            os.closerange(5, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            os.chdir(rundir)
            os.environ.clear()
            os.environ.update(HOME=rundir, TMPDIR=rundir, PATH="/usr/bin:/bin", LANG="C.UTF-8")
            tempfile.tempdir = rundir
            p = self.policy
            # a backstop a second past the wall-clock timeout, which is the limit: a single-threaded program
            # that spins is always "timeout", not a race between the pool's timer and SIGXCPU
            cpu = max(1, math.ceil(self.timeout_s)) + 1
            limits = [
                (resource.RLIMIT_CPU, cpu, cpu + 1),
                (resource.RLIMIT_AS, self.memory_limit, None),
                (resource.RLIMIT_FSIZE, p.max_output_bytes, None),
                (resource.RLIMIT_NOFILE, p.nofile, None),
                (resource.RLIMIT_NPROC, 0, None),
                (resource.RLIMIT_CORE, 0, None),
                (resource.RLIMIT_MEMLOCK, 0, None),
                (resource.RLIMIT_MSGQUEUE, 0, None),
            ]
            for res, soft, hard in limits:
                resource.setrlimit(res, (soft, soft if hard is None else hard))
            if self.uid is not None:
                os.setgroups([])
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)  # every capability goes with uid 0
            elif self.iso["userns"]:
                drop_capabilities()
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
            if os.getppid() != parent:
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
        if role_of(job) == self.role:
            reply = run_job(job, p.max_output_bytes)
        else:
            reply = Reply.failure("sandbox", f"a {self.role} worker does not run {job.kind!r} jobs")
        try:
            write_all(3, json.dumps(reply.to_frame()).encode())
        finally:
            os._exit(0)


def main(argv: list[str]) -> int:
    """The worker process: read the init message, unshare, fork the template, wait for it."""
    sock = socket.socket(fileno=int(argv[1]))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    sys.dont_write_bytecode = True
    init, fds = recv_msg(sock)
    for fd in fds:
        os.close(fd)
    if init is None:
        return 0
    ns, notes = {}, []
    try:
        if SandboxPolicy.from_frame(init).namespaces:
            try:
                ns = jail.enter_namespaces()
            except OSError as e:
                notes.append(f"no namespaces ({e})")
        else:
            notes.append("namespaces disabled by config")
    except BaseException as e:
        send_msg(sock, {"op": "fatal", "detail": f"{type(e).__name__}: {e}"})
        return 1
    alive_r, alive_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(alive_w)
            Template(sock, init, ns, notes, alive_r).serve()
            code = 0
        except BaseException as e:
            try:
                send_msg(sock, {"op": "fatal", "detail": f"{type(e).__name__}: {e}"})
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(alive_r)
    sock.close()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
