"""SandboxPool: pre-forked sandbox workers that run model-written programs (and math-verify) in parallel.

    with SandboxPool(workers=2, timeout_s=3.0) as pool:       # cheap: starts the workers, does not wait
        replies = pool.run([Job("function", (src,)), ...])     # one Reply per Job, in order

RL keeps one pool alive across steps (``SandboxPool.from_config(cfg.rewards)``). Each worker is a fresh
``python -m echo_megatron.rewards.worker`` (spawned, not forked from the caller, with an empty environment and its
own session), so the pool is safe in a process that also runs torch / torch.distributed threads and never leaks
the caller's environment. The caller talks to each worker over one SOCK_SEQPACKET socket, from one thread, with a
select() loop (no threads or signal handlers are added to it); it writes each job straight into the pipe of the
child that runs it and reads the reply straight from that child's result pipe (``worker.py`` gives the protocol).

Isolation (``isolation`` reports what each worker could set up; ``worker.py`` and ``jail.py`` describe each layer):

    fresh state       every job runs in a fresh fork of a template process that never held a job, gold or reply
    verifier          math-verify comparisons (the only jobs that see a gold) run in separate "verify" workers,
                      which never run model code; the extraction and numeric comparison happen in this process
    namespaces        PID (the template is PID 1: no host process is visible), mount, network, IPC, UTS; a user
                      namespace when not root
    filesystem view   pivot_root into a read-only tmpfs with the interpreter, its libraries and a scratch tmpfs
    uid               as root, each worker has its own uid, leased host-wide (``leases.py``): no two workers of
                      any pool on the host share one; in a user namespace every capability is dropped instead
    seccomp           an allow list (``seccomp.py``); rlimits; a wall-clock deadline; an output cap

What each layer costs per program and per worker is measured in ``worker.py``'s docstring (``python
bench/sandbox_throughput.py --layers``). ``isolation["safe"]`` is true when all of these are in place. Otherwise the pool refuses to start, with one line
naming what is missing, unless ``rewards.sandbox_unsafe_ok=true`` (then programs run with what there is:
``isolation["unsafe"]`` lists the gaps).

Failure handling: a worker that dies, misbehaves or stops answering (deadline = timeout + 5 s) is SIGKILLed with
its whole session (its PID namespace dies with it) and replaced; its in-flight job gets the error kind
``sandbox`` or ``timeout``. A worker that fails to start three times in a row raises ``SandboxError`` naming the
reason. ``close()`` is idempotent and also runs when the pool is garbage collected or the interpreter exits; it
removes every temporary directory and releases every uid lease.
"""

from __future__ import annotations

import collections
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field

from echo_megatron.errors import UserError
from echo_megatron.rewards.leases import LeaseError, UidLease
from echo_megatron.rewards.policy import DEFAULT_PRELOAD, DEFAULT_PRELOAD_HEAVY, SandboxPolicy
from echo_megatron.rewards.protocol import Exit, Job, Reply, outcome, recv_msg, send_msg
from echo_megatron.rewards.runner import PROGRAM, VERIFY, role_of

__all__ = [
    "DEFAULT_PRELOAD",
    "DEFAULT_PRELOAD_HEAVY",
    "HEAVY",
    "LIGHT",
    "SandboxError",
    "SandboxPool",
    "VERIFIER",
]

LIGHT, HEAVY, VERIFIER = "light", "heavy", "verify"  # worker profiles (see policy.DEFAULT_PRELOAD)
MAX_START_FAILURES = 3
READ_SLACK = 64 << 10  # bytes of JSON framing allowed on top of the output cap
START_HINT = (
    "to run without the failing layer set rewards.sandbox_namespaces=false or rewards.sandbox_seccomp=false "
    "with rewards.sandbox_unsafe_ok=true (score: --no-namespaces / --no-seccomp with --sandbox-unsafe-ok)"
)
UNSAFE_HINT = "set rewards.sandbox_unsafe_ok=true (score: --sandbox-unsafe-ok) to run programs anyway"


class SandboxError(UserError, RuntimeError):
    """The sandbox cannot run at all (workers fail to start, or not safely); program failures are never raised."""


@dataclass
class _Slot:
    pos: int  # position in the pool's slot list
    profile: str  # LIGHT, HEAVY or VERIFIER
    proc: subprocess.Popen
    sock: socket.socket
    base: str
    lease: UidLease | None
    spawned: float
    lease_ms: float = 0.0  # time to lease its uid (the /proc scan for strays included)
    ready: bool = False
    info: dict = field(default_factory=dict)
    armed: tuple[int, int, int] | None = None  # (child number, job pipe write end, result pipe read end)
    setup_failures: int = 0  # armed children that died before their job, in a row
    job: int | None = None  # index into the current run's jobs
    n: int | None = None  # the child running it
    res_r: int | None = None
    data: bytearray = field(default_factory=bytearray)
    overflow: bool = False
    ended: Exit | None = None
    started: float = 0.0

    def close_fds(self) -> None:
        fds = [self.res_r] + (list(self.armed[1:]) if self.armed else [])
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.res_r, self.armed = None, None


def import_roots(modules: list[str]) -> list[str]:
    """The directories a worker imports from: this interpreter's ``sys.path`` plus the real location of
    ``echo_megatron`` and of each module in ``modules``. An editable install's finder maps a package to its
    source tree without putting that tree on ``sys.path``; the worker must see it all the same."""
    import importlib.util

    import echo_megatron

    roots = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    roots += [os.path.dirname(os.path.abspath(p)) for p in echo_megatron.__path__]
    for name in modules:
        try:
            spec = importlib.util.find_spec(name.split(".")[0])
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            roots += [os.path.dirname(os.path.abspath(p)) for p in spec.submodule_search_locations]
        elif spec.origin and os.path.isabs(spec.origin):
            roots.append(os.path.dirname(spec.origin))
    return list(dict.fromkeys(roots))


def _kill_slot(slot: _Slot) -> None:
    """SIGKILL the worker's whole session (its PID namespace dies with the template), reap it, close its socket
    and descriptors, remove its directory, release its uid."""
    slot.close_fds()
    try:
        os.killpg(slot.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        slot.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    slot.sock.close()
    shutil.rmtree(slot.base, ignore_errors=True)
    if slot.lease is not None:
        slot.lease.release()


def _shutdown(slots: list[_Slot], owner_pid: int) -> None:
    """Close every worker: EOF on its socket lets it exit by itself; whatever is left after 2 s is killed.
    A no-op in a forked copy of the owner (a DataLoader worker, say): the workers are not its to stop."""
    if os.getpid() != owner_pid:
        return
    for slot in slots:
        try:
            slot.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    for slot in slots:
        try:
            slot.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _kill_slot(slot)
    slots.clear()


class SandboxPool:
    """A pool of sandbox workers. Thread-safe (one ``run`` at a time); a context manager."""

    def __init__(self, policy: SandboxPolicy | None = None, **overrides) -> None:
        """``policy`` (default: ``SandboxPolicy()``) with any of its fields overridden by keyword
        (``SandboxPool(workers=2, timeout_s=1.0)``)."""
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        self.policy = policy = (policy or SandboxPolicy()).with_(**overrides)
        self.workers = policy.workers
        self.timeout_s = policy.timeout_s
        self._init = dict(policy.to_frame(), op="init")
        heavy = list(policy.preload) + list(policy.preload_heavy)
        self.preload = {LIGHT: list(policy.preload), HEAVY: heavy, VERIFIER: heavy}
        # a program that names one of these modules runs in a heavy worker (else it would import it cold)
        self.heavy_triggers = tuple(dict.fromkeys(m.split(".")[0] for m in policy.preload_heavy))
        self._lock = threading.Lock()
        self._start_failures = 0
        self._closed = False
        self._slots: list[_Slot] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._slots, os.getpid())
        for i in range(self.workers):
            self._slots.append(self._spawn(i, LIGHT))

    @classmethod
    def from_config(cls, cfg) -> SandboxPool:
        """From a ``RewardConfig`` (dataclass or the OmegaConf ``rewards`` node); see ``SandboxPolicy.from_config``."""
        return cls(SandboxPolicy.from_config(cfg))

    # --- lifecycle ----------------------------------------------------------------------------------------
    def _spawn(self, pos: int, profile: str) -> _Slot:
        lease, t0 = None, time.perf_counter()
        if os.geteuid() == 0 and self.policy.privdrop:
            try:
                lease = UidLease.acquire(self.policy)
            except (LeaseError, OSError) as e:
                self._fail(f"cannot lease a sandbox uid: {e}")
        lease_ms = round((time.perf_counter() - t0) * 1000, 1)
        base = tempfile.mkdtemp(prefix="echo-sbx-")
        os.chmod(base, 0o711)  # (without namespaces) the program's uid may traverse it to its run dir
        paths = import_roots([*self.preload[profile]])
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": base,
            "TMPDIR": base,
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "NUMEXPR_NUM_THREADS": "1",
        }
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-B", "-m", "echo_megatron.rewards.worker", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                cwd=base,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        mine.setblocking(False)
        slot = _Slot(pos, profile, proc, mine, base, lease, time.monotonic(), lease_ms=lease_ms)
        role = VERIFY if profile == VERIFIER else PROGRAM
        uid = lease.uid if lease else None
        self._send(slot, dict(self._init, role=role, uid=uid, base=base, preload=self.preload[profile]))
        return slot

    def _send(self, slot: _Slot, msg: dict) -> bool:
        try:
            send_msg(slot.sock, msg)
            return True
        except OSError:  # the worker is gone (EPIPE) or its socket is full / closed
            return False

    def _replace(self, slot: _Slot) -> None:
        _kill_slot(slot)
        self._slots[slot.pos] = self._spawn(slot.pos, slot.profile)

    def _fail(self, message: str) -> None:
        self._closed = True
        self._finalizer()
        raise SandboxError(message)

    def close(self) -> None:
        """Stop every worker, remove every temporary directory, release every uid (idempotent)."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots]

    @property
    def base_dirs(self) -> list[str]:
        """The workers' directories (each worker's view is mounted there, in its own mount namespace)."""
        return [s.base for s in self._slots]

    @property
    def uids(self) -> list[int]:
        """The uids leased by the workers started so far (root), one per worker."""
        return [s.lease.uid for s in self._slots if s.lease is not None]

    @property
    def isolation(self) -> dict:
        """What the workers set up (the first worker's report; every worker sets up the same layers) plus the
        uids of all workers: safe, unsafe, pidns, mountns, netns, ipcns, utsns, userns, view, exposed,
        private_tmp, privdrop, uid(s), caps_dropped, seccomp, notes."""
        self.wait_ready()
        first = self._slots[0]
        iso = dict(first.info.get("isolation", {}), uids=self.uids, unsafe_ok=self.policy.unsafe_ok)
        iso["setup_ms"] = dict(iso.get("setup_ms", {}), lease=first.lease_ms)
        return iso

    def wait_ready(self) -> None:
        """Block until every worker started so far has started (a no-op once they have)."""
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox pool is closed")
            self._run([], wait_all=True)

    # --- running jobs -------------------------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> list[Reply]:
        """Run jobs (see ``runner.py``) in parallel; one reply per job, in order. Program failures are replies,
        never exceptions."""
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox pool is closed")
            return self._run(list(jobs))

    def profile_of(self, job: Job) -> str:
        """VERIFIER for comparisons with a gold, HEAVY for programs that name a heavy module, else LIGHT."""
        if role_of(job) == VERIFY:
            return VERIFIER
        return HEAVY if any(m in code for code in job.code for m in self.heavy_triggers) else LIGHT

    def _run(self, jobs: list[Job], wait_all: bool = False) -> list[Reply]:
        results: list[Reply | None] = [None] * len(jobs)
        pending: dict[str, collections.deque] = {p: collections.deque() for p in (LIGHT, HEAVY, VERIFIER)}
        for i, job in enumerate(jobs):
            pending[self.profile_of(job)].append(i)
        for profile in (HEAVY, VERIFIER):
            if pending[profile] and not any(s.profile == profile for s in self._slots):
                for _ in range(self.workers):
                    self._slots.append(self._spawn(len(self._slots), profile))
        while True:
            for slot in self._slots:
                queue = pending[slot.profile]
                if slot.ready and slot.armed and slot.job is None and queue:
                    self._start(slot, queue, jobs)
            busy = [s for s in self._slots if s.job is not None]
            booting = [s for s in self._slots if not s.ready and (pending[s.profile] or wait_all)]
            if not any(pending.values()) and not busy and not booting:
                return list(results)  # type: ignore[arg-type]
            now = time.monotonic()
            wake = [s.started + self._timeout(s) + self.policy.watchdog_grace_s for s in busy]
            wake += [s.spawned + self.policy.start_timeout_s for s in booting]
            wait = max(0.0, min([now + 1.0, *wake]) - now)
            fds = {s.sock.fileno(): s for s in self._slots}
            fds |= {s.res_r: s for s in busy if s.res_r is not None}
            for fd in select.select(list(fds), [], [], wait)[0]:
                slot = fds[fd]
                if self._slots[slot.pos] is not slot:
                    continue  # replaced while handling an earlier descriptor
                if fd == slot.res_r:
                    self._read_result(slot)
                else:
                    self._messages(slot, results)
            for slot in list(self._slots):
                if slot.job is not None and slot.ended is not None and slot.res_r is None:
                    self._finish(slot, results)
            self._watchdog(results)

    def _timeout(self, slot: _Slot) -> float:
        return self.policy.verify_timeout_s if slot.profile == VERIFIER else self.timeout_s

    def _start(self, slot: _Slot, queue: collections.deque, jobs: list[Job]) -> None:
        """Write the next job into the armed child's pipe and start its deadline."""
        n, job_w, res_r = slot.armed
        slot.armed = None
        i = queue.popleft()
        try:
            data = json.dumps(jobs[i].to_frame()).encode()
            view = memoryview(data)
            while view:  # blocking: the child is reading (it has not run any model code yet)
                view = view[os.write(job_w, view) :]
        except OSError:  # the armed child died before its job: the job waits for the next one
            queue.appendleft(i)
            slot.armed = (n, job_w, res_r)
            self._armed_died(slot)
            return
        os.close(job_w)
        os.set_blocking(res_r, False)
        slot.job, slot.n, slot.res_r, slot.started = i, n, res_r, time.monotonic()
        slot.data, slot.overflow, slot.ended = bytearray(), False, None
        self._send(slot, {"op": "go", "n": n})

    def _read_result(self, slot: _Slot) -> None:
        try:
            chunk = os.read(slot.res_r, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            slot.data += chunk
            if len(slot.data) <= self.policy.max_output_bytes * 4 + READ_SLACK:  # JSON may escape each char
                return
            slot.overflow = True
            self._send(slot, {"op": "kill", "n": slot.n})
        os.close(slot.res_r)
        slot.res_r = None

    def _messages(self, slot: _Slot, results: list) -> None:
        """Every message waiting on the worker's socket."""
        while self._slots[slot.pos] is slot:
            try:
                msg, fds = recv_msg(slot.sock)
            except BlockingIOError:
                return
            except OSError:
                msg, fds = None, []
            if msg is None:
                self._lost(slot, results, "sandbox", "the sandbox worker exited")
                return
            self._handle(slot, msg, fds, results)

    def _handle(self, slot: _Slot, msg: dict, fds: list[int], results: list) -> None:
        op = msg.get("op")
        if op == "armed" and len(fds) == 2 and slot.ready:
            if slot.armed:  # cannot happen with a sane worker; never leak descriptors
                os.close(slot.armed[1])
                os.close(slot.armed[2])
            slot.armed = (int(msg.get("n", -1)), fds[0], fds[1])
            return
        for fd in fds:
            os.close(fd)
        if op == "ready" and not slot.ready:
            slot.ready, slot.info = True, msg
            iso = msg.get("isolation", {})
            if not iso.get("safe") and not self.policy.unsafe_ok:
                # the cause, e.g. "no namespaces (unshare: Operation not permitted)"
                why = [n for n in iso.get("notes", []) if n.startswith("no ")]
                gaps = "; ".join(iso.get("unsafe", []) + why) or "unknown"
                self._fail(f"the sandbox is not safe here ({gaps}); {UNSAFE_HINT}")
        elif op == "exit" and slot.job is not None and msg.get("n") == slot.n:
            slot.ended = Exit(int(msg.get("status", 0)), float(msg.get("cpu_s", 0.0)), msg.get("why"))
        elif op == "exit" and slot.armed and msg.get("n") == slot.armed[0]:
            self._armed_died(slot)
        elif op == "exit":
            pass  # an armed child whose death _start already counted
        elif op == "fatal":
            self._fail(f"a sandbox worker could not start: {msg.get('detail', '')}; {START_HINT}")
        else:
            self._lost(slot, results, "sandbox", f"unexpected message from the sandbox worker: {op!r}")

    def _armed_died(self, slot: _Slot) -> None:
        """An armed child died before it got a job (it could not harden itself); three in a row is fatal."""
        _, job_w, res_r = slot.armed
        try:
            reply = Reply.decode(os.read(res_r, 1 << 16))
        except OSError:
            reply = None
        slot.close_fds()
        slot.setup_failures += 1
        if slot.setup_failures >= MAX_START_FAILURES:
            detail = reply.detail if reply is not None else "no reason given"
            self._fail(f"sandbox programs cannot start: {detail}; {START_HINT}")

    def _finish(self, slot: _Slot, results: list) -> None:
        reply = outcome(bytes(slot.data), slot.ended, self._timeout(slot), slot.overflow)
        results[slot.job] = reply.timed(time.monotonic() - slot.started)
        slot.job = slot.n = slot.ended = None
        slot.data = bytearray()
        slot.setup_failures = 0
        self._start_failures = 0

    def _lost(self, slot: _Slot, results: list, kind: str, detail: str) -> None:
        """Kill and replace a worker; its in-flight job (if any) gets the error ``kind``."""
        if slot.job is not None:
            results[slot.job] = Reply.failure(kind, detail, time.monotonic() - slot.started)
        elif not slot.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._fail(
                    f"sandbox workers failed to start {MAX_START_FAILURES} times: {detail}; {START_HINT}"
                )
        self._replace(slot)

    def _watchdog(self, results: list) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            if (
                slot.job is not None
                and now > slot.started + self._timeout(slot) + self.policy.watchdog_grace_s
            ):
                self._lost(slot, results, "timeout", "the sandbox worker stopped answering (killed)")
            elif not slot.ready and now > slot.spawned + self.policy.start_timeout_s:
                limit = self.policy.start_timeout_s
                self._lost(slot, results, "sandbox", f"no worker ready after {limit:g} s")
