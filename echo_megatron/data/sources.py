"""The source registry: where each corpus lives, which fields hold what, how a record becomes a document.

A document is the paper's ``question + "\\n\\n" + solution`` (the prompt is ``question + "\\n\\n"``); plain-text
corpora (FineMath, Algebraic-Stack) have no prompt. Each registry entry gives HF dataset id / config / split,
candidate field names (the first present wins, so both the original datasets and the shared sample files
work), a solution cleaner, a filter and the format label of its solutions. A recipe's
``data.sources.<name>`` may override any of id, config, split, revision, and give a local ``path``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from echo_megatron.data.prompt import PROMPT_SEP
from echo_megatron.data.records import DataError
from echo_megatron.rewards.formats import CODE, CODE_INTERP, NL, OTHER, SOLUTION_FORMATS


@dataclass(frozen=True)
class Document:
    prompt: str  # question + "\n\n"; "" for plain text
    solution: str  # the rest of the document
    format: str

    @property
    def text(self) -> str:
        return self.prompt + self.solution


@dataclass(frozen=True)
class SourceSpec:
    name: str
    description: str
    format: str  # the format label of its solutions (records with a "format" field override it)
    solution_fields: tuple[str, ...]  # the solution (or the whole text, for plain-text corpora)
    question_fields: tuple[str, ...] = ()  # empty for plain text
    hf_id: Optional[str] = None
    hf_config: Optional[str] = None
    split: str = "train"
    data_files: Optional[str] = None  # hub file pattern, for repos without a datasets loader
    clean: Callable[[str], str] = lambda s: s
    keep: Callable[[dict], bool] = lambda row: True  # the filter (e.g. OMI1: correct solutions only)


def strip_code_fences(text: str) -> str:
    """The code of a ```python ... ``` fenced block, prose around it dropped (TinyGSM documents are code only;
    the shared TinyGSM-style sample fences 57% of its solutions and adds notes after some); else the text."""
    m = re.search(r"```(?:python|py)?[ \t]*\n(.*?)\n?```", text, flags=re.S)
    return m.group(1) if m else text.strip("\n")


def gsm8k_solution(answer: str) -> str:
    """GSM8K's worked answer without ``<<a*b=c>>`` calculator annotations, ``#### N`` made ``\\boxed{N}``."""
    text = re.sub(r"<<[^>]*>>", "", answer)
    text, final = (text.rsplit("####", 1) + [""])[:2] if "####" in text else (text, "")
    final = final.strip().replace(",", "")
    return text.rstrip() + (f"\nThe answer is \\boxed{{{final}}}." if final else "")


def _is_correct(row: dict) -> bool:
    value = row.get("is_correct", True)
    return value is True or str(value).lower() == "true"


REGISTRY: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        SourceSpec(
            "tinygsm",
            "TinyGSM: GSM8K-style questions with Python-function solutions",
            CODE,
            solution_fields=("code", "assistant"),
            question_fields=("question", "user"),
            hf_id="TinyGSM/TinyGSM",
            clean=strip_code_fences,
        ),
        SourceSpec(
            "omi1",
            "OpenMathInstruct-1: code-interpreter solutions (correct ones only)",
            CODE_INTERP,
            solution_fields=("generated_solution",),
            question_fields=("question",),
            hf_id="nvidia/OpenMathInstruct-1",
            keep=_is_correct,
        ),
        SourceSpec(
            "omi2",
            "OpenMathInstruct-2: natural-language solutions ending in \\boxed{}",
            NL,
            solution_fields=("generated_solution",),
            question_fields=("problem", "question"),
            hf_id="nvidia/OpenMathInstruct-2",
        ),
        SourceSpec(
            "metamathqa",
            "MetaMathQA: rewritten GSM8K/MATH questions with natural-language answers",
            NL,
            solution_fields=("response",),
            question_fields=("query",),
            hf_id="meta-math/MetaMathQA",
        ),
        SourceSpec(
            "finemath",
            "FineMath-3+: math web pages (plain text)",
            OTHER,
            solution_fields=("text",),
            hf_id="HuggingFaceTB/finemath",
            hf_config="finemath-3plus",
        ),
        SourceSpec(
            "algebraic_stack",
            "Algebraic-Stack (proof-pile-2): math code (plain text)",
            OTHER,
            solution_fields=("text",),
            hf_id="EleutherAI/proof-pile-2",
            data_files="algebraic-stack/train/*",
        ),
        SourceSpec(
            "gsm8k",
            "GSM8K: worked solutions, calculator annotations removed, final answer boxed",
            NL,
            solution_fields=("answer",),
            question_fields=("question",),
            hf_id="openai/gsm8k",
            hf_config="main",
            clean=gsm8k_solution,
        ),
        SourceSpec(
            "testbed",
            "the format testbed / gsm8k3 files written by `echo-megatron testbed` (local path only)",
            NL,
            solution_fields=("solution",),
            question_fields=("question",),
        ),
    ]
}


def get_spec(source: str, type_: str | None = None) -> SourceSpec:
    key = type_ or source
    if key not in REGISTRY:
        raise DataError(
            f"data.sources.{source}: unknown source type '{key}' (known: {', '.join(REGISTRY)}); "
            f"set data.sources.{source}.type to one of them"
        )
    return REGISTRY[key]


def detect_format(solution: str, default: str) -> str:
    """The format of one solution by its markers: a TinyGSM function, an OMI1 code block, else ``default``
    (``nl`` when the default is a code format: a code source's solution without code is prose)."""
    if "def simple_math_problem" in solution:
        return CODE
    if "<llm-code>" in solution:
        return CODE_INTERP
    return NL if default in (CODE, CODE_INTERP) else default


def _field(row: dict, names: tuple[str, ...], source: str, where: str) -> str:
    for n in names:
        if n in row and row[n] is not None:
            value = row[n]
            if not isinstance(value, str):
                raise DataError(
                    f"{where}: source '{source}': field '{n}' is {type(value).__name__}, not text"
                )
            return value
    want = " or ".join(f"'{n}'" for n in names)
    raise DataError(f"{where}: source '{source}': missing field {want} (fields present: {sorted(row)})")


def make_document(spec: SourceSpec, row: dict[str, Any], source: str, where: str) -> Document | None:
    """The document of one record, None if the source's filter drops it; DataError on a missing field."""
    if not spec.keep(row):
        return None
    solution = spec.clean(_field(row, spec.solution_fields, source, where))
    prompt = ""
    if spec.question_fields:
        prompt = _field(row, spec.question_fields, source, where).strip() + PROMPT_SEP
    label = row.get("format") if row.get("format") in SOLUTION_FORMATS else None
    return Document(prompt, solution, label or detect_format(solution, spec.format))


def source_fields(spec: SourceSpec) -> dict[str, Any]:
    """The spec's identity for fingerprints (callables by name)."""
    return {
        "type": spec.name,
        "format": spec.format,
        "solution_fields": list(spec.solution_fields),
        "question_fields": list(spec.question_fields),
        "clean": getattr(spec.clean, "__name__", "lambda"),
        "keep": getattr(spec.keep, "__name__", "lambda"),
    }


__all__ = ["REGISTRY", "Document", "SourceSpec", "detect_format", "get_spec", "make_document"]
