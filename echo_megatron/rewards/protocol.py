"""What travels between ``score``, the sandbox pool, its workers and the programs' processes: jobs, replies, exits.

A ``Job`` is what one sandboxed process does (run a program, or compare two answers with math-verify); a
``Reply`` is what comes back. The pool writes a job as JSON into the pipe of the child that runs it and reads the
child's reply, JSON, from its result pipe; the worker reports how the child ended (``Exit``) in a control message
(one JSON object per SOCK_SEQPACKET message, descriptors alongside). A reply is written by a process that ran
model code, so it is untrusted: ``Reply.decode`` is the one place that turns such bytes into a ``Reply``, checking
every field's type and capping its size, and ``outcome`` the one place that combines it with the exit status.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
from dataclasses import asdict, dataclass

MAX_VALUE_CHARS = 1000  # an answer longer than this is cut
MAX_DETAIL_CHARS = 300
MAX_MESSAGE = 1 << 20  # a control message between the pool and a worker
EXIT_SETUP_FAILED = 121  # a job's process could not harden itself (its reply says why)
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}

ERROR_KINDS: dict[str, str] = {
    "empty": "the completion is empty",
    "too_long": "the completion is longer than extract.MAX_COMPLETION_CHARS and is not parsed",
    "no_answer": "no final answer found (or the program returned None and printed nothing)",
    "no_reference": "the reference answer is missing",
    "syntax": "the program does not compile",
    "exception": "the program raised an exception",
    "exit": "the program exited (sys.exit, SystemExit, KeyboardInterrupt, os._exit) before returning",
    "forbidden": "a blocked operation: process, thread, socket, file write, signal, limit change, other user's file",
    "timeout": "wall-clock timeout (killed)",
    "cpu": "CPU-time limit (killed)",
    "memory": "address-space limit (MemoryError)",
    "output": "stdout/stderr over the cap",
    "crash": "killed by a fatal signal (segfault, abort)",
    "killed": "killed by another signal",
    "verify": "math-verify failed on the answer",
    "sandbox": "the sandbox itself failed (worker died or could not set up)",
}


@dataclass(frozen=True)
class Job:
    """One sandboxed run. ``kind`` names a runner (``runner.RUNNERS``, which also gives its role): ``function``
    (``code`` = one program), ``notebook`` (``code`` = the ``<llm-code>`` blocks, run as one session) or ``verify``
    (``gold`` vs ``pred`` through math-verify, in a process that never runs model code)."""

    kind: str
    code: tuple[str, ...] = ()
    gold: str | None = None
    pred: str | None = None

    def to_frame(self) -> dict:
        return {"kind": self.kind, "code": list(self.code), "gold": self.gold, "pred": self.pred}

    @classmethod
    def from_frame(cls, obj: dict) -> Job:
        """The job a child reads from its pipe (written by the trusted pool, so only shapes are checked)."""

        def opt(v: object) -> str | None:
            return None if v is None else str(v)

        code = obj.get("code") or ()
        return cls(str(obj.get("kind")), tuple(map(str, code)), opt(obj.get("gold")), opt(obj.get("pred")))


@dataclass(frozen=True)
class Reply:
    """The outcome of one job: the program's answer (``value``), math-verify's verdict (``equal``), or an error
    kind of ``ERROR_KINDS`` with a human-readable ``detail``; ``elapsed`` seconds of wall time."""

    value: str | None = None
    equal: bool | None = None
    error: str | None = None
    detail: str = ""
    elapsed: float = 0.0

    @classmethod
    def failure(cls, kind: str, detail: str, elapsed: float = 0.0) -> Reply:
        return cls(error=kind, detail=detail, elapsed=elapsed)

    def timed(self, elapsed: float) -> Reply:
        return Reply(self.value, self.equal, self.error, self.detail, elapsed)

    def to_frame(self) -> dict:
        return asdict(self)

    @classmethod
    def decode(cls, obj: object) -> Reply | None:
        """A reply from untrusted JSON (or bytes of it), every field checked and capped; None when it is not one.

        ``value`` must be a string or null (cut to ``MAX_VALUE_CHARS``), ``equal`` a bool or null, ``error`` null or
        a known error kind, ``detail`` a string (cut to ``MAX_DETAIL_CHARS``), ``elapsed`` a finite number >= 0.
        """
        if isinstance(obj, (bytes, bytearray, str)):
            try:
                obj = json.loads(obj)
            except (ValueError, RecursionError):
                return None
        if not isinstance(obj, dict) or not {"value", "error", "equal"} <= set(obj):
            return None
        value, equal, error = obj["value"], obj["equal"], obj["error"]
        detail, elapsed = obj.get("detail", ""), obj.get("elapsed", 0.0)
        if value is not None and not isinstance(value, str):
            return None
        if error is not None and error not in ERROR_KINDS:
            return None
        if not isinstance(detail, str) or isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)):
            return None
        return cls(
            value=None if value is None else value[:MAX_VALUE_CHARS],
            equal=equal if isinstance(equal, bool) else None,
            error=error,
            detail=detail[:MAX_DETAIL_CHARS],
            elapsed=float(elapsed) if 0.0 <= elapsed < float("inf") else 0.0,
        )


@dataclass(frozen=True)
class Exit:
    """How a job's process ended, as the worker that reaped it reports: ``status`` (``os.wait4``), CPU seconds,
    and ``why`` the worker killed it (``timeout``: the wall-clock deadline; ``killed``: the pool asked), if it
    did."""

    status: int
    cpu_s: float
    why: str | None = None


def outcome(data: bytes, ended: Exit, timeout_s: float, overflow: bool = False) -> Reply:
    """The reply of one job from what its process wrote on the result pipe (``data``, untrusted) and how it ended.
    ``overflow``: the pool stopped reading past the byte cap (and had the process killed)."""
    err = Reply.failure
    if overflow:
        return err("output", "the program wrote past the output cap (killed)")
    if ended.why == "timeout":
        return err("timeout", f"no result within {timeout_s:g} s (killed)")
    status = ended.status
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGSYS:
            return err("forbidden", "a system call outside the allow list (seccomp)")
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and ended.cpu_s >= math.ceil(timeout_s) + 1):
            return err("cpu", f"CPU limit ({ended.cpu_s:.1f} s)")
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


# --- control messages (a SOCK_SEQPACKET socket: one JSON object per message, descriptors alongside) ------------
def send_msg(sock: socket.socket, obj: dict, fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(obj).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_msg(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the descriptors that came with it; (None, []) at end of file. Raises BlockingIOError on a
    non-blocking socket with nothing to read."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        obj = json.loads(data)
    except ValueError:
        obj = {"op": "garbage"}
    return (obj if isinstance(obj, dict) else {"op": "garbage"}), fds


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
