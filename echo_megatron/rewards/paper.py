r"""The paper's verifier rules (``rewards.verifier: paper``, ``formats.classifier: paper``), as pure functions.

Read from ``openrlhf/utils/math_verifier.py`` and ``inference/run_inference_all.py`` of rosieyzh/openrlhf-pretrain
@ 34d239d (the Echo Chamber paper's code); none of its code is copied. ``verifiers.PaperVerifier`` drives these
rules through the sandbox; ``runner.py`` holds what the sandboxed children do (``paper_notebook``,
``paper_function``, ``paper_verify``). The decision procedure of ``get_llm_answer(text)``:

1. ``'<llm-code>' in text``: the label becomes ``llm-code``. The FIRST closed ``<llm-code>...</llm-code>`` block
   (the non-greedy regex of the paper: ``first_llm_code_block``), stripped, is executed with a fresh globals
   dict, then its last line is ``eval``-ed again in that namespace (a last line with side effects runs twice);
   ``str`` of the value is the code output. Any exception, a statement as last line, no closed block -> none.
2. else, or when step 1 gave none, ``'def' in text`` (a substring anywhere: "define", "defective", the RL
   question): the label becomes ``tinygsm-code``; ``'def' + text.split('\ndef')[-1]`` (``tinygsm_program``) is
   executed with empty globals and a separate locals dict, and ``simple_math_problem()`` is called; ``str`` of
   its result is the code output. Any exception (SystemExit too), a missing function, the time limit -> none.
3. the prediction is ``math_verify.parse`` of the code output when there is one (the string ``'None'`` of a
   ``print`` last line or a print-only function is one: it parses to nothing and scores 0, no fallback), else
   of the whole text (``\boxed``, "answer is", the last number, ...); the label stays as set (``text`` if neither
   marker occurred).

The three call paths (``PURPOSES``) differ in the text and the comparison:

    reward  RL ``reward_func``: text = the decoded prompt + response with ``</s>`` removed (``paper_text``: the
            question is part of the text searched for markers and parsed by the fallback), ``verify(gold, pred)``
    eval    ``run_inference_all.py``: the completion alone, ``verify(gold, pred)``; an exception in parsing or
            verifying scores 0 and relabels the sample ``text``
    ei      ``train_ei.py`` ``verify_llm_answer``: the completion alone, ``verify(pred, gold)`` (argument order
            swapped); an exception is wrong

The gold is ``parse(str(label))``: the paper passes GSM8K's whole answer field (its last number) and MATH's whole
solution (its ``\boxed{}``). echo-megatron's tasks hand over the extracted final answer, so ``paper_gold``
boxes a bare LaTeX answer: ``parse("\boxed{3\sqrt{13}}")`` is ``parse`` of the solution, where the bare
``parse("3\sqrt{13}")`` would read ``3`` (a plain number stays bare: ``parse("0.5")`` is what ``#### 0.5`` gives,
``\boxed{0.5}`` would become the rational 1/2).

Deliberate differences (the sandbox): programs run in a fresh sandboxed child each (the paper: in-process, state
shared between calls), under the sandbox's wall-clock and CPU limits (``rewards.timeout_s``, the paper's 3 s
alarm, which does not cover the ``eval`` of the last line), output cap and system-call allow list (a program that
writes a file fails here and falls back to the text); a code output longer than ``protocol.MAX_VALUE_CHARS``
is cut before it is parsed.
"""

from __future__ import annotations

import re
from typing import Literal

from echo_megatron.rewards.formats import CODE, CODE_INTERP, NL

Purpose = Literal["reward", "eval", "ei"]
PURPOSES: tuple[str, ...] = ("reward", "eval", "ei")
CLASSIFIERS: tuple[str, ...] = ("strict", "paper")

LLM_CODE_OPEN, LLM_CODE_CLOSE = "<llm-code>", "</llm-code>"
EOS = "</s>"  # Llama-2's end of sequence, which the paper's reward_func removes from the decoded query
# the paper's response_type labels -> echo-megatron's format labels (formats.py)
LLM_CODE, TINYGSM_CODE, TEXT = "llm-code", "tinygsm-code", "text"
LABELS: dict[str, str] = {LLM_CODE: CODE_INTERP, TINYGSM_CODE: CODE, TEXT: NL}
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def paper_text(completion: str, prompt: str | None, purpose: str) -> str:
    """The text the paper's verifier reads: for ``reward``, the prompt + completion with every ``</s>`` removed
    (``reward_func``'s ``query.replace('</s>', '')``); for ``eval`` and ``ei``, the completion as generated."""
    if purpose == "reward":
        return ((prompt or "") + completion).replace(EOS, "")
    return completion


def first_llm_code_block(text: str) -> str | None:
    """The stripped body of the first closed ``<llm-code>...</llm-code>`` block, or None.

    The same match as ``re.search(r'<llm-code>(.*?)</llm-code>', text, re.DOTALL)``, in linear time: the leftmost
    match opens at the first ``<llm-code>`` (if that one has no closing tag after it, no later one has) and ends
    at the first ``</llm-code>`` after it."""
    start = text.find(LLM_CODE_OPEN)
    if start < 0:
        return None
    end = text.find(LLM_CODE_CLOSE, start + len(LLM_CODE_OPEN))
    if end < 0:
        return None
    return text[start + len(LLM_CODE_OPEN) : end].strip()


def tinygsm_program(text: str) -> str:
    """What the paper executes for TinyGSM code: ``'def'`` + the text after the last ``'\\ndef'`` (the whole
    text when there is none, which then rarely compiles)."""
    return "def" + text.split("\ndef")[-1]


def paper_gold(reference: object) -> str:
    r"""The gold text to ``parse``: a whole solution (it has ``####`` or ``\boxed``) or a plain number as given,
    as the paper passes its labels (``parse`` reads GSM8K's ``#### N`` as the number N); any other bare final
    answer (a MATH answer echo-megatron's tasks extract from the solution's box) inside ``\boxed{}``, where
    ``parse`` finds it as it finds the solution's box."""
    text = str(reference)
    if "####" in text or "\\boxed" in text or _PLAIN_NUMBER.fullmatch(text.strip()):
        return text
    return "\\boxed{" + text + "}"


def format_label(label: str) -> str:
    """echo-megatron's format label (``code_interp``, ``code``, ``nl``) of a paper ``response_type``."""
    return LABELS[label]
