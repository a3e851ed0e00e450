"""``echo-megatron score IN.jsonl --task gsm8k|math|testbed|aime|amc [--out OUT.jsonl]``.

Reads lines ``{"completion": ..., "answer": ...}`` (other fields are carried through), scores them with
``echo_megatron.rewards.score`` over one sandbox pool, and writes one result line per input line, in order, with
``reward``, ``correct``, ``format``, ``extracted``, ``error``, ``detail`` and ``elapsed`` added (an input field of
the same name is kept as ``input_<name>``). Then prints accuracy per format. Without ``--out`` the result lines
go to stdout and the summary to stderr.

``--verifier strict|paper`` (``rewards.verifier``) and ``--classifier strict|paper`` (``formats.classifier``;
``paper`` needs ``--verifier paper``) choose the rules; ``--purpose reward|eval|ei`` the paper verifier's call
path (RL reward, ``run_inference_all.py``, ``train_ei.py``; see rewards/paper.py), and ``--prompt-field`` the
field holding the prompt text, which the paper's RL reward reads in front of the completion:

    echo-megatron score tests/paper_verifier/cases.jsonl --task gsm8k --answer-field gold --verifier paper \
        --classifier paper --prompt-field question --out OUT.jsonl

Bad input never stops it and never produces a traceback:

- a line that is not UTF-8, not JSON (``NaN``/``Infinity`` and numbers past float64 are not JSON), nested too
  deeply, longer than ``MAX_LINE_BYTES``, not an object, without one of the two fields, whose completion is not a
  string or whose answer is neither a string nor a number (AIME and AMC golds are numbers; a number is compared as
  the number it is, never a boolean or null turned into text) gets a result line with ``error: "bad_input"``
  naming the file, the line number and the problem (and a warning on stderr);
- a bad argument (``--timeout nan``, ``--workers 0``, ``--out`` a folder or in a missing one, an unreadable
  input) is one line on stderr and exit status 2, before any worker starts;
- ``--out`` is written to a temporary file next to it and renamed over it at the end: an existing ``--out`` is
  never truncated or emptied, whatever fails (a sandbox that cannot start, an interrupt).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import IO

from echo_megatron.errors import UserError
from echo_megatron.rewards import FORMATS, TASKS, VERIFIERS, SandboxPolicy, SandboxPool, score
from echo_megatron.rewards.paper import CLASSIFIERS, PURPOSES

RESULT_FIELDS = ("reward", "correct", "format", "extracted", "error", "detail", "elapsed")
MAX_LINE_BYTES = 16 << 20
MAX_BATCH = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.jsonl", help='lines {"completion": ..., "answer": ...}')
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="how answers are compared")
    parser.add_argument("--out", metavar="OUT.jsonl", help="result lines (default: stdout)")
    parser.add_argument(
        "--completion-field", default="completion", help="field holding the generated solution"
    )
    parser.add_argument("--answer-field", default="answer", help="field holding the reference answer")
    parser.add_argument(
        "--prompt-field",
        default=None,
        help="field holding the prompt text (read by --verifier paper's reward)",
    )
    parser.add_argument(
        "--verifier", default="strict", help=f"how answers are found ({' | '.join(VERIFIERS)})"
    )
    parser.add_argument(
        "--classifier", default="strict", help=f"how formats are labelled ({' | '.join(CLASSIFIERS)})"
    )
    parser.add_argument(
        "--purpose", default="reward", help=f"the paper verifier's call path ({' | '.join(PURPOSES)})"
    )
    parser.add_argument("--workers", default="2", help="sandbox workers (default 2)")
    parser.add_argument("--timeout", default="3", help="seconds per program (default 3)")
    parser.add_argument(
        "--no-last-number-fallback", action="store_true", help="no answer when there is no final answer"
    )
    parser.add_argument("--batch", default="512", help="lines scored together (default 512)")
    parser.add_argument(
        "--no-namespaces", action="store_true", help="no namespaces (needs --sandbox-unsafe-ok)"
    )
    parser.add_argument(
        "--no-seccomp", action="store_true", help="no seccomp filter (needs --sandbox-unsafe-ok)"
    )
    parser.add_argument(
        "--sandbox-unsafe-ok", action="store_true", help="run programs even where a sandbox layer is missing"
    )


def _number(flag: str, text: str, kind: type) -> int | float:
    """``text`` as a finite ``kind``, else a one-line UserError naming the flag (bounds: ``SandboxPolicy``)."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise UserError(f"{flag} {text!r}: not a finite {'integer' if kind is int else 'number'}")
    return value


def _json_type(v: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(v), "an array" if isinstance(v, list) else "an object")


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _parse_line(
    raw: bytes, where: str, cfield: str, afield: str, pfield: str | None = None
) -> tuple[dict, str | None]:
    """(the row, None) or ({}, a message naming the file, line and problem)."""
    if not raw.strip():
        return {}, f"{where}: empty line"
    try:
        row = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError as e:
        return {}, f"{where}: not UTF-8 ({e.reason} at byte {e.start})"
    except RecursionError:
        return {}, f"{where}: JSON nested too deeply"
    except ValueError as e:
        return {}, f"{where}: not JSON ({str(e)[:200]})"
    if not isinstance(row, dict):
        return {}, f"{where}: {_json_type(row)}, not a JSON object"
    for f, kinds in ((cfield, "a string"), (afield, "a string or a number")):
        if f not in row:
            return {}, f"{where}: missing field {f!r}"
        value = row[f]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (isinstance(value, str) or (number and f == afield)):
            return {}, f"{where}: field {f!r} is {_json_type(value)}, not {kinds}"
    if pfield is not None and not isinstance(row.get(pfield), str):
        what = "missing" if pfield not in row else f"{_json_type(row[pfield])}, not a string"
        return {}, f"{where}: field {pfield!r} is {what}"
    return row, None


def _reference(answer: str | int | float) -> str:
    """The answer as text: a JSON number exactly as Python reads it (``27.0`` stays a float's shortest form)."""
    return answer if isinstance(answer, str) else repr(answer)


def _lines(f: IO[bytes], path: str) -> Iterator[tuple[str, bytes | None]]:
    """(``path:N``, the line) for each line; None for a line longer than MAX_LINE_BYTES (the rest is skipped)."""
    lineno = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            raw = None
        yield f"{path}:{lineno}", raw


def _merge(row: dict, result: dict) -> dict:
    out = dict(row)
    for k, v in result.items():
        if k in out and out[k] != v:
            out[f"input_{k}"] = out[k]
        out[k] = v
    return out


def _summary(rows: list[dict], task: str, stream: IO[str]) -> None:
    n = len(rows)
    scored = [r for r in rows if r.get("error") != "bad_input"]
    counts = Counter(r["format"] for r in scored)
    right = Counter(r["format"] for r in scored if r["correct"])
    print(f"scored {n} lines (task {task}): accuracy {sum(right.values()) / max(n, 1):.2%}", file=stream)
    print(f"{'format':>12} {'count':>7} {'share':>7} {'accuracy':>9}", file=stream)
    for fmt in FORMATS:
        if counts[fmt]:
            share, acc = counts[fmt] / n, right[fmt] / counts[fmt]
            print(f"{fmt:>12} {counts[fmt]:>7} {share:>7.1%} {acc:>9.1%}", file=stream)
    bad = n - len(scored)
    if bad:
        print(f"{'bad input':>12} {bad:>7} {bad / n:>7.1%}", file=stream)
    errors = Counter(r["error"] for r in rows if r.get("error"))
    if errors:
        print("errors: " + ", ".join(f"{k} {v}" for k, v in errors.most_common()), file=stream)


def _open_out(path: str) -> tuple[IO[str], str]:
    """A temporary file next to ``path`` (renamed over it at the end), or UserError naming the problem."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"--out {path}: is a folder")
    if not os.path.isdir(folder):
        raise UserError(f"--out {path}: no folder {folder}")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"--out {path}: cannot write in {folder} ({e.strerror})") from e
    return os.fdopen(fd, "w", encoding="utf-8"), tmp


def _batches(f: IO[bytes], args: argparse.Namespace, size: int) -> Iterator[list[tuple[dict, str | None]]]:
    batch = []
    for where, raw in _lines(f, args.input):
        if raw is None:
            batch.append(({}, f"{where}: line longer than {MAX_LINE_BYTES} bytes"))
        else:
            batch.append(_parse_line(raw, where, args.completion_field, args.answer_field, args.prompt_field))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _choices(args: argparse.Namespace) -> None:
    """--verifier, --classifier and --purpose are known names (else one line, exit status 2)."""
    for flag, value, known in (
        ("--verifier", args.verifier, tuple(VERIFIERS)),
        ("--classifier", args.classifier, CLASSIFIERS),
        ("--purpose", args.purpose, PURPOSES),
    ):
        if value not in known:
            raise UserError(f"{flag} {value!r}: unknown ({' | '.join(known)})")
    if args.classifier == "paper" and args.verifier != "paper":
        raise UserError(
            "--classifier paper needs --verifier paper (the paper's label depends on its code run)"
        )


def run(args: argparse.Namespace) -> int:
    _choices(args)
    batch_size = int(_number("--batch", args.batch, int))
    if not 1 <= batch_size <= MAX_BATCH:
        raise UserError(f"--batch {args.batch!r}: must be in [1, {MAX_BATCH}]")
    try:
        policy = SandboxPolicy(
            workers=int(_number("--workers", args.workers, int)),
            timeout_s=float(_number("--timeout", args.timeout, float)),
            namespaces=not args.no_namespaces,
            seccomp=not args.no_seccomp,
            unsafe_ok=args.sandbox_unsafe_ok,
        )
    except ValueError as e:  # out of the policy's bounds (--workers, --timeout)
        raise UserError(str(e)) from e
    try:
        f = open(args.input, "rb")
    except OSError as e:
        raise UserError(f"cannot read {args.input}: {e.strerror}") from e
    cfg = argparse.Namespace(last_number_fallback=not args.no_last_number_fallback, verifier=args.verifier)
    try:
        out_stream, tmp = _open_out(args.out) if args.out else (sys.stdout, None)
    except UserError:
        f.close()
        raise
    written: list[dict] = []
    try:
        with f, SandboxPool(policy) as pool:
            for parsed in _batches(f, args, batch_size):
                ok = [row for row, err in parsed if err is None]
                comps = [r[args.completion_field] for r in ok]
                refs = [_reference(r[args.answer_field]) for r in ok]
                prompts = [r[args.prompt_field] for r in ok] if args.prompt_field else None
                results = iter(
                    score(comps, refs, args.task, cfg, pool, prompts, args.purpose, args.classifier)
                )
                for row, err in parsed:
                    if err is None:
                        out = _merge(row, next(results).to_dict())
                    else:
                        print(f"echo-megatron score: {err}", file=sys.stderr)
                        out = {"reward": 0.0, "correct": False, "format": None, "extracted": None}
                        out |= {"error": "bad_input", "detail": err, "elapsed": 0.0}
                    out_stream.write(json.dumps(out, allow_nan=False) + "\n")
                    written.append({k: out.get(k) for k in RESULT_FIELDS})
                out_stream.flush()
        if tmp is not None:
            out_stream.close()
            os.replace(tmp, args.out)
            tmp = None
    finally:
        if tmp is not None:
            out_stream.close()
            os.unlink(tmp)
    _summary(written, args.task, sys.stdout if args.out else sys.stderr)
    return 0
