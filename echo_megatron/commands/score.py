"""``echo-megatron score IN.jsonl --task gsm8k|math|testbed|aime|amc [--out OUT.jsonl]``.

Reads lines ``{"completion": ..., "answer": ...}`` (other fields are carried through), scores them with
``echo_megatron.rewards.score`` over one sandbox pool, and writes one result line per input line, in order, with
``reward``, ``correct``, ``format``, ``extracted``, ``error``, ``detail`` and ``elapsed`` added (an input field of
the same name is kept as ``input_<name>``). Then prints accuracy per format. Without ``--out`` the result lines
go to stdout and the summary to stderr.

Hostile input never stops it: a line that is not a JSON object, lacks a field, or is not UTF-8 gets a result line
with ``error: "bad_input"`` naming the line and the problem (and a warning on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import IO

from echo_megatron.rewards import FORMATS, TASKS, SandboxPool, score

RESULT_FIELDS = ("reward", "correct", "format", "extracted", "error", "detail", "elapsed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN.jsonl", help='lines {"completion": ..., "answer": ...}')
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="how answers are compared")
    parser.add_argument("--out", metavar="OUT.jsonl", help="result lines (default: stdout)")
    parser.add_argument(
        "--completion-field", default="completion", help="field holding the generated solution"
    )
    parser.add_argument("--answer-field", default="answer", help="field holding the reference answer")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers (default 2)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per program (default 3)")
    parser.add_argument(
        "--no-last-number-fallback", action="store_true", help="no answer when there is no final answer"
    )
    parser.add_argument("--batch", type=int, default=512, help="lines scored together (default 512)")
    parser.add_argument(
        "--no-namespaces", action="store_true", help="no network/mount namespaces (where they cannot be made)"
    )
    parser.add_argument("--no-seccomp", action="store_true", help="no seccomp filter (where it cannot load)")


def _parse_line(raw: bytes, lineno: int, path: str, cfield: str, afield: str) -> tuple[dict, str | None]:
    """(the row, None) or ({}, a message naming the file, line and problem)."""
    where = f"{path}:{lineno}"
    if not raw.strip():
        return {}, f"{where}: empty line"
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return {}, f"{where}: not UTF-8 ({e.reason} at byte {e.start})"
    except ValueError as e:
        return {}, f"{where}: not JSON ({e})"
    if not isinstance(row, dict):
        return {}, f"{where}: a JSON {type(row).__name__}, not an object"
    for f in (cfield, afield):
        if f not in row:
            return {}, f"{where}: missing field {f!r}"
    return row, None


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


def run(args: argparse.Namespace) -> int:
    try:
        with open(args.input, "rb") as f:
            raw_lines = f.read().splitlines()
    except OSError as e:
        print(f"echo-megatron score: cannot read {args.input}: {e.strerror}", file=sys.stderr)
        return 2
    if args.workers < 1 or args.timeout <= 0 or args.batch < 1:
        print("echo-megatron score: --workers and --batch must be >= 1, --timeout > 0", file=sys.stderr)
        return 2
    cfg = {"last_number_fallback": not args.no_last_number_fallback}
    cfg = argparse.Namespace(**cfg)
    out_stream = open(args.out, "w") if args.out else sys.stdout
    summary_stream = sys.stdout if args.out else sys.stderr
    written: list[dict] = []
    try:
        with SandboxPool(
            workers=args.workers,
            timeout_s=args.timeout,
            namespaces=not args.no_namespaces,
            seccomp=not args.no_seccomp,
        ) as pool:
            for start in range(0, len(raw_lines), args.batch):
                chunk = raw_lines[start : start + args.batch]
                parsed = [
                    _parse_line(raw, start + k + 1, args.input, args.completion_field, args.answer_field)
                    for k, raw in enumerate(chunk)
                ]
                ok = [row for row, err in parsed if err is None]
                results = iter(
                    score(
                        [row[args.completion_field] for row in ok],
                        [row[args.answer_field] for row in ok],
                        args.task,
                        cfg,
                        pool,
                    )
                )
                for row, err in parsed:
                    if err is None:
                        out = _merge(row, next(results).to_dict())
                    else:
                        print(f"echo-megatron score: {err}", file=sys.stderr)
                        out = {"reward": 0.0, "correct": False, "format": None, "extracted": None}
                        out |= {"error": "bad_input", "detail": err, "elapsed": 0.0}
                    out_stream.write(json.dumps(out) + "\n")
                    written.append({k: out.get(k) for k in RESULT_FIELDS})
                out_stream.flush()
    finally:
        if args.out:
            out_stream.close()
    _summary(written, args.task, summary_stream)
    return 0
