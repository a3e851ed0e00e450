"""Record the paper's own reward decisions on cases.jsonl: the oracle for ``rewards.verifier: paper``.

Not part of the test suite (CI cannot reach the paper's repository). Run once, by hand, as README.md says; the
recorded ``expected.jsonl`` is what the tests compare against.

The verifier is imported at run time from a checkout of rosieyzh/openrlhf-pretrain (``--paper-repo``); none of
its code is copied here. The file must be byte-identical to ``openrlhf/utils/math_verifier.py`` at commit
PAPER_COMMIT (checked by its git blob hash), and math-verify must be the version the paper's environment
resolved (MATH_VERIFY_VERSION: the newest release between 2025-02-27 and 2025-07-02, the months of the paper's
runs; its requirements.txt leaves it unpinned). No module is stubbed: the checkout's imports (torch, numpy,
tqdm, jsonlines, math_verify) must be installed.

The paper's verifier ``exec``s the completions' code in-process, unsandboxed. Every case therefore runs in a
forked child whose working directory is a fresh temporary directory and whose output is discarded; run this
only on the committed table.

For each case it records three call paths of the paper's code:
  reward     ``reward_func([question + completion + "</s>"], [question], [gold])`` as OpenRLHF's experience
             maker calls it in RL: the query is the decoded prompt + response (with the EOS token when the
             generation ended; ``finished: false`` marks a generation cut at the token limit).
  eval_acc   ``inference/run_inference_all.py``: ``get_llm_answer(completion)`` (the generated text only), then
             ``verify(parse(str(gold)), prediction)``; an exception scores 0 with format "text".
  ei_correct ``openrlhf/cli/train_ei.py``: ``verify_llm_answer(completion, str(gold))`` (prediction first).
plus the format label of each path, what was extracted, what the code paths returned, and the label the issue
text's one-line rule would give (``format_issue_rule``), for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import sys
import tempfile
import time
from types import ModuleType

PAPER_REPO = "rosieyzh/openrlhf-pretrain"
PAPER_COMMIT = "34d239dabd076363b2f666dc6f0d351ec0f5be0b"
VERIFIER_PATH = "openrlhf/utils/math_verifier.py"
VERIFIER_BLOB = "5d9f3c716c35f5f049459d83576cb3fad7cc79f2"  # git ls-tree PAPER_COMMIT VERIFIER_PATH
MATH_VERIFY_VERSION = "0.7.0"
EOS = "</s>"  # Llama-2's EOS as the decoded RL query carries it; reward_func strips it
CASE_LIMIT_S = 60.0  # wall-clock cap per case (the paper's own code alarm is 3 s per program)
HERE = os.path.dirname(os.path.abspath(__file__))


def git_blob_sha1(path: str) -> str:
    """The git object id of a file's bytes (what ``git hash-object`` prints)."""
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def load_paper_verifier(repo: str) -> ModuleType:
    path = os.path.join(repo, VERIFIER_PATH)
    if not os.path.isfile(path):
        sys.exit(f"{path}: not found (--paper-repo must be a checkout of {PAPER_REPO})")
    blob = git_blob_sha1(path)
    if blob != VERIFIER_BLOB:
        sys.exit(f"{path}: blob {blob} is not the file at {PAPER_REPO}@{PAPER_COMMIT} ({VERIFIER_BLOB})")
    spec = importlib.util.spec_from_file_location("paper_math_verifier", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def issue_rule_format(text: str) -> str:
    """The labelling rule as issue 19 words it (for comparison with what the paper's code returns)."""
    if "<llm-code>" in text:
        return "llm-code"
    return "tinygsm-code" if "def" in text else "text"


def _strs(values) -> list[str] | None:
    return None if values is None else [str(v) for v in values]


def evaluate(verifier: ModuleType, case: dict) -> dict:
    """Every recorded field of one case (runs the completion's code through the paper's functions)."""
    from math_verify import parse, verify

    question, completion, gold = case["question"], case["completion"], case["gold"]
    eos = EOS if case.get("finished", True) else ""
    query = question + completion + eos
    out: dict = {"id": case["id"], "task": case["task"]}

    out["reward"] = float(verifier.reward_func([query], [question], [gold])[0])
    out["reward_completion_only"] = float(verifier.reward_func([completion + eos], [question], [gold])[0])
    try:
        out["format_rl"] = verifier.get_llm_answer(query.replace(EOS, ""))[1]
    except Exception as e:  # recorded, as the paper's reward_func would swallow it
        out["format_rl"] = f"raised {type(e).__name__}"

    try:  # inference/run_inference_all.py, greedy branch
        prediction, response_type = verifier.get_llm_answer(completion)
        acc = verify(parse(str(gold)), prediction) * 1.0
    except BaseException:  # run_inference_all.py: bare except -> acc 0, "text"
        prediction, response_type, acc = None, "text", 0.0
    out["eval_acc"] = float(acc)
    out["format"] = response_type
    out["extracted"] = _strs(prediction)

    try:  # openrlhf/cli/train_ei.py generate_ei_dataset
        out["ei_correct"] = bool(verifier.verify_llm_answer(completion, str(gold)))
    except BaseException:  # train_ei.py: bare except -> 0
        out["ei_correct"] = False

    out["llm_code_output"] = verifier.execute_llm_code(completion) if "<llm-code>" in completion else None
    out["tinygsm_code_output"] = verifier.execute_tinygsm_code(completion) if "def" in completion else None
    out["gold_parsed"] = _strs(parse(str(gold)))
    out["format_issue_rule"] = issue_rule_format(completion)
    return out


def _child(verifier: ModuleType, case: dict, conn) -> None:
    with tempfile.TemporaryDirectory(prefix="paper_verifier_") as tmp:
        os.chdir(tmp)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            try:
                result = evaluate(verifier, case)
            except BaseException as e:  # reported, never silently dropped
                result = {"id": case["id"], "error": f"{type(e).__name__}: {e}"}
        conn.send(result)
        conn.close()


def run_case(verifier: ModuleType, case: dict) -> dict:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(verifier, case, child))
    proc.start()
    child.close()
    result = parent.recv() if parent.poll(CASE_LIMIT_S) else {"id": case["id"], "error": "case timed out"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return result


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("math-verify", "latex2sympy2_extended", "sympy", "antlr4-python3-runtime", "torch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--paper-repo", required=True, help=f"a checkout of {PAPER_REPO} at {PAPER_COMMIT[:12]}"
    )
    parser.add_argument("--cases", default=os.path.join(HERE, "cases.jsonl"))
    parser.add_argument("--out", default=os.path.join(HERE, "expected.jsonl"))
    parser.add_argument(
        "--any-math-verify",
        action="store_true",
        help=f"record with the installed math-verify even if it is not {MATH_VERIFY_VERSION} (for comparisons; "
        "never for expected.jsonl)",
    )
    args = parser.parse_args()

    env = versions()
    if env["math-verify"] != MATH_VERIFY_VERSION and not args.any_math_verify:
        sys.exit(f"math-verify {env['math-verify']} installed; the reference needs {MATH_VERIFY_VERSION}")
    verifier = load_paper_verifier(os.path.abspath(args.paper_repo))
    with open(args.cases, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f if line.strip()]

    start = time.time()
    results = [run_case(verifier, case) for case in cases]
    errors = [r for r in results if "error" in r]
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")
    os.replace(tmp, args.out)
    print(f"{PAPER_REPO}@{PAPER_COMMIT} {VERIFIER_PATH} (blob {VERIFIER_BLOB})")
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    print(f"{len(results)} cases -> {args.out} in {time.time() - start:.0f} s; {len(errors)} errors")
    for r in errors:
        print(f"  {r['id']}: {r['error']}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
