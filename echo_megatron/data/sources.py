"""The source registry: where each corpus lives, which files and rows of it are read, how a record becomes a
document.

A document is the paper's ``question + "\\n\\n" + solution`` (the prompt is ``question + "\\n\\n"``); plain-text
corpora (FineMath, Algebraic-Stack) have no prompt. Each registry entry gives a HF dataset id, candidate field
names (the first present wins, so both the original datasets and the shared sample files work), a solution
cleaner, the format label of its solutions, and *which data* it means, explicitly:

  * ``variants``: named choices of files per split (globs relative to the repo root, the same for the hub, a
    hub-cache snapshot and a local copy of the repo), a default split and row filters. OMI-2's default reads
    ``data/train-*.parquet`` only, never the ``train_1M/2M/5M`` subsets that sit beside it (re-samples of it: a
    folder read whole holds ~8M duplicates); OMI-1's reads ``correct_solutions/<split>.jsonl`` and keeps
    ``is_correct`` rows, never streaming the incorrect ones; Algebraic-Stack reads
    ``algebraic-stack/<split>/*.jsonl.zst`` through its data files (the repo's loading script, which
    datasets >= 4 refuses, is never run; the arXiv and OpenWebMath folders beside it are never read).
  * ``filters``: field -> allowed values, applied to every row (e.g. OMI-2 ``problem_source``).

A recipe's ``data.sources.<name>`` picks or overrides any of it with plain keys (``variant``, ``split``,
``data_files``, ``hf_config``, ``filters``, ``question_field``, ``solution_field``, ``hf_id``, ``revision``,
``path``): :func:`select` turns the registry entry and those keys into one :class:`Selection`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from echo_megatron.data.prompt import PROMPT_SEP
from echo_megatron.data.records import DataError
from echo_megatron.rewards.formats import CODE, CODE_INTERP, NL, OTHER, SOLUTION_FORMATS

Filters = Mapping[str, tuple[Any, ...]]  # field -> allowed values


@dataclass(frozen=True)
class Document:
    prompt: str  # question + "\n\n"; "" for plain text
    solution: str  # the rest of the document
    format: str

    @property
    def text(self) -> str:
        return self.prompt + self.solution


def as_is(text: str) -> str:
    """The default cleaner: the field unchanged (a named function, so specs pickle into worker processes)."""
    return text


@dataclass(frozen=True)
class Variant:
    """One named choice of data inside a repo: files per split, the default split(s), extra row filters."""

    description: str
    data_files: Mapping[str, tuple[str, ...]]  # split -> globs relative to the repo root
    split: str = "train"  # default split(s) ("train+validation" for several)
    filters: Filters = field(default_factory=dict)


@dataclass(frozen=True)
class SourceSpec:
    name: str
    description: str
    format: str  # the format label of its solutions (records with a "format" field override it)
    solution_fields: tuple[str, ...]  # the solution (or the whole text, for plain-text corpora)
    question_fields: tuple[str, ...] = ()  # empty for plain text
    hf_id: Optional[str] = None
    variants: Mapping[str, Variant] = field(default_factory=dict)  # the first one is the default
    filters: Filters = field(default_factory=dict)  # applied whatever the variant
    clean: Callable[[str], str] = as_is

    @property
    def default_variant(self) -> Optional[str]:
        return next(iter(self.variants), None)


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


CORRECT_ONLY: Filters = {"is_correct": (True,)}


def _splits(pattern: str, *splits: str) -> dict[str, tuple[str, ...]]:
    """{split: (pattern with {split} filled in,)} for each split."""
    return {s: (pattern.format(split=s),) for s in splits}


REGISTRY: dict[str, SourceSpec] = {
    s.name: s
    for s in [
        SourceSpec(
            "tinygsm",
            "TinyGSM: GSM8K-style questions with Python-function solutions",
            CODE,
            solution_fields=("code", "assistant"),
            question_fields=("question", "user"),
            hf_id="TinyGSM/TinyGSM",  # no variant: the repo's own split files (HF's rules)
            clean=strip_code_fences,
        ),
        SourceSpec(
            "omi1",
            "OpenMathInstruct-1: code-interpreter solutions (correct ones only)",
            CODE_INTERP,
            solution_fields=("generated_solution",),
            question_fields=("question",),
            hf_id="nvidia/OpenMathInstruct-1",
            variants={
                "correct": Variant(
                    "correct_solutions/<split>.jsonl; split train (default) or train+validation",
                    _splits("correct_solutions/{split}.jsonl", "train", "validation"),
                ),
            },
            filters=CORRECT_ONLY,  # also guards data_files that point at incorrect_solutions/
        ),
        SourceSpec(
            "omi2",
            "OpenMathInstruct-2: natural-language solutions ending in \\boxed{}",
            NL,
            solution_fields=("generated_solution",),
            question_fields=("problem", "question"),
            hf_id="nvidia/OpenMathInstruct-2",
            variants={
                "train": Variant(
                    "the full train split (data/train-*.parquet, 14M rows)",
                    {"train": ("data/train-*.parquet",)},
                ),
                **{
                    f"train_{n}": Variant(
                        f"the {n} subset (data/train_{n}-*.parquet)",
                        {"train": (f"data/train_{n}-*.parquet",)},
                    )
                    for n in ("1M", "2M", "5M")
                },
            },
        ),
        SourceSpec(
            "metamathqa",
            "MetaMathQA: rewritten GSM8K/MATH questions with natural-language answers",
            NL,
            solution_fields=("response",),
            question_fields=("query",),
            hf_id="meta-math/MetaMathQA",  # no variant: the repo's own split files (HF's rules)
        ),
        SourceSpec(
            "finemath",
            "FineMath-3+: math web pages (plain text)",
            OTHER,
            solution_fields=("text",),
            hf_id="HuggingFaceTB/finemath",
            variants={
                "3plus": Variant(
                    "finemath-3plus/*.parquet (21.4M documents)", {"train": ("finemath-3plus/*.parquet",)}
                ),
                "4plus": Variant(
                    "finemath-4plus/*.parquet (6.7M documents)", {"train": ("finemath-4plus/*.parquet",)}
                ),
            },
        ),
        SourceSpec(
            "algebraic_stack",
            "Algebraic-Stack (proof-pile-2): math code (plain text)",
            OTHER,
            solution_fields=("text",),
            hf_id="EleutherAI/proof-pile-2",
            variants={
                "algebraic-stack": Variant(
                    "algebraic-stack/<split>/*.jsonl.zst (not arxiv/, not open-web-math/)",
                    _splits("algebraic-stack/{split}/*.jsonl.zst", "train", "validation", "test"),
                )
            },
        ),
        SourceSpec(
            "gsm8k",
            "GSM8K: worked solutions, calculator annotations removed, final answer boxed",
            NL,
            solution_fields=("answer",),
            question_fields=("question",),
            hf_id="openai/gsm8k",
            variants={
                "main": Variant("main/<split>-*.parquet", _splits("main/{split}-*.parquet", "train", "test"))
            },
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


def _norm(value: Any) -> Any:
    """Filter values compare as written, except that booleans match their spellings ("true", "True")."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower()
    return value


def passes_filters(filters: Filters, row: dict[str, Any], source: str, where: str) -> bool:
    """Whether ``row`` has an allowed value in every filtered field; a filtered field that is missing is an error
    (a filter that silently matches nothing would drop a whole corpus)."""
    for name, allowed in filters.items():
        if name not in row:
            raise DataError(
                f"{where}: source '{source}': filter field '{name}' missing (fields present: {sorted(row)})"
            )
        value = _norm(row[name])
        if not any(value == _norm(a) for a in allowed):
            return False
    return True


def make_document(spec: SourceSpec, row: dict[str, Any], source: str, where: str) -> Document | None:
    """The document of one record, None if the source's filters drop it; DataError on a missing field."""
    if not passes_filters(spec.filters, row, source, where):
        return None
    solution = spec.clean(_field(row, spec.solution_fields, source, where))
    prompt = ""
    if spec.question_fields:
        prompt = _field(row, spec.question_fields, source, where).strip() + PROMPT_SEP
    label = row.get("format") if row.get("format") in SOLUTION_FORMATS else None
    return Document(prompt, solution, label or detect_format(solution, spec.format))


def needed_fields(spec: SourceSpec) -> list[str]:
    """The columns a document of ``spec`` reads (the others are never converted to Python)."""
    return list(dict.fromkeys([*spec.solution_fields, *spec.question_fields, *spec.filters, "format"]))


@dataclass(frozen=True)
class Selection:
    """What one recipe source reads: its effective spec (field overrides and filters applied) and which files.

    ``globs`` are the recipe's ``data_files`` (relative to the source's root, or absolute, ``anchored`` False)
    or the registry variant's files for ``splits`` (repo-relative, ``anchored`` True: they also match inside a
    local copy of a sub-folder of the repo, see echo_megatron/data/inputs.py). Without either, ``hf_config``
    (the repo README's config) or HF's split rules pick the files of ``splits``.
    """

    spec: SourceSpec
    variant: Optional[str]
    splits: tuple[str, ...]
    globs: Optional[tuple[str, ...]]
    anchored: bool
    hf_config: Optional[str]
    split_given: bool  # the recipe named the split (an error where no split applies)

    def identity(self) -> dict[str, Any]:
        """The choice as recorded in manifests and fingerprints."""
        return {
            **source_fields(self.spec),
            "variant": self.variant,
            "splits": list(self.splits),
            "data_files": list(self.globs) if self.globs is not None else None,
            "hf_config": self.hf_config,
        }


def _filters_over(base: Filters, given: Optional[Mapping[str, Any]]) -> dict[str, tuple[Any, ...]]:
    out = dict(base)
    for name, value in (given or {}).items():
        if value is None:
            out.pop(str(name), None)
        else:
            # a list (or an OmegaConf ListConfig) of allowed values, or one value
            many = isinstance(value, Sequence) and not isinstance(value, str)
            out[str(name)] = tuple(value) if many else (value,)
    return out


def select(name: str, cfg: Any) -> Selection:
    """The :class:`Selection` of ``data.sources.<name>`` (a SourceConfig): registry entry + the recipe's keys.

    Precedence: ``data_files`` > ``hf_config`` > the registry ``variant`` (default: its first) > HF's split rules.
    Conflicting keys (``data_files`` with ``split``, ``variant`` or ``hf_config``) are a config error."""
    spec = get_spec(name, cfg.type)
    where = f"data.sources.{name}"
    split_given = bool(cfg.split)
    splits = tuple(s.strip() for s in str(cfg.split).split("+") if s.strip()) if cfg.split else ()
    if cfg.data_files is not None:
        clash = [k for k in ("split", "variant", "hf_config") if getattr(cfg, k)]
        if clash:
            raise DataError(
                f"{where}: data_files names the files itself; drop {', '.join(clash)} "
                "(split/variant/hf_config choose among the registry's or the repo's files)"
            )
        if not cfg.data_files:
            raise DataError(f"{where}.data_files is empty")
        variant, globs, anchored, variant_filters = None, tuple(cfg.data_files), False, {}
    elif cfg.hf_config:
        if cfg.variant:
            raise DataError(f"{where}: give variant or hf_config, not both")
        variant, globs, anchored, variant_filters = None, None, False, {}
        splits = splits or ("train",)
    elif spec.variants:
        variant = cfg.variant or spec.default_variant
        if variant not in spec.variants:
            raise DataError(
                f"{where}.variant: '{variant}' is not a variant of '{spec.name}' (known: {', '.join(spec.variants)})"
            )
        chosen = spec.variants[variant]
        splits = splits or tuple(chosen.split.split("+"))
        unknown = [s for s in splits if s not in chosen.data_files]
        if unknown:
            raise DataError(
                f"{where}.split: {'+'.join(unknown)} is not a split of {spec.name}/{variant} "
                f"(known: {', '.join(chosen.data_files)})"
            )
        globs = tuple(g for s in splits for g in chosen.data_files[s])
        anchored, variant_filters = True, chosen.filters
    else:
        if cfg.variant:
            raise DataError(f"{where}.variant: '{spec.name}' has no variants")
        variant, globs, anchored, variant_filters = None, None, False, {}
        splits = splits or ("train",)
    filters = _filters_over(_filters_over(spec.filters, variant_filters), cfg.filters)
    effective = dataclasses.replace(
        spec,
        question_fields=(cfg.question_field,) if cfg.question_field else spec.question_fields,
        solution_fields=(cfg.solution_field,) if cfg.solution_field else spec.solution_fields,
        filters=filters,
    )
    return Selection(effective, variant, splits, globs, anchored, cfg.hf_config, split_given)


def source_fields(spec: SourceSpec) -> dict[str, Any]:
    """The spec's identity for fingerprints (callables by name)."""
    return {
        "type": spec.name,
        "format": spec.format,
        "solution_fields": list(spec.solution_fields),
        "question_fields": list(spec.question_fields),
        "clean": getattr(spec.clean, "__name__", "lambda"),
        "filters": {k: list(v) for k, v in sorted(spec.filters.items())},
    }


__all__ = [
    "REGISTRY",
    "Document",
    "Selection",
    "SourceSpec",
    "Variant",
    "detect_format",
    "get_spec",
    "make_document",
    "select",
]
