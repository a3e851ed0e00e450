r"""Answer equivalence: numbers with a relative tolerance, LaTeX answers through math-verify (sympy underneath).

Numeric tasks (gsm8k, testbed, aime, amc) compare ``parse_number(pred)`` with ``parse_number(gold)``:

    equal  <=>  |a - b| <= max(rel_tol * max(|a|, |b|), abs_tol)          (math.isclose)

after removing what does not change the value: thousands commas (``1,000``, ``1{,}000``), ``$`` and ``\$``,
``%``, degrees, ``\text{..}`` wrappers, unit words (``240 dollars``), a leading ``x =``; ``\frac{a}{b}`` and
``a/b`` become a/b, and ``5.0`` equals ``5``.

The ``math`` task first tries the same numeric rule on plain numbers only (``strict``), then a normalised string match, and only then
``math_verify_equal`` (math-verify's LaTeX parser and sympy comparison). math-verify can be slow or hang on
hostile input, so ``score`` runs it inside the sandbox, in a fresh process that has not run model code.
"""

from __future__ import annotations

import math
import re

from echo_megatron.rewards.extract import NUMBER

MAX_NUMBER_CHARS = 100
_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal)\{([^{}]*)\}")
_NOISE = (
    "\\left",
    "\\right",
    "\\displaystyle",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "{,}",
    "\\$",
    "$",
    "\\%",
    "%",
    "^{\\circ}",
    "^\\circ",
    "\\circ",
    "\u00b0",
)
_LATEX_FRAC = re.compile(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_PLAIN_FRAC = re.compile(r"(-?\d+)\s*/\s*(\d+)")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\w*\s*=\s*")
_OTHER_MATH = re.compile(r"[\d=+*/^\\!]")


def _plain_float(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except (ValueError, OverflowError):
        return None


def parse_number(text: object, strict: bool = False) -> float | None:
    """The single number a short answer string stands for, or None (not a number, or several numbers).

    ``strict`` (used for the math task, where ``5x`` is not 5): no unit words or ``x =`` around the number.
    """
    if text is None:
        return None
    s = str(text).strip().replace("\u2212", "-")
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    s = _TEXT_WRAPPERS.sub(r"\1", s)
    for noise in _NOISE:
        s = s.replace(noise, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").strip()
    if not strict:
        s = _ASSIGNMENT.sub("", s)
    s = s.strip().rstrip(".").strip()
    for frac in (_LATEX_FRAC, _PLAIN_FRAC):
        m = frac.fullmatch(s)
        if m:
            sign = -1.0 if frac is _LATEX_FRAC and m.group(1) else 1.0
            num, den = _plain_float(m.groups()[-2]), _plain_float(m.groups()[-1])
            if num is None or den is None or den == 0:
                return None
            return sign * num / den
    tokens = NUMBER.findall(s)
    if len(tokens) != 1:
        return None
    rest = s.replace(tokens[0], "", 1)
    if _OTHER_MATH.search(rest) or (strict and rest.strip()):
        return None  # more mathematics around the number (10^3, 2\sqrt{2}, 9!): not a plain number
    return _plain_float(tokens[0])


def numbers_equal(a: float, b: float, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """|a - b| <= max(rel_tol * max(|a|, |b|), abs_tol); NaN equals nothing."""
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def numeric_equal(pred: object, gold: object, rel_tol: float = 1e-6, strict: bool = False) -> bool | None:
    """True/False when both sides are numbers, None when either is not."""
    a, b = parse_number(pred, strict), parse_number(gold, strict)
    if a is None or b is None:
        return None
    return numbers_equal(a, b, rel_tol)


def normalize_latex(s: str) -> str:
    """A light normal form for exact matching: no spaces, ``\\left``/``\\right``, ``$``, or ``\\dfrac``."""
    s = _TEXT_WRAPPERS.sub(r"\1", s)
    for noise in ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "$"):
        s = s.replace(noise, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+", "", s).rstrip(".")


def math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify: parse both as LaTeX (``$..$``) or plain expressions, then compare symbolically.

    Timeouts are left to the caller (math-verify's own use ``signal.alarm``, which fails off the main thread);
    ``score`` runs this in a sandboxed process with a wall-clock limit.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]

    def _parse(s: str) -> list:
        for candidate in (f"${s}$", f"\\boxed{{{s}}}", s):
            out = parse(candidate, extraction_config=configs, parsing_timeout=None)
            if out:
                return out
        return []

    g, p = _parse(gold), _parse(pred)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def answers_equal(pred: str, gold: str, task: str, rel_tol: float = 1e-6) -> bool | None:
    """The in-process part of the comparison: True/False when decided, None when math-verify must decide."""
    num = numeric_equal(pred, gold, rel_tol, strict=task == "math")
    if num is not None:
        return num
    if task != "math":
        return False
    if normalize_latex(pred) == normalize_latex(gold):
        return True
    return None
