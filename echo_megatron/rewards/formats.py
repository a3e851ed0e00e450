"""The output-format labels used everywhere (testbed, rewards, RL metrics, eval, reports) and the classifier.

The labels are fixed names; ``classify_format`` maps one generated solution (the text after the prompt) to one of
them. It only looks at the text (no execution), runs in linear time and never raises, so it is safe on truncated
or garbled generations from tiny models.
"""

from __future__ import annotations

import re

CODE = "code"  # TinyGSM-style Python function: def simple_math_problem(): ... return result
CODE_INTERP = "code_interp"  # OpenMathInstruct-1 style: <llm-code> ... </llm-code> + <llm-code-output>
NL = "nl"  # OpenMathInstruct-2 style natural language ending in \boxed{} or a final answer
OTHER = "other"
EMPTY = "empty"

FORMATS: tuple[str, ...] = (CODE, CODE_INTERP, NL, OTHER, EMPTY)
SOLUTION_FORMATS: tuple[str, ...] = (CODE, CODE_INTERP, NL)

# --- structural markers (each regex is linear: no nested quantifiers) --------------------------------------
LLM_CODE_TAG = "<llm-code>"
# OMI1 opens with an announcement such as "Let's solve this problem using Python code." or "Let's use Python's
# sympy library"; it marks a code-interpreter solution even when the generation stops before the first tag.
_CI_INTRO = re.compile(r"\b(?:use|using)\s+python\b", re.IGNORECASE)
_CI_INTRO_WINDOW = 200  # the announcement must start within the first 200 characters
TINYGSM_DEF = "def simple_math_problem"
# A solution that *opens* with a Python function (optionally after a ``` fence line) is code whatever the name.
_OPENS_WITH_DEF = re.compile(r"\s*(?:```[ \t]*(?:(?:python|py)[ \t]*)?\n\s*)?def[ \t]+[A-Za-z_]\w*[ \t]*\(")
_NL_FINAL = re.compile(r"\\boxed|\\fbox|####|\banswer\s+is\b", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]{2,}")
_TAG = re.compile(r"</?[\w-]{1,40}>")  # markup such as <llm-code-output> is not prose
_PY_STATEMENT = re.compile(
    r"\s*(?:import\s|from\s+[\w.]+\s+import\s|[A-Za-z_][\w.\[\]'\"]*\s*[-+*/]?=[^=]|print\(|return\b|"
    r"(?:for|while|if|elif|else|try|except|with|class)\b[^\n]*:\s*$|[A-Za-z_][\w.]*\([^\n]*\)\s*$|#)"
)
_PROSE_WINDOW = 4000  # characters looked at by the prose test
_PROSE_MIN_WORDS = 2
_PROSE_MIN_LETTER_SHARE = 0.3


def code_interp_marker(text: str) -> int:
    """Position of the first code-interpreter marker (``<llm-code>`` or an OMI1 "use Python" intro), or -1."""
    pos = text.find(LLM_CODE_TAG)
    m = _CI_INTRO.search(text, 0, _CI_INTRO_WINDOW + 40)
    if m and m.start() < _CI_INTRO_WINDOW and (pos < 0 or m.start() < pos):
        pos = m.start()
    return pos


def code_marker(text: str) -> int:
    """Position of the first TinyGSM-code marker, or -1.

    Markers: ``def simple_math_problem`` anywhere; a text that opens with ``def name(`` (optionally inside a
    ``` fence); a text cut off inside its first keyword (``def simple_ma``). The last two count as position 0.
    """
    pos = text.find(TINYGSM_DEF)
    if _OPENS_WITH_DEF.match(text):
        pos = 0
    if pos < 0:
        head = text.lstrip()
        if len(head) >= 3 and TINYGSM_DEF.startswith(head):
            pos = 0
    return pos


def nl_final_marker(text: str) -> int:
    r"""Position of the first final-answer marker (``\boxed``, ``\fbox``, GSM8K ``####``, "answer is"), or -1."""
    m = _NL_FINAL.search(text)
    return m.start() if m else -1


def looks_like_prose(text: str) -> bool:
    """Markup tags aside, at least two words of 2+ letters, whose letters make up >= 30% of the non-space
    characters."""
    window = _TAG.sub(" ", text[:_PROSE_WINDOW])
    words = _WORD.findall(window)
    if len(words) < _PROSE_MIN_WORDS:
        return False
    nonspace = sum(1 for ch in window if not ch.isspace())
    return sum(map(len, words)) >= _PROSE_MIN_LETTER_SHARE * nonspace


def looks_like_code(text: str) -> bool:
    """At least half of the first 50 non-blank lines are Python statements (``x = ...``, ``import``, ``print(``,
    ``return``, ``for ... :``, ...)."""
    lines = [ln for ln in text[:_PROSE_WINDOW].splitlines() if ln.strip()][:50]
    return bool(lines) and sum(bool(_PY_STATEMENT.match(ln)) for ln in lines) >= 0.5 * len(lines)


def classify_format(text: str | None) -> str:
    r"""The output format of one generated solution: ``code``, ``code_interp``, ``nl``, ``other`` or ``empty``.

    Rules, in order (the first that applies decides):

    1. ``empty``: None, or only whitespace.
    2. Structural markers. Find the first position of each family's marker:

       - code_interp: ``<llm-code>``, or an OMI1 intro ("... use/using Python ...") in the first 200 characters;
       - code: ``def simple_math_problem`` anywhere; or the text opens with a function ``def name(``
         (optionally after a ```` ```python ```` fence line); or the whole text is a prefix of
         ``def simple_math_problem`` (cut off in its first tokens). A function defined *after* some prose
         (an OMI2 explanation that shows a helper program) is not a code marker;
       - nl: a final answer, i.e. ``\boxed``, ``\fbox``, GSM8K ``####`` or "answer is".

       The family whose marker comes first wins. So an OMI1 solution (intro, code, output, then ``\boxed``) is
       ``code_interp``; a code solution whose docstring or comments mention "the answer is" is ``code``; and a
       complete natural-language answer followed by a runaway continuation that starts writing code is ``nl``.
    3. ``nl``: no marker but prose (tags such as ``<llm-code-output>`` aside, at least two words, letters >= 30%
       of non-space characters) that is not mostly Python statements: a natural-language solution truncated
       before its final answer.
    4. ``other``: everything else (symbol soup, bare numbers, code without a recognised format).
    """
    if text is None or not isinstance(text, str) or not text.strip():
        return EMPTY
    positions = {
        CODE_INTERP: code_interp_marker(text),
        CODE: code_marker(text),
        NL: nl_final_marker(text),
    }
    found = [(pos, fmt) for fmt, pos in positions.items() if pos >= 0]
    if found:
        return min(found)[1]
    if looks_like_prose(text) and not looks_like_code(text):
        return NL
    return OTHER
