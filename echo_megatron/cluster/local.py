"""Run a study's steps on this machine: dependency order, N at a time, finished steps skipped, stoppable.

A step is a named list of ``echo-megatron`` command lines run one after another in one log file
(``OUT/logs/<step>.log``), after the steps it needs. When all its commands succeed, ``OUT/done/<step>.json``
is written atomically with the hash of its recipe text and the times; a step whose marker is there with the same
hash is skipped, so the executor can be stopped (Ctrl-C, SIGTERM, a lost session) and started again at any
time. A step records its fingerprint in ``OUT/started/<step>.json`` before its first command: a step whose
config changed after it started refuses to resume over its run dir (remove the run dir to start it afresh),
rather than mixing checkpoints of two configs. The commands themselves resume from their checkpoints (pretrain, rl) or rewrite their output atomically
(testbed, preprocess, eval), so a step cut short loses only the work since its last checkpoint.

A step whose command fails is reported with its log's path; the steps that need it are not started, the
others go on; the exit status is 1 when any step failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from echo_megatron.rundir import write_text_atomic

Command = list[str] | Callable[[], list[str]]  # a callable is evaluated when its turn comes


@dataclass
class Step:
    name: str
    commands: list[Command]
    needs: list[str] = field(default_factory=list)
    fingerprint: str = ""  # what the done marker must match (e.g. the recipe text)
    run_dir: str | None = None  # what the step writes: a step started under another fingerprint refuses it


@dataclass
class Outcome:
    name: str
    ok: bool
    seconds: float
    skipped: bool = False
    detail: str = ""


def fingerprint(*texts: str) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def order(steps: list[Step]) -> list[Step]:
    """The steps in a dependency order (stable otherwise); an unknown or circular need is a ValueError."""
    by_name = {s.name: s for s in steps}
    out: list[Step] = []
    state: dict[str, int] = {}

    def visit(s: Step, chain: tuple[str, ...]) -> None:
        if state.get(s.name) == 2:
            return
        if state.get(s.name) == 1:
            raise ValueError(f"steps depend on each other in a circle: {' -> '.join((*chain, s.name))}")
        state[s.name] = 1
        for n in s.needs:
            if n not in by_name:
                raise ValueError(f"step {s.name} needs {n}, which is not a step")
            visit(by_name[n], (*chain, s.name))
        state[s.name] = 2
        out.append(s)

    for s in steps:
        visit(s, ())
    return out


class LocalExecutor:
    """Runs steps as subprocesses of ``python -m echo_megatron``, ``jobs`` at a time."""

    def __init__(self, out: str, jobs: int = 1, echo: Callable[[str], None] = print) -> None:
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        self.out, self.jobs, self.echo = out, jobs, echo
        self.logs, self.done = os.path.join(out, "logs"), os.path.join(out, "done")
        self.started = os.path.join(out, "started")
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = False

    def marker(self, name: str) -> str:
        return os.path.join(self.done, f"{name}.json")

    def is_done(self, step: Step) -> bool:
        try:
            with open(self.marker(step.name), encoding="utf-8") as f:
                return json.load(f).get("fingerprint") == step.fingerprint
        except (OSError, ValueError):
            return False

    def run(self, steps: list[Step]) -> list[Outcome]:
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(self.done, exist_ok=True)
        os.makedirs(self.started, exist_ok=True)
        pending = order(steps)
        outcomes: dict[str, Outcome] = {}
        for s in pending:
            if self.is_done(s):
                outcomes[s.name] = Outcome(s.name, True, 0.0, skipped=True)
        pending = [s for s in pending if s.name not in outcomes]
        if outcomes:
            self.echo(f"{len(outcomes)} step(s) already done, {len(pending)} to run")
        finished: list[Outcome] = []
        cv = threading.Condition()
        running: dict[str, threading.Thread] = {}
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def stop(signum, _frame) -> None:
            self._stopping = True
            self._kill_all()
            raise KeyboardInterrupt

        for sig in previous:
            signal.signal(sig, stop)
        try:
            while pending or running:
                blocked = [s for s in pending if any(n in outcomes and not outcomes[n].ok for n in s.needs)]
                for s in blocked:
                    pending.remove(s)
                    outcomes[s.name] = Outcome(
                        s.name, False, 0.0, detail="not started: a step it needs failed"
                    )
                    self.echo(f"[skip] {s.name}: a step it needs failed")
                ready = [s for s in pending if all(n in outcomes and outcomes[n].ok for n in s.needs)]
                while ready and len(running) < self.jobs:
                    s = ready.pop(0)
                    pending.remove(s)
                    t = threading.Thread(target=self._run_step, args=(s, finished, cv), daemon=True)
                    running[s.name] = t
                    t.start()
                if not running:
                    if pending:  # nothing running and nothing ready: cannot happen after order()
                        raise RuntimeError(f"steps waiting for nothing: {[s.name for s in pending]}")
                    break
                with cv:
                    while not finished:
                        cv.wait(timeout=1.0)
                    for o in finished:
                        outcomes[o.name] = o
                        running.pop(o.name, None)
                    finished.clear()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return [outcomes[s.name] for s in order(steps)]

    def _run_step(self, step: Step, finished: list[Outcome], cv: threading.Condition) -> None:
        t0 = time.perf_counter()
        log = os.path.join(self.logs, f"{step.name}.log")
        ok, detail = True, self._stale(step)
        self.echo(f"[start] {step.name}")
        with open(log, "a", encoding="utf-8") as f:
            if detail:
                ok = False
            else:
                started = {"step": step.name, "fingerprint": step.fingerprint, "run_dir": step.run_dir}
                write_text_atomic(os.path.join(self.started, f"{step.name}.json"), json.dumps(started) + "\n")
            for cmd in step.commands if ok else []:
                if self._stopping:
                    ok, detail = False, "stopped"
                    break
                argv = cmd() if callable(cmd) else cmd
                f.write(f"\n$ echo-megatron {' '.join(argv)}\n")
                f.flush()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "echo_megatron", *argv],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # one process group per command: a stop kills its workers too
                )
                with self._lock:
                    self._procs[step.name] = proc
                rc = proc.wait()
                with self._lock:
                    self._procs.pop(step.name, None)
                if rc != 0:
                    ok, detail = False, f"`echo-megatron {argv[0]}` exited {rc}; see {log}"
                    break
        dt = time.perf_counter() - t0
        if ok:
            record = {"step": step.name, "fingerprint": step.fingerprint, "seconds": round(dt, 1)}
            write_text_atomic(self.marker(step.name), json.dumps(record) + "\n")
        self.echo(
            f"[{'done' if ok else 'FAILED'}] {step.name} in {dt:.0f}s" + (f": {detail}" if detail else "")
        )
        with cv:
            finished.append(Outcome(step.name, ok, dt, detail=detail))
            cv.notify()

    def _stale(self, step: Step) -> str:
        """Why ``step`` must not resume over its run dir (it started under another fingerprint), or ''."""
        if not step.run_dir or not os.path.isdir(step.run_dir):
            return ""
        try:
            with open(os.path.join(self.started, f"{step.name}.json"), encoding="utf-8") as f:
                before = json.load(f).get("fingerprint")
        except (OSError, ValueError):
            return ""
        if before == step.fingerprint:
            return ""
        return (
            f"its config changed since it started in {step.run_dir}: remove that run dir to start it afresh"
        )

    def _kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
