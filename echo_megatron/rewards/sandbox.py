"""SandboxPool: pre-forked sandbox workers that run model-written programs in parallel.

    with SandboxPool(workers=2, timeout_s=3.0) as pool:       # cheap: starts the workers, does not wait
        replies = pool.run([{"kind": "function", "code": src}, ...])

RL keeps one pool alive across steps (``SandboxPool.from_config(cfg.rewards)``). Each worker is a fresh
``python -m echo_megatron.rewards.worker`` (spawned, not forked from the caller, with an empty environment and its
own session), so the pool is safe in a process that also runs torch / torch.distributed threads and never
leaks the caller's environment variables. The worker forks one hardened child per program (``worker.py`` lists
every layer); the caller only exchanges JSON frames with the workers over pipes, from one thread, with a
select() loop — no threads or signal handlers are added to the caller.

Violations: the process that ran the program is always a fresh fork of the worker, and on any violation
(timeout, CPU, memory, output cap, forbidden call, crash) that process is SIGKILLed and the next program gets a new
one; the worker that forks never executes model code, so nothing a program did survives it. This is stronger than
recycling a worker that ran programs itself, and avoids paying an interpreter start per violation.

Failure handling: a worker that dies, misbehaves or stops answering (deadline = timeout + 5 s) is SIGKILLed
with its whole session and replaced; its in-flight job gets the error kind ``sandbox`` or ``timeout``. A worker
that fails to start three times in a row raises ``SandboxError`` naming the reason. ``close()`` is idempotent
and also runs when the pool is garbage collected or the interpreter exits; it removes every temporary directory.

Fallbacks (see ``isolation``): without root, network and mount namespaces come from a user namespace where the
kernel allows one; without namespaces the seccomp filter still blocks sockets and file writes; without
libseccomp the pool still has rlimits, the uid drop (root) or the kernel's permission checks (non-root), the
wall-clock timeout and the temp cwd, and ``isolation["notes"]`` says what is missing.
"""

from __future__ import annotations

import collections
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field

from echo_megatron.errors import UserError
from echo_megatron.rewards.policy import DEFAULT_PRELOAD, DEFAULT_PRELOAD_HEAVY, SandboxPolicy
from echo_megatron.rewards.protocol import MAX_FRAME, Job, Reply, encode_frame
from echo_megatron.rewards.runner import PROGRAM, role_of

__all__ = ["DEFAULT_PRELOAD", "DEFAULT_PRELOAD_HEAVY", "HEAVY", "LIGHT", "SandboxError", "SandboxPool"]

LIGHT, HEAVY = "light", "heavy"  # worker profiles (see policy.DEFAULT_PRELOAD)
MAX_START_FAILURES = 3


START_HINT = (
    "to run without the failing layer set rewards.sandbox_namespaces=false or rewards.sandbox_seccomp=false "
    "(score: --no-namespaces / --no-seccomp)"
)


class SandboxError(UserError, RuntimeError):
    """The sandbox cannot run at all (workers fail to start); individual program failures are never raised."""


@dataclass
class _Slot:
    pos: int  # position in the pool's slot list
    profile: str  # LIGHT or HEAVY
    proc: subprocess.Popen
    base: str
    spawned: float
    buf: bytearray = field(default_factory=bytearray)
    ready: bool = False
    info: dict = field(default_factory=dict)
    job: int | None = None  # index into the current run's jobs
    job_id: int | None = None
    started: float = 0.0


def import_roots(modules: list[str]) -> list[str]:
    """The directories a worker imports from: this interpreter's ``sys.path`` plus the real location of
    ``echo_megatron`` and of each module in ``modules``. An editable install's finder maps a package to its
    source tree without putting that tree on ``sys.path``; the worker (and the bind mounts that keep its imports
    visible inside the sandbox's private /tmp) must see it all the same."""
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
    """SIGKILL the worker's whole session, reap it, close its pipes and remove its directory."""
    try:
        os.killpg(slot.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        slot.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for pipe in (slot.proc.stdin, slot.proc.stdout):
        try:
            pipe.close()
        except OSError:
            pass
    shutil.rmtree(slot.base, ignore_errors=True)


def _shutdown(slots: list[_Slot], owner_pid: int) -> None:
    """Close every worker: EOF on stdin lets it exit by itself; whatever is left after 2 s is killed.
    A no-op in a forked copy of the owner (a DataLoader worker, say): the workers are not its to stop."""
    if os.getpid() != owner_pid:
        return
    for slot in slots:
        try:
            slot.proc.stdin.close()
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
        self._init = dict(policy.to_frame(), type="init")
        self.preload = {LIGHT: list(policy.preload), HEAVY: list(policy.preload) + list(policy.preload_heavy)}
        # a program that names one of these modules runs in a heavy worker (else it would import it cold)
        self.heavy_triggers = tuple(dict.fromkeys(m.split(".")[0] for m in policy.preload_heavy))
        self._lock = threading.Lock()
        self._next_id = 0
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
        base = tempfile.mkdtemp(prefix="echo-sbx-")
        os.chmod(base, 0o711)  # the sandbox uid may traverse it to its own run dir, not list or write it
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
        proc = subprocess.Popen(
            [sys.executable, "-B", "-m", "echo_megatron.rewards.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=base,
            start_new_session=True,
            close_fds=True,
            bufsize=0,
        )
        os.set_blocking(proc.stdout.fileno(), False)
        init = dict(self._init, base=base, uid=self.policy.uid_base + pos, preload=self.preload[profile])
        slot = _Slot(pos=pos, profile=profile, proc=proc, base=base, spawned=time.monotonic())
        self._send(slot, init)
        return slot

    def _send(self, slot: _Slot, frame: dict) -> bool:
        try:
            data = encode_frame(frame)
            view = memoryview(data)
            while view:
                view = view[os.write(slot.proc.stdin.fileno(), view) :]
            return True
        except (OSError, ValueError):  # the worker is gone (EPIPE) or its pipe was closed
            return False

    def _replace(self, slot: _Slot) -> None:
        _kill_slot(slot)
        self._slots[slot.pos] = self._spawn(slot.pos, slot.profile)

    def close(self) -> None:
        """Stop every worker and remove every temporary directory (idempotent)."""
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
        """The workers' sandbox directories (every program's cwd and /tmp live inside one of them)."""
        return [s.base for s in self._slots]

    @property
    def isolation(self) -> dict:
        """What each worker could set up: netns, mountns, userns, private_tmp, privdrop, seccomp, notes."""
        self.wait_ready()
        return dict(self._slots[0].info.get("isolation", {}))

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
        """HEAVY for math-verify comparisons and programs that name a heavy module, else LIGHT."""
        if role_of(job) != PROGRAM:
            return HEAVY
        return HEAVY if any(m in code for code in job.code for m in self.heavy_triggers) else LIGHT

    def _run(self, jobs: list[Job], wait_all: bool = False) -> list[Reply]:
        results: list[Reply | None] = [None] * len(jobs)
        pending: dict[str, collections.deque] = {LIGHT: collections.deque(), HEAVY: collections.deque()}
        for i, job in enumerate(jobs):
            pending[self.profile_of(job)].append(i)
        if pending[HEAVY] and not any(s.profile == HEAVY for s in self._slots):
            for _ in range(self.workers):
                self._slots.append(self._spawn(len(self._slots), HEAVY))
        while True:
            now = time.monotonic()
            for slot in self._slots:
                queue = pending[slot.profile]
                if slot.ready and slot.job is None and queue:
                    i = queue.popleft()
                    self._next_id += 1
                    slot.job, slot.job_id, slot.started = i, self._next_id, now
                    if not self._send(slot, dict(jobs[i].to_frame(), id=self._next_id)):
                        self._lost(slot, results, "sandbox", "the worker's pipe is closed")
            busy = [s for s in self._slots if s.job is not None]
            booting = [s for s in self._slots if not s.ready and (pending[s.profile] or wait_all)]
            if not pending[LIGHT] and not pending[HEAVY] and not busy and not booting:
                return list(results)  # type: ignore[arg-type]
            wake = [s.started + self.timeout_s + self.policy.watchdog_grace_s for s in busy]
            wake += [s.spawned + self.policy.start_timeout_s for s in booting]
            wait = max(0.0, min([now + 1.0, *wake]) - now)
            fds = {s.proc.stdout.fileno(): s for s in self._slots}
            for fd in select.select(list(fds), [], [], wait)[0]:
                self._read(fds[fd], results)
            self._watchdog(results)

    def _read(self, slot: _Slot, results: list) -> None:
        try:
            chunk = os.read(slot.proc.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._lost(slot, results, "sandbox", "the sandbox worker exited")
            return
        slot.buf += chunk
        while len(slot.buf) >= 4:
            (n,) = struct.unpack(">I", slot.buf[:4])
            if n > MAX_FRAME:
                self._lost(slot, results, "sandbox", "bad frame from the sandbox worker")
                return
            if len(slot.buf) < 4 + n:
                return
            frame = self._decode(slot.buf[4 : 4 + n])
            del slot.buf[: 4 + n]
            if not self._handle(slot, frame, results):
                return

    @staticmethod
    def _decode(data: bytes) -> dict:
        import json

        try:
            obj = json.loads(data)
        except ValueError:
            return {"type": "garbage"}
        return obj if isinstance(obj, dict) else {"type": "garbage"}

    def _handle(self, slot: _Slot, frame: dict, results: list) -> bool:
        kind = frame.get("type")
        if kind == "ready":
            slot.ready, slot.info = True, frame
            return True
        reply = Reply.decode(frame) if kind == "result" else None
        if reply is not None and slot.job is not None and frame.get("id") == slot.job_id:
            results[slot.job] = reply
            slot.job = slot.job_id = None
            self._start_failures = 0
            return True
        if kind == "fatal":
            detail = frame.get("detail", "")
            self._closed = True
            self._finalizer()
            raise SandboxError(f"a sandbox worker could not start: {detail}; {START_HINT}")
        self._lost(slot, results, "sandbox", f"unexpected frame from the sandbox worker: {kind!r}")
        return False

    def _lost(self, slot: _Slot, results: list, kind: str, detail: str) -> None:
        """Kill and replace a worker; its in-flight job (if any) gets the error ``kind``."""
        if slot.job is not None:
            results[slot.job] = Reply.failure(kind, detail, time.monotonic() - slot.started)
        elif not slot.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._closed = True
                self._finalizer()
                raise SandboxError(
                    f"sandbox workers failed to start {MAX_START_FAILURES} times: {detail}; {START_HINT}"
                )
        self._replace(slot)

    def _watchdog(self, results: list) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            if slot.job is not None and now > slot.started + self.timeout_s + self.policy.watchdog_grace_s:
                self._lost(slot, results, "timeout", "the sandbox worker stopped answering (killed)")
            elif not slot.ready and now > slot.spawned + self.policy.start_timeout_s:
                self._lost(
                    slot, results, "sandbox", f"no worker ready after {self.policy.start_timeout_s:g} s"
                )
