"""What a sandboxed child does with one job: run model code (or a math-verify comparison) and describe the result.

Runs inside the forked, rlimited, seccomp-filtered child (see ``worker.py``); nothing here is a security
boundary. A ``Job`` (``protocol.py``) names its runner in ``RUNNERS``:

    function   TinyGSM: exec ``code[0]``, then call ``simple_math_problem()`` (else the last zero-argument
               function, else a global ``result``, else the last printed line)
    notebook   OMI1: run the ``<llm-code>`` blocks (``code``) in order in one namespace, like the interpreter
               session that produced them (an earlier block's error does not stop later ones); the answer is the
               last block's value of its last expression, else its last printed line
    verify     math-verify equality of ``gold`` and ``pred`` (a fresh child that ran no model code)

and the paper's rules (``rewards.verifier: paper``; ``paper.py`` gives them), without any of this project's
repairs:

    paper_notebook          exec the first ``<llm-code>`` block (``code[0]``) with fresh globals, then ``eval`` its
                            last line again in them; the value is ``str`` of it (``'None'`` included)
    paper_function          exec ``code[0]`` with empty globals and separate locals, call
                            ``simple_math_problem()`` from the locals; the value is ``str`` of its result
    paper_verify            ``verify(parse(gold), parse(pred))`` with math-verify's defaults (``pred`` is the code
                            output or the whole text); the value is the extracted answer (the last element of
                            ``parse``'s list)
    paper_verify_pred_first the same with ``verify``'s arguments swapped (``train_ei.py``)

Each returns a ``Reply``.
A program that does not compile is retried on its longest compilable prefix of lines (a generation that kept
going after ``return result``), as long as that prefix still defines the function it needs.
"""

from __future__ import annotations

import ast
import builtins
import errno
import io
import sys
from collections.abc import Callable

from echo_megatron.rewards.protocol import MAX_VALUE_CHARS, Job, Reply

MAX_PREFIX_TRIES = 200
FORBIDDEN_ERRNOS = {
    errno.EPERM,
    errno.EACCES,
    errno.EAGAIN,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EMFILE,
    errno.ENFILE,
    errno.EROFS,
    errno.EFBIG,
}


class OutputLimit(BaseException):
    """Raised by the captured stdout/stderr once the program has written more than its cap."""


class CappedOutput(io.TextIOBase):
    """A write-only text stream that keeps at most ``cap`` characters and raises OutputLimit beyond them."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.overflow = False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        s = str(s)
        if self.size + len(s) > self.cap:
            self.overflow = True
            raise OutputLimit(f"output over {self.cap} characters")
        self.parts.append(s)
        self.size += len(s)
        return len(s)

    def text(self) -> str:
        return "".join(self.parts)


def error_kind(exc: BaseException) -> str:
    """The error kind of an exception raised by model code (see ``score.ERROR_KINDS``)."""
    if isinstance(exc, OutputLimit):
        return "output"
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, (SystemExit, KeyboardInterrupt, GeneratorExit)):
        return "exit"
    if isinstance(exc, OSError) and (isinstance(exc, PermissionError) or exc.errno in FORBIDDEN_ERRNOS):
        return "forbidden"
    if isinstance(exc, RuntimeError) and "new thread" in _safe_str(exc):
        return "forbidden"
    if isinstance(exc, SyntaxError):
        return "syntax"
    return "exception"


def _safe_str(obj: object, limit: int = MAX_VALUE_CHARS) -> str:
    try:
        return str(obj)[:limit]
    except BaseException:  # a hostile __str__, or an int too long to print
        return f"<unprintable {type(obj).__name__}>"


def _detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_safe_str(exc, 300)}"


def compile_prefix(source: str, needs: str | None = None):
    """Compile ``source``; if that fails, its longest prefix of whole lines that compiles (and still contains
    ``needs``). Returns ``(ast.Module, None)`` or ``(None, "SyntaxError: ...")``."""
    try:
        return ast.parse(source), None
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        first_error = _detail(e)
    lines = source.split("\n")
    for k in range(len(lines) - 1, max(0, len(lines) - 1 - MAX_PREFIX_TRIES), -1):
        prefix = "\n".join(lines[:k])
        if needs is not None and needs not in prefix:
            break
        try:
            return ast.parse(prefix), None
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return None, first_error


def _value_text(value: object) -> str | None:
    """The answer as text (None for None). Raises what ``str`` raises: an answer that cannot be printed (an int
    past Python's 4300-digit limit, a hostile ``__str__``) is the program's error, not a value."""
    if value is None:
        return None
    text = str(value)[:MAX_VALUE_CHARS].strip()
    return text or None


def _last_line(text: str) -> str | None:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:MAX_VALUE_CHARS] if lines else None


def _exec_tree(tree: ast.Module, namespace: dict, filename: str):
    """Run a module; if its last statement is an expression, return that expression's value (like a notebook)."""
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), namespace)
    return eval(compile(last, filename, "eval"), namespace) if last is not None else None


def run_function(job: Job, out: CappedOutput) -> Reply:
    """TinyGSM: exec the program and call its solution function."""
    code = job.code[0] if job.code else ""
    tree, err = compile_prefix(code, needs="def " if "def " in code else None)
    if tree is None:
        return Reply.failure("syntax", err or "")
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(tree, "<solution>", "exec"), ns)
        fn = ns.get("simple_math_problem")
        if not callable(fn):
            zero_arg = [
                node.name
                for node in tree.body
                if isinstance(node, ast.FunctionDef) and not node.args.args and not node.args.posonlyargs
            ]
            fn = ns.get(zero_arg[-1]) if zero_arg else None
        if callable(fn):
            value = fn()
        else:
            value = ns.get("result")
        text = _value_text(value)
    except BaseException as e:
        return Reply.failure("output" if out.overflow else error_kind(e), _detail(e))
    if out.overflow:
        return Reply.failure("output", "output limit")
    if text is None:
        text = _last_line(out.text())
    if text is None:
        return Reply.failure("no_answer", "the program returned None and printed nothing")
    return Reply(value=text)


def run_notebook(job: Job, out: CappedOutput) -> Reply:
    """OMI1: run the code blocks as one interpreter session; answer from the last block."""
    blocks = job.code
    if not blocks:
        return Reply.failure("no_answer", "no <llm-code> block")
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    text, start = None, 0
    for i, block in enumerate(blocks):
        is_last = i == len(blocks) - 1
        start = out.size
        tree, err = compile_prefix(block)
        if tree is None:
            if is_last:
                return Reply.failure("syntax", err or "")
            continue
        try:
            value = _exec_tree(tree, ns, f"<llm-code {i}>")
            text = _value_text(value) if is_last else None
        except BaseException as e:
            if out.overflow:
                return Reply.failure("output", "output limit")
            if is_last:
                return Reply.failure(error_kind(e), _detail(e))
            continue
    if out.overflow:
        return Reply.failure("output", "output limit")
    if text is None:
        text = _last_line(out.text()[start:])
    if text is None:
        return Reply.failure("no_answer", "the last block printed nothing and ended without an expression")
    return Reply(value=text)


def run_verify(job: Job, out: CappedOutput) -> Reply:
    """math-verify: is ``job.pred`` equal to ``job.gold``?"""
    from echo_megatron.rewards.equivalence import math_verify_equal

    try:
        return Reply(equal=math_verify_equal(job.gold or "", job.pred or ""))
    except BaseException as e:
        return Reply(error="verify", detail=_detail(e), equal=False)


def run_paper_notebook(job: Job, out: CappedOutput) -> Reply:
    """The paper's ``<llm-code>`` path: exec the block, ``eval`` its last line again; any exception -> error."""
    code = job.code[0] if job.code else ""
    last_line = code.split("\n")[-1]
    namespace: dict = {}
    try:
        exec(code, namespace)
        text = str(eval(last_line, namespace))[:MAX_VALUE_CHARS]
    except BaseException as e:
        return Reply.failure("output" if out.overflow else error_kind(e), _detail(e))
    return Reply(value=text)


def run_paper_function(job: Job, out: CappedOutput) -> Reply:
    """The paper's TinyGSM path: exec with empty globals and separate locals (so a module-level helper or import
    is not visible inside the function), call ``simple_math_problem``; any exception -> error."""
    code = job.code[0] if job.code else ""
    local_namespace: dict = {}
    try:
        exec(code, {}, local_namespace)
        text = str(local_namespace["simple_math_problem"]())[:MAX_VALUE_CHARS]
    except BaseException as e:
        return Reply.failure("output" if out.overflow else error_kind(e), _detail(e))
    return Reply(value=text)


def _paper_compare(job: Job, pred_first: bool) -> Reply:
    from math_verify import parse, verify

    try:
        gold, pred = parse(job.gold or ""), parse(job.pred or "")
        equal = verify(pred, gold) if pred_first else verify(gold, pred)
        value = _safe_str(pred[-1]) if pred else None
        return Reply(value=value, equal=bool(equal))
    except BaseException as e:
        return Reply(error="verify", detail=_detail(e), equal=False)


def run_paper_verify(job: Job, out: CappedOutput) -> Reply:
    """The paper's comparison ``verify(parse(gold), parse(pred))`` (RL reward, eval)."""
    return _paper_compare(job, pred_first=False)


def run_paper_verify_pred_first(job: Job, out: CappedOutput) -> Reply:
    """The paper's EI test ``verify(parse(pred), parse(gold))``."""
    return _paper_compare(job, pred_first=True)


# job kind -> (role, runner). A "verify" job compares with a gold and runs only in verify workers, which never run
# model code; a "program" job runs model code and never sees a gold.
PROGRAM, VERIFY = "program", "verify"
RUNNERS: dict[str, tuple[str, Callable[[Job, CappedOutput], Reply]]] = {
    "function": (PROGRAM, run_function),
    "notebook": (PROGRAM, run_notebook),
    "verify": (VERIFY, run_verify),
    "paper_notebook": (PROGRAM, run_paper_notebook),
    "paper_function": (PROGRAM, run_paper_function),
    "paper_verify": (VERIFY, run_paper_verify),
    "paper_verify_pred_first": (VERIFY, run_paper_verify_pred_first),
}


def role_of(job: Job) -> str | None:
    """PROGRAM or VERIFY; None for an unknown kind."""
    entry = RUNNERS.get(job.kind)
    return entry[0] if entry else None


def run_job(job: Job, max_output_chars: int) -> Reply:
    """Dispatch one job with stdout/stderr captured and capped (never raises)."""
    out = CappedOutput(max_output_chars)
    sys.stdout = sys.stderr = out
    try:
        if job.kind not in RUNNERS:
            return Reply.failure("sandbox", f"unknown job kind {job.kind!r}")
        return RUNNERS[job.kind][1](job, out)
    except BaseException as e:  # e.g. OutputLimit raised while formatting a reply
        return Reply.failure("output" if out.overflow else error_kind(e), _detail(e))
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
