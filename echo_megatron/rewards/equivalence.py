r"""Answer equivalence: exact numbers, LaTeX answers through math-verify (sympy underneath).

Numbers are parsed exactly (``parse_exact``: a ``Fraction``, with the precision the text was written with), never
through a float, and only finite ones count: a number past float64's range (``1e309``), ``inf`` or ``nan`` is
not a number. The prediction equals the gold when (``numbers_equal``)

- the gold is an integer, or is written without a fractional part (``27.0``, ``2\%``, ``1.5e3``): the
  prediction's value is exactly the gold's (``1500001`` is not ``1500000``, ``12345679`` not ``12345678``). A
  prediction written with more than 12 significant digits, the print-out of a float computed by a program
  (``19.999999999999996`` for ``2.4 / 0.12``), is first rounded to 12 significant digits: float64 carries ~16,
  so this removes rounding noise only;
- the gold is a decimal with d digits after the point: the prediction rounds to it at that precision,
  |p - g| <= 10^-d / 2 (``33.3333`` for ``33.33``; ``33.3`` is not ``33.33``);
- the gold is a fraction (``\frac{1}{3}``, ``1/3``): |p - g| <= rel_tol * |g| (``rel_tol`` 1e-6: the printed
  float of 1/3 is equal, ``0.33`` is not).

What is removed before parsing, per task:

- numeric tasks (gsm8k, testbed, aime, amc): thousands commas (``1,000``, ``1{,}000``), ``$`` and ``\$``,
  degrees, ``\text{..}`` wrappers, a leading ``x =``, unit words around the number (``240 dollars``), and ``%``
  / ``\%`` (their golds are bare numbers: a question asking "what percent" has the gold ``25``, so ``25%`` is
  right);
- ``math`` (``strict``): thousands commas, ``$``/``\$``, degrees and ``\text{..}`` wrappers only; a trailing
  ``%``/``\%`` divides by 100 (``2\%`` equals ``0.02``, not ``2``: a percent sign never widens what an answer
  matches), and any other text around the number makes it not a plain number (``5x``, ``5 cm``: left to the
  string match and math-verify). The price: a MATH-style gold of a "what percent" question is a bare number,
  against which ``18\%`` is wrong (1 of the 1,000 OMI-2 sample solutions; no MATH-500 gold has a percent sign).

``\frac{a}{b}`` / ``\dfrac``, ``a/b`` are exact fractions; ``5.0`` equals ``5``.

The ``math`` task first tries the numeric rule on plain numbers only (``strict``), then a normalised string
match, and only then ``math_verify_equal`` (math-verify's LaTeX parser and sympy comparison). math-verify can be
slow or hang on hostile input, so ``score`` runs it inside the sandbox, in a verify worker (a fresh process that
never ran model code).
"""

from __future__ import annotations

import decimal
import re
import sys
from dataclasses import dataclass
from fractions import Fraction

from echo_megatron.rewards.extract import NUMBER

MAX_NUMBER_CHARS = 100
MAX_EXPONENT = 400  # |exponent| beyond this is not a finite float64 (or is below its precision)
NOISE_DIGITS = 12  # significant digits a program's float print-out is rounded to
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
    "^{\\circ}",
    "^\\circ",
    "\\circ",
    "\u00b0",
)
_PERCENT = ("\\%", "%")
_LATEX_FRAC = re.compile(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}")
_PLAIN_FRAC = re.compile(r"(-?\d+)\s*/\s*(\d+)")
_ASSIGNMENT = re.compile(r"^[A-Za-z]\w*\s*=\s*")
_OTHER_MATH = re.compile(r"[\d=+*/^\\!%]")
_DECIMAL = re.compile(r"(-?)(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+))?")


@dataclass(frozen=True)
class Number:
    """An exact number and how precisely it was written."""

    value: Fraction
    decimals: int | None  # digits after the point of the value as written (None: a fraction a/b)
    digits: int  # significant digits as written (0 for a fraction)

    @property
    def exact(self) -> bool:
        """An integer, or written without a fractional part: compared exactly when it is the gold."""
        return self.value.denominator == 1 or self.decimals == 0


def _decimal(token: str) -> Number | None:
    """``-1,234.50``, ``2e5``, ``.5`` -> Number; None past the finite float64 range."""
    m = _DECIMAL.fullmatch(token.replace(",", ""))
    if m is None or not (m.group(2) or m.group(3)):
        return None
    sign, whole, frac, exp = m.group(1), m.group(2), m.group(3) or "", int(m.group(4) or 0)
    if abs(exp) > MAX_EXPONENT:
        return None
    value = Fraction(int(whole + frac or "0"), 10 ** len(frac)) * Fraction(10) ** exp
    if abs(value) > Fraction(sys.float_info.max):
        return None
    digits = len((whole + frac).lstrip("0"))
    return Number(-value if sign else value, max(0, len(frac) - exp), digits)


def _percent(num: Number | None) -> Number | None:
    if num is None:
        return None
    return Number(num.value / 100, None if num.decimals is None else num.decimals + 2, num.digits)


def parse_exact(text: object, strict: bool = False) -> Number | None:
    """The single number a short answer string stands for, or None (not a number, several numbers, not finite).

    ``strict`` (the math task, where ``5x`` is not 5 and ``2\\%`` is 0.02): no unit words, ``x =`` or dropped
    percent signs around the number (module docstring).
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
    percent = False
    if strict:
        for sign in _PERCENT:
            if s.endswith(sign):
                s, percent = s[: -len(sign)].strip(), True
                break
    else:
        for sign in _PERCENT:
            s = s.replace(sign, "")
        s = _ASSIGNMENT.sub("", s)
    s = s.strip().rstrip(".").strip()
    num = _fraction(s) or _single_number(s, strict)
    return _percent(num) if percent else num


def _fraction(s: str) -> Number | None:
    for frac in (_LATEX_FRAC, _PLAIN_FRAC):
        m = frac.fullmatch(s)
        if m:
            num, den = _decimal(m.groups()[-2].strip()), _decimal(m.groups()[-1].strip())
            if num is None or den is None or den.value == 0:
                return None
            value = num.value / den.value * (-1 if frac is _LATEX_FRAC and m.group(1) else 1)
            return Number(value, None, 0)
    return None


def _single_number(s: str, strict: bool) -> Number | None:
    tokens = NUMBER.findall(s)
    if len(tokens) != 1:
        return None
    rest = s.replace(tokens[0], "", 1)
    if _OTHER_MATH.search(rest) or (strict and rest.strip()):
        return None  # more mathematics around the number (10^3, 2\sqrt{2}, 9!): not a plain number
    return _decimal(tokens[0])


def parse_number(text: object, strict: bool = False) -> float | None:
    """``parse_exact`` as a float (for display and majority votes), or None."""
    num = parse_exact(text, strict)
    return None if num is None else float(num.value)


def _round_significant(value: Fraction, digits: int) -> Fraction:
    with decimal.localcontext() as ctx:
        ctx.prec = digits
        return Fraction(decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator))


def numbers_equal(pred: Number, gold: Number, rel_tol: float = 1e-6) -> bool:
    """The prediction equals the gold at the gold's precision (rules in the module docstring)."""
    if gold.exact:
        if pred.value == gold.value:
            return True
        return pred.digits > NOISE_DIGITS and _round_significant(pred.value, NOISE_DIGITS) == gold.value
    if gold.decimals is not None:
        return 2 * abs(pred.value - gold.value) <= Fraction(1, 10**gold.decimals)
    return abs(pred.value - gold.value) <= Fraction(rel_tol) * abs(gold.value)


def numeric_equal(pred: object, gold: object, rel_tol: float = 1e-6, strict: bool = False) -> bool | None:
    """True/False when both sides are numbers, None when either is not."""
    a, b = parse_exact(pred, strict), parse_exact(gold, strict)
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
    ``score`` runs this in a sandboxed verify worker with a wall-clock limit.
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
