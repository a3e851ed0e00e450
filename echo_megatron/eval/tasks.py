"""Evaluation task registry and loader: GSM8K, MATH (MATH-500 and the train split), AIME, AMC, the testbed.

Each task names where its problems live and how to read them:

- a file shipped with the package (``echo_megatron/assets/eval/``: GSM8K, MATH-500, AIME24, AMC23), or a
  default path relative to the working directory (the testbed);
- the HuggingFace dataset id / config / split of the full set, read through ``datasets`` when no local
  file is found (``path=`` always wins);
- the question / answer / solution / id fields, and how the gold answer is extracted (GSM8K keeps its
  worked solution and puts the final number after ``####``);
- the reward task name that ``echo_megatron.rewards`` scores it with.

``load_task(name, path=None, max_problems=None)`` returns a list of :class:`Problem`. Local files are read
with ``datasets.load_dataset("json" | "parquet" | "csv", ...)`` (``.gz`` compressed or not). A missing file, a malformed line or a
missing field raises :class:`TaskError` naming the task, file, row and field.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from echo_megatron.assets import asset
from echo_megatron.config import ConfigError
from echo_megatron.data.prompt import prompt_text
from echo_megatron.rewards.extract import last_boxed


class TaskError(ConfigError):
    """A task that cannot be loaded: unknown name, missing file, malformed row or missing field."""


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # the gold final answer as a string ("18", "\\frac{14}{3}", "204")
    solution: str | None = None  # the reference worked solution, where the set has one
    solutions: dict[str, str] | None = None  # format -> reference solution (the testbed renders all three)

    @property
    def prompt(self) -> str:
        """What the model is given at RL / eval time: ``question + "\\n\\n"``."""
        return prompt_text(self.question)


def gsm8k_gold(answer: str) -> str:
    """GSM8K's final answer: the number after the last ``####``, commas removed ("1,000" -> "1000")."""
    if "####" not in answer:
        raise ValueError("no '#### <answer>' line")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def boxed_gold(solution: Any) -> str:
    r"""A MATH solution's final answer: the content of its last ``oxed{}`` (what math-verify's ``parse`` takes
    from the whole solution, the label the paper's verifier was given)."""
    answer = last_boxed(str(solution))
    if answer is None:
        raise ValueError("no \\boxed{} answer in the solution")
    return answer


def plain_gold(value: Any) -> str:
    """A gold answer as a string; integral floats lose their ``.0`` (AMC's ``27.0`` -> ``"27"``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass(frozen=True)
class TaskSpec:
    name: str
    reward_task: str  # the task name the rewards module scores with: gsm8k | math | aime | amc | testbed
    description: str
    question_fields: tuple[str, ...]  # the first one present in a row is used
    answer_field: str
    solution_field: str | None = None
    solutions_field: str | None = None  # a {format: solution} mapping (testbed test rows)
    id_field: str | None = None  # None: the row index
    gold: Callable[[Any], str] = plain_gold
    shipped_file: str | None = None  # a package data file (echo_megatron/assets/)
    default_path: str | None = None  # relative to the working directory (generated data)
    hf_id: str | None = None
    hf_config: str | None = None
    hf_split: str = "test"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            name="gsm8k",
            reward_task="gsm8k",
            description="GSM8K test split (1,319 grade-school word problems)",
            question_fields=("question",),
            answer_field="answer",
            solution_field="answer",
            gold=gsm8k_gold,
            shipped_file="eval/gsm8k_test.jsonl.gz",
            hf_id="openai/gsm8k",
            hf_config="main",
            hf_split="test",
        ),
        TaskSpec(
            name="gsm8k_train",
            reward_task="gsm8k",
            description="GSM8K train split (7,473 problems; the RL prompt set)",
            question_fields=("question",),
            answer_field="answer",
            solution_field="answer",
            gold=gsm8k_gold,
            shipped_file="eval/gsm8k_train.jsonl.gz",
            hf_id="openai/gsm8k",
            hf_config="main",
            hf_split="train",
        ),
        TaskSpec(
            name="math500",
            reward_task="math",
            description="MATH-500 (the PRM800K test subset of MATH)",
            question_fields=("problem",),
            answer_field="answer",
            solution_field="solution",
            id_field="unique_id",
            shipped_file="eval/math500_test.jsonl.gz",
            hf_id="HuggingFaceH4/MATH-500",
            hf_split="test",
        ),
        TaskSpec(
            name="math_train",
            reward_task="math",
            description="MATH train split (7,500 problems; the paper's 1B MATH RL prompt set), gold = the "
            "solution's last \\boxed{}",
            question_fields=("problem",),
            answer_field="solution",
            solution_field="solution",
            gold=boxed_gold,
            hf_id="lighteval/MATH",  # config all, as the paper; EleutherAI/hendrycks_math files work by path
            hf_config="all",
            hf_split="train",
        ),
        TaskSpec(
            name="aime90",
            reward_task="aime",
            description="AIME 2022-2024 (90 problems, AI-MO/aimo-validation-aime: the paper's aime3 set)",
            question_fields=("problem",),
            answer_field="answer",
            solution_field="solution",
            id_field="id",
            hf_id="AI-MO/aimo-validation-aime",
            hf_split="train",
        ),
        TaskSpec(
            name="aime24",
            reward_task="aime",
            description="AIME 2024 I and II (30 problems)",
            question_fields=("question", "problem"),
            answer_field="answer",
            solution_field="solution",
            id_field="id",
            shipped_file="eval/aime24.jsonl.gz",
            hf_id="HuggingFaceH4/aime_2024",
            hf_split="train",
        ),
        TaskSpec(
            name="aime",
            reward_task="aime",
            description="AIME 1983-2024 (the full set; hub only; the paper's aime task)",
            question_fields=("Question",),
            answer_field="Answer",
            id_field="ID",
            hf_id="gneubig/aime-1983-2024",
            hf_split="train",
        ),
        TaskSpec(
            name="amc23",
            reward_task="amc",
            description="AMC 2023 (40 problems with numeric answers)",
            question_fields=("question", "problem"),
            answer_field="answer",
            id_field="id",
            shipped_file="eval/amc23.jsonl.gz",
            hf_id="FlippyDora/amc23",  # same 40 rows and fields as the shipped file
            hf_split="train",
        ),
        TaskSpec(
            name="testbed",
            reward_task="testbed",
            description="the format testbed's held-out test split (echo-megatron testbed)",
            question_fields=("question",),
            answer_field="answer",
            solution_field="solution",
            solutions_field="solutions",
            id_field="id",
            default_path="data/testbed/test.jsonl",
        ),
        TaskSpec(
            name="testbed_hard",
            reward_task="testbed",
            description="the format testbed's harder held-out split: max_ops steps, larger operands (the MATH analogue)",
            question_fields=("question",),
            answer_field="answer",
            solution_field="solution",
            solutions_field="solutions",
            id_field="id",
            default_path="data/testbed/test_hard.jsonl",
        ),
    ]
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise TaskError(f"unknown eval task '{name}' (known: {', '.join(TASKS)})")
    return TASKS[name]


def _first_malformed_line(path: str) -> str | None:
    """``file:line: message`` for the first line that is not a JSON object, or None if all parse."""
    from echo_megatron.data.records import numbered_jsonl_rows

    try:
        for _ in numbered_jsonl_rows(path):
            pass
    except ValueError as e:
        return str(e)
    return None


def _read_local(task: str, path: str) -> Iterable[dict]:
    import datasets

    from echo_megatron.data.records import quiet_datasets

    quiet_datasets()  # no progress bar: `eval ... > log` stays free of carriage returns
    if not os.path.isfile(path):
        raise TaskError(f"task {task}: file not found: {path}")
    name = path.lower().removesuffix(".gz")
    ext = name.rsplit(".", 1)[-1]
    builder = {"json": "json", "jsonl": "json", "parquet": "parquet", "csv": "csv"}.get(ext)
    if builder is None or (builder == "parquet" and name != path.lower()):
        raise TaskError(
            f"task {task}: {path}: unsupported file type (use .jsonl, .json, .csv, optionally .gz, or .parquet)"
        )
    try:
        return datasets.load_dataset(builder, data_files=path, split="train")
    except Exception as e:
        where = _first_malformed_line(path) if builder == "json" else None
        raise TaskError(f"task {task}: {where or f'{path}: cannot read: {e}'}") from e


def _read_hub(spec: TaskSpec) -> Iterable[dict]:
    import datasets

    try:
        return datasets.load_dataset(spec.hf_id, spec.hf_config, split=spec.hf_split)
    except Exception as e:
        raise TaskError(
            f"task {spec.name}: no local file, and loading {spec.hf_id}"
            f"{f' ({spec.hf_config})' if spec.hf_config else ''} split {spec.hf_split} from the "
            f"HuggingFace hub failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"pass a local file with path=..."
        ) from e


def resolve_source(spec: TaskSpec, path: str | None = None) -> str:
    """The local file a task reads, or ``hf:<id>`` when it falls back to the hub."""
    if path:
        return path
    if spec.shipped_file and asset(spec.shipped_file).is_file():
        return str(asset(spec.shipped_file))
    if spec.default_path:
        if os.path.isfile(spec.default_path) or not spec.hf_id:
            return spec.default_path
    if spec.hf_id:
        return f"hf:{spec.hf_id}"
    raise TaskError(f"task {spec.name}: no local file and no hub dataset; pass path=...")


def _row_to_problem(spec: TaskSpec, row: dict, index: int, where: str) -> Problem:
    qfield = next((f for f in spec.question_fields if row.get(f) not in (None, "")), None)
    if qfield is None:
        raise TaskError(
            f"task {spec.name}: {where} row {index}: missing question field "
            f"({' or '.join(spec.question_fields)}; row has {', '.join(sorted(row))})"
        )
    raw = row.get(spec.answer_field)
    if raw is None or str(raw).strip() == "":
        raise TaskError(f"task {spec.name}: {where} row {index}: missing answer field '{spec.answer_field}'")
    try:
        answer = spec.gold(raw)
    except ValueError as e:
        raise TaskError(f"task {spec.name}: {where} row {index}: field '{spec.answer_field}': {e}") from e
    solutions = row.get(spec.solutions_field) if spec.solutions_field else None
    if solutions is not None and not isinstance(solutions, dict):
        raise TaskError(
            f"task {spec.name}: {where} row {index}: field '{spec.solutions_field}' must map format -> text"
        )
    solutions = {str(k): str(v) for k, v in solutions.items() if v is not None} if solutions else None
    solution = row.get(spec.solution_field) if spec.solution_field else None
    if solution is None and solutions:
        solution = next(iter(solutions.values()))
    rid = row.get(spec.id_field) if spec.id_field else None
    return Problem(
        id=str(rid) if rid is not None else str(index),
        question=str(row[qfield]),
        answer=answer,
        solution=str(solution) if solution is not None else None,
        solutions=solutions,
    )


def load_task(name: str, path: str | None = None, max_problems: int | None = None) -> list[Problem]:
    """The problems of task ``name`` (from ``path`` if given), the first ``max_problems`` of them."""
    spec = get_task(name)
    source = resolve_source(spec, path)
    if source == spec.default_path and not os.path.isfile(source):
        raise TaskError(f"task {name}: file not found: {source} (generate it first, or pass path=...)")
    rows = _read_hub(spec) if source.startswith("hf:") else _read_local(name, source)
    if max_problems is not None and max_problems < 0:
        raise TaskError(f"task {name}: max_problems must be >= 0, got {max_problems}")
    problems: list[Problem] = []
    for i, row in enumerate(rows):
        if max_problems is not None and i >= max_problems:
            break
        problems.append(_row_to_problem(spec, row, i, source))
    if not problems and max_problems != 0:
        raise TaskError(f"task {name}: {source} has no problems")
    return problems


def describe_tasks() -> str:
    """One line per task: name, reward task, local file / hub id (for ``--help`` texts and docs)."""
    lines = []
    for t in TASKS.values():
        local = t.shipped_file and f"package:{t.shipped_file}" or t.default_path or "-"
        hub = f"{t.hf_id}{f':{t.hf_config}' if t.hf_config else ''}@{t.hf_split}" if t.hf_id else "-"
        lines.append(f"{t.name:<12} reward={t.reward_task:<8} local={local:<34} hub={hub}  {t.description}")
    return "\n".join(lines)
