"""Within-format properties of RL samples: what "refinement inside the winning format" is measured by.

The paper finds that once RL has settled on one output format, qualities *inside* it keep changing (e.g. the
TinyGSM-style programs get shorter and more uniform). Each format here has one property, a pure function of the
samples of one step (``samples/step_NNNNNNN.jsonl`` rows: completion, format, extracted, correct):

    code         lines beyond the canonical program for the question (``extra_program_lines``)
    code_interp  stated = executed: the share of samples whose written ``<llm-code-output>`` equals what the
                 program printed when run (the answer the reward used), i.e. the model predicts its own tool
    nl           correct arithmetic: the share of ``a op b = c`` steps whose result is right

A new property is one entry in :data:`PROPERTIES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from echo_megatron.rewards.formats import CODE, CODE_INTERP, NL

_STATED = re.compile(r"<llm-code-output>\s*(.*?)\s*</llm-code-output>", re.S)
_ARITH = re.compile(r"(-?\d+(?:\.\d+)?) ?([-+*/x×]) ?(-?\d+(?:\.\d+)?) = (-?\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Property:
    name: str
    measure: Callable[[Sequence[dict]], float | None]  # samples of one format at one step -> value


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def program_lines(samples: Sequence[dict]) -> float | None:
    """Mean number of non-empty lines per program."""
    return _mean([sum(1 for ln in s["completion"].splitlines() if ln.strip()) for s in samples])


def extra_program_lines(samples: Sequence[dict]) -> float | None:
    """Mean lines per program beyond the canonical one for its question (``def``, one assignment per number in
    the question, ``result = ...``, ``return result``): verbosity with the problem's size taken out, so that
    steps drawing longer problems do not look like a change of style."""
    extra = []
    for s in samples:
        if s.get("question") is None:
            continue
        canonical = len(re.findall(r"\d+", s["question"])) + 3
        extra.append(sum(1 for ln in s["completion"].splitlines() if ln.strip()) - canonical)
    return _mean(extra)


def stated_equals_executed(samples: Sequence[dict]) -> float | None:
    """Share of samples with a stated output whose first line equals the executed answer (``extracted``)."""
    pairs = []
    for s in samples:
        m = _STATED.search(s.get("completion") or "")
        if m and s.get("extracted") is not None:
            pairs.append(
                m.group(1).splitlines()[0].strip() == str(s["extracted"]).strip() if m.group(1) else False
            )
    return _mean([float(p) for p in pairs])


def _arith_ok(a: str, op: str, b: str, c: str) -> bool:
    x, y, z = float(a), float(b), float(c)
    if op == "+":
        return x + y == z
    if op == "-":
        return x - y == z
    if op in "*x×":
        return x * y == z
    return y != 0 and (x / y == z or x // y == z)


def correct_arithmetic(samples: Sequence[dict]) -> float | None:
    """Share of ``a op b = c`` steps, over all samples, whose result ``c`` is right."""
    steps = [_arith_ok(*m) for s in samples for m in _ARITH.findall(s.get("completion") or "")]
    return _mean([float(ok) for ok in steps])


PROPERTIES: dict[str, Property] = {
    CODE: Property("lines beyond the canonical program", extra_program_lines),
    CODE_INTERP: Property("stated output = executed", stated_equals_executed),
    NL: Property("correct arithmetic steps", correct_arithmetic),
}


def property_series(samples_by_step: dict[int, list[dict]], fmt: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``fmt``'s property over the steps that have samples in ``fmt``."""
    prop = PROPERTIES.get(fmt)
    if prop is None:
        return [], []
    steps, values = [], []
    for step in sorted(samples_by_step):
        v = prop.measure([s for s in samples_by_step[step] if s.get("format") == fmt])
        if v is not None:
            steps.append(step)
            values.append(v)
    return steps, values
