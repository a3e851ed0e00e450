"""What travels between ``score``, the sandbox pool, its workers and the programs' processes: jobs, replies, frames.

A ``Job`` is what one sandboxed process does (run a program, or compare two answers with math-verify); a
``Reply`` is what comes back. Everything that crosses a process boundary is a frame: 4-byte big-endian length +
a UTF-8 JSON object. A reply is written by a process that ran model code, so it is untrusted: ``Reply.decode`` is
the one place that turns such bytes into a ``Reply``, checking every field's type and capping its size.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass

MAX_FRAME = 256 << 20
MAX_VALUE_CHARS = 1000  # an answer longer than this is cut
MAX_DETAIL_CHARS = 300

ERROR_KINDS: dict[str, str] = {
    "empty": "the completion is empty",
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


# --- frames ----------------------------------------------------------------------------------------------
def encode_frame(obj: dict) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def read_frame(fd: int) -> dict | None:
    """One frame from a blocking descriptor; None at end of file."""
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    body = _read_exact(fd, n)
    return None if body is None else json.loads(body)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
