r"""Answer extraction: what a solution claims as its final answer, and which code to run for the code formats.

Natural language (``nl`` and ``other``), in order of preference:

1. the last complete ``\boxed{...}`` / ``\fbox{...}`` (nested braces, escaped ``\{``), or ``\boxed 5``;
2. the GSM8K final line ``#### N``;
3. "the answer is X" (the last such phrase, to the end of its line);
4. the last number in the text, only when ``last_number_fallback`` is on.

Code formats are never answered from the text: ``code_program`` and ``llm_code_blocks`` cut out the code that the
sandbox executes (the TinyGSM function is called; the last ``<llm-code>`` block's printed output or last
expression is taken), and a model-written ``<llm-code-output>`` is ignored.

Everything here is plain string scanning, linear in the input (each brace, tag or fence is looked at a bounded
number of times; no regular expression can backtrack over a run it already matched), and never raises on str
input. ``score`` does not parse a completion longer than ``MAX_COMPLETION_CHARS`` (error kind ``too_long``): a
2,048-token generation is ~10 K characters.
"""

from __future__ import annotations

import bisect
import re

from echo_megatron.rewards.formats import LLM_CODE_TAG

_BOXED = ("\\boxed", "\\fbox")
_GSM8K_FINAL = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?[ \t]*([^\n]{1,200})", re.IGNORECASE)
NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")
_FENCE = re.compile(r"```[ \t]*(?:(?:python|py|Python)[ \t]*)?\n")
_CODE_START = re.compile(r"^(?:def |import |from [\w.]+ import |@|class )", re.MULTILINE)
_BRACES = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character, or a brace
_BOX_WORD = re.compile(r" +([^\s$]+)")
LLM_CODE_END = "</llm-code>"
MAX_ANSWER_CHARS = 1000
MAX_COMPLETION_CHARS = 1 << 16


def brace_pairs(text: str) -> dict[int, int]:
    """For each ``{`` that is closed, its index -> the index just past its ``}``; ``\\{`` and ``\\}`` are
    literal braces. One pass with a stack."""
    pairs, stack = {}, []
    for m in _BRACES.finditer(text):
        ch = m.group()
        if ch == "{":
            stack.append(m.start())
        elif ch == "}" and stack:
            pairs[stack.pop()] = m.end()
    return pairs


def _positions(text: str, needle: str) -> list[int]:
    found, start = [], 0
    while (p := text.find(needle, start)) >= 0:
        found.append(p)
        start = p + len(needle)
    return found


def last_boxed(text: str) -> str | None:
    r"""The content of the last complete ``\boxed{}`` (or ``\fbox{}``), braces balanced, or of ``\boxed X``;
    None if there is none."""
    positions = sorted(((p, cmd) for cmd in _BOXED for p in _positions(text, cmd)), reverse=True)
    pairs = brace_pairs(text) if positions else {}
    for p, cmd in positions:
        i = p + len(cmd)
        content = None
        if text.startswith("{", i) and i in pairs:
            content = text[i + 1 : pairs[i] - 1].strip()
        elif text.startswith(" ", i):
            m = _BOX_WORD.match(text, i)
            content = m.group(1) if m else None
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
    """The bodies of every ``<llm-code>`` block in order; the last may be unterminated (truncated generation).
    An unterminated block runs to the next ``<llm-code>`` or the end."""
    tags, ends = _positions(text, LLM_CODE_TAG), _positions(text, LLM_CODE_END)
    blocks, start = [], 0
    for k, p in enumerate(tags):
        if p < start:
            continue  # inside the previous block
        body_start = p + len(LLM_CODE_TAG)
        j = bisect.bisect_left(ends, body_start)
        nxt = tags[k + 1] if k + 1 < len(tags) else len(text)
        end = ends[j] if j < len(ends) and ends[j] < nxt else nxt
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
