r"""Answer extraction: what a solution claims as its final answer, and which code to run for the code formats.

Natural language (``nl`` and ``other``), in order of preference:

1. the last complete ``\boxed{...}`` / ``\fbox{...}`` (nested braces, escaped ``\{``), or ``\boxed 5``;
2. the GSM8K final line ``#### N``;
3. "the answer is X" (the last such phrase, to the end of its line);
4. the last number in the text, only when ``last_number_fallback`` is on.

Code formats are never answered from the text: ``code_program`` and ``llm_code_blocks`` cut out the code that the
sandbox executes (the TinyGSM function is called; the last ``<llm-code>`` block's printed output or last
expression is taken), and a model-written ``<llm-code-output>`` is ignored.

Everything here is plain string scanning, linear in the input, and never raises on str input.
"""

from __future__ import annotations

import re

from echo_megatron.rewards.formats import LLM_CODE_TAG

_BOXED = ("\\boxed", "\\fbox")
_GSM8K_FINAL = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?[ \t]*([^\n]{1,200})", re.IGNORECASE)
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n")
_CODE_START = re.compile(r"^(?:def |import |from [\w.]+ import |@|class )", re.MULTILINE)
LLM_CODE_END = "</llm-code>"
MAX_ANSWER_CHARS = 1000


def _braced(text: str, start: int) -> int:
    """Index just past the brace group that opens at ``text[start] == '{'``, or -1 if it never closes."""
    depth, i, n = 0, start, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # \{ and \} are literal braces
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _boxed_at(text: str, pos: int, cmd: str) -> str | None:
    """The argument of the box command at ``pos``: ``\\boxed{...}`` or ``\\boxed X``; None if incomplete."""
    i = pos + len(cmd)
    if i < len(text) and text[i] == "{":
        end = _braced(text, i)
        return text[i + 1 : end - 1].strip() if end > 0 else None
    if i < len(text) and text[i] == " ":
        m = re.match(r" +([^\s$]+)", text[i:])
        return m.group(1) if m else None
    return None


def last_boxed(text: str) -> str | None:
    r"""The content of the last complete ``\boxed{}`` (or ``\fbox{}``), braces balanced; None if there is none."""
    positions = []
    for cmd in _BOXED:
        start = 0
        while (p := text.find(cmd, start)) >= 0:
            positions.append((p, cmd))
            start = p + len(cmd)
    for p, cmd in sorted(positions, reverse=True):
        content = _boxed_at(text, p, cmd)
        if content:
            return content
    return None


def gsm8k_final(text: str) -> str | None:
    """The GSM8K answer after the last ``#### ``, or None."""
    found = _GSM8K_FINAL.findall(text)
    if not found:
        return None
    return found[-1].strip() or None


def answer_phrase(text: str) -> str | None:
    """What follows the last "answer is", to the end of the line, trailing period removed; or None."""
    found = _ANSWER_IS.findall(text)
    if not found:
        return None
    ans = found[-1].strip().rstrip(".").strip()
    return ans.strip("$").strip() or None


def last_number(text: str) -> str | None:
    """The last number in the text (``1,000``, ``-3.5``, ``2e5``), or None."""
    found = NUMBER.findall(text)
    return found[-1] if found else None


def nl_answer(text: str, last_number_fallback: bool = True) -> str | None:
    """The final answer of a natural-language solution (rule order in the module docstring)."""
    for rule in (last_boxed, gsm8k_final, answer_phrase):
        ans = rule(text)
        if ans:
            return ans[:MAX_ANSWER_CHARS]
    return last_number(text) if last_number_fallback else None


def code_program(text: str) -> str:
    """The program of a ``code`` solution: the fenced block holding the function, else the text from its first
    code line (``def``/``import``/``from``/decorator/``class``). Trailing prose is left for the sandbox's
    longest-compilable-prefix rule."""
    fences = list(_FENCE.finditer(text))
    for m in fences:
        end = text.find("```", m.end())
        body = text[m.end() : end if end >= 0 else len(text)]
        if "def " in body:
            return body
    m = _CODE_START.search(text)
    return text[m.start() :] if m else text


def llm_code_blocks(text: str) -> list[str]:
    """The bodies of every ``<llm-code>`` block in order; the last may be unterminated (truncated generation)."""
    blocks, start = [], 0
    while (p := text.find(LLM_CODE_TAG, start)) >= 0:
        body_start = p + len(LLM_CODE_TAG)
        end = text.find(LLM_CODE_END, body_start)
        nxt = text.find(LLM_CODE_TAG, body_start)
        if end < 0 or (0 <= nxt < end):  # unterminated: runs to the next block or the end
            end = nxt if nxt >= 0 else len(text)
        blocks.append(text[body_start:end].strip("\n"))
        start = end
    return blocks


def gold_answer(reference: object, task: str) -> str | None:
    r"""The gold answer inside a reference: a bare answer, a GSM8K solution (``#### N``) or a solution with
    ``\boxed{}``. Numbers (AMC stores floats) are turned into strings. None if empty."""
    if reference is None:
        return None
    ref = reference if isinstance(reference, str) else str(reference)
    if "####" in ref:
        return gsm8k_final(ref)
    if "\\boxed" in ref or "\\fbox" in ref:
        return last_boxed(ref)
    ref = ref.strip()
    return ref or None
