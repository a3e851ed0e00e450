"""The format testbed: templated multi-step arithmetic word problems, each rendered in three formats.

A problem is a chain ``v0 -> v1 -> ... -> vn`` where each step applies one operation to the running amount:

    +  "She buys 7 more."                          v += b      (b in [min_operand, max_operand])
    -  "She gives 5 to Ben."                       v -= b      (b < v)
    *  "She fills 4 boxes with that many each."    v *= k      (k in [mul_min, mul_max])
    /  "She splits them into 4 boxes, keeps one."  v //= k     (k divides v exactly)

Every value stays an integer in [1, max_answer], so with ``max_answer=999`` every number of a document is one
token of the ``numword`` tokenizer. The renderings mirror the paper's three corpora, kept terse so that a
document costs ~70 tokens:

    code         TinyGSM:  def simple_math_problem(): one assignment per quantity, result = ..., return result
    code_interp  OMI1:     "Let's use Python." <llm-code> ... print(...) </llm-code> <llm-code-output> N ... \\boxed{N}
    nl           OMI2:     one sentence per step with the arithmetic written out ("19 * 4 = 76"), then \\boxed{N}

In the code formats the interpreter does the arithmetic; in ``nl`` the model must, which is what makes
per-format accuracy differ on a tiny model. Generation is a pure function of the config: the same seed gives
identical bytes.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from echo_megatron.data.prompt import prompt_text
from echo_megatron.rewards.formats import CODE, CODE_INTERP, NL, SOLUTION_FORMATS

NAMES: tuple[tuple[str, str], ...] = (
    ("Ana", "She"), ("Ben", "He"), ("Cara", "She"), ("Dev", "He"), ("Eli", "He"), ("Fay", "She"),
    ("Gus", "He"), ("Hana", "She"), ("Ivan", "He"), ("Jo", "She"), ("Kai", "He"), ("Lena", "She"),
    ("Max", "He"), ("Nia", "She"),
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "apples", "pens", "cards", "books", "shells", "coins", "stickers", "marbles", "cookies", "stamps",
)  # fmt: skip
CONTAINERS: tuple[tuple[str, str], ...] = (
    ("box", "boxes"), ("bag", "bags"), ("jar", "jars"), ("basket", "baskets"), ("crate", "crates"),
)  # fmt: skip

# Python operator of each step and its precedence (for minimal parentheses in the code renderings).
PY_OP = {"+": "+", "-": "-", "*": "*", "/": "//"}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class Step:
    op: str  # + - * /
    operand: int
    before: int
    after: int
    var: str  # the code variable holding the operand
    noun: str  # what the operand counts (container plural for * and /)
    text: str  # the question sentence


@dataclass(frozen=True)
class Problem:
    name: str
    pronoun: str
    obj: str
    start: int
    steps: tuple[Step, ...]

    @property
    def answer(self) -> int:
        return self.steps[-1].after

    @property
    def question(self) -> str:
        parts = [f"{self.name} has {self.start} {self.obj}."] + [s.text for s in self.steps]
        parts.append(f"How many {self.obj} does {self.name} have now?")
        return " ".join(parts)


def apply_op(op: str, value: int, operand: int) -> int:
    """One step of the chain: value (+ - * //) operand."""
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    if op == "/":
        return value // operand
    raise ValueError(f"unknown op {op!r}")


def _choose_operand(rng: random.Random, op: str, value: int, cfg) -> int | None:
    """An operand for ``op`` that keeps every value an integer in [1, max_answer], or None if none exists."""
    if op == "+":
        hi = min(cfg.max_operand, cfg.max_answer - value)
        return rng.randint(cfg.min_operand, hi) if hi >= cfg.min_operand else None
    if op == "-":
        hi = min(cfg.max_operand, value - 1)
        return rng.randint(cfg.min_operand, hi) if hi >= cfg.min_operand else None
    if op == "*":
        hi = min(cfg.mul_max, cfg.max_answer // value)
        return rng.randint(cfg.mul_min, hi) if hi >= cfg.mul_min else None
    if op == "/":
        divisors = [k for k in range(cfg.mul_min, cfg.mul_max + 1) if value % k == 0 and value // k >= 1]
        return rng.choice(divisors) if divisors else None
    raise ValueError(f"unknown op {op!r}")


def _step_text(rng: random.Random, op: str, operand: int, pronoun: str, name: str) -> tuple[str, str]:
    """(question sentence, code variable stem) for one step."""
    if op == "+":
        return rng.choice(
            [(f"{pronoun} buys {operand} more.", "bought"), (f"{pronoun} finds {operand} more.", "found")]
        )
    if op == "-":
        other = rng.choice([n for n, _ in NAMES if n != name])
        return rng.choice(
            [(f"{pronoun} gives {operand} to {other}.", "given"), (f"{pronoun} loses {operand}.", "lost")]
        )
    one, many = rng.choice(CONTAINERS)
    if op == "*":
        return f"{pronoun} fills {operand} {many} with that many each.", many
    return f"{pronoun} splits them equally into {operand} {many} and keeps one {one}.", many


def generate_problem(rng: random.Random, cfg) -> Problem | None:
    """One random problem, or None when the drawn op sequence cannot stay within the number limits."""
    name, pronoun = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    value = start = rng.randint(cfg.min_operand, cfg.max_operand)
    n_ops = rng.randint(cfg.min_ops, cfg.max_ops)
    used = {obj}
    steps = []
    for _ in range(n_ops):
        op = rng.choice(list(cfg.ops))
        operand = _choose_operand(rng, op, value, cfg)
        if operand is None:
            return None
        text, stem = _step_text(rng, op, operand, pronoun, name)
        var, i = stem, 2
        while var in used:
            var, i = f"{stem}{i}", i + 1
        used.add(var)
        after = apply_op(op, value, operand)
        steps.append(Step(op, operand, value, after, var, stem, text))
        value = after
    return Problem(name, pronoun, obj, start, tuple(steps))


def code_expression(problem: Problem) -> str:
    """The chain as one Python expression over the variables, parenthesized only where precedence needs it."""
    expr, top = problem.obj, 3  # a bare name binds tightest
    for s in problem.steps:
        if PRECEDENCE[s.op] > top:
            expr = f"({expr})"
        expr, top = f"{expr} {PY_OP[s.op]} {s.var}", PRECEDENCE[s.op]
    return expr


def _assignments(problem: Problem, indent: str) -> list[str]:
    lines = [f"{indent}{problem.obj} = {problem.start}"]
    return lines + [f"{indent}{s.var} = {s.operand}" for s in problem.steps]


def render_code(problem: Problem) -> str:
    """TinyGSM style: a function with one assignment per quantity that returns the result."""
    body = _assignments(problem, "    ")
    body += [f"    result = {code_expression(problem)}", "    return result"]
    return "\n".join(["def simple_math_problem():", *body])


def render_code_interp(problem: Problem) -> str:
    """OpenMathInstruct-1 style: prose, a code block, its output, the boxed answer."""
    lines = ["Let's use Python.", "<llm-code>", *_assignments(problem, "")]
    lines += [f"print({code_expression(problem)})", "</llm-code>"]
    lines += ["<llm-code-output>", str(problem.answer), "</llm-code-output>"]
    lines.append(f"The answer is \\boxed{{{problem.answer}}}.")
    return "\n".join(lines)


def _nl_sentence(problem: Problem, s: Step) -> str:
    sym = {"+": "+", "-": "-", "*": "*", "/": "/"}[s.op]
    math = f"{s.before} {sym} {s.operand} = {s.after}"
    if s.op in "+-":
        return f"{problem.pronoun} has {math} {problem.obj}."
    if s.op == "*":
        return f"The {s.noun} hold {math} {problem.obj}."
    return f"Each of the {s.noun} gets {math} {problem.obj}."


def render_nl(problem: Problem) -> str:
    """OpenMathInstruct-2 style: one sentence per step with the arithmetic written out, then the boxed answer."""
    lines = [_nl_sentence(problem, s) for s in problem.steps]
    lines.append(f"The answer is \\boxed{{{problem.answer}}}.")
    return "\n".join(lines)


RENDERERS = {CODE: render_code, CODE_INTERP: render_code_interp, NL: render_nl}


def assign_formats(n: int, proportions: dict[str, float], rng: random.Random) -> list[str]:
    """Exactly round(p_f * n) problems per format (largest remainders), in a random order."""
    unknown = set(proportions) - set(SOLUTION_FORMATS)
    if unknown:
        raise ValueError(f"testbed.formats: unknown format(s) {sorted(unknown)} (known: {SOLUTION_FORMATS})")
    total = sum(proportions.values())
    if total <= 0 or any(p < 0 for p in proportions.values()):
        raise ValueError("testbed.formats: proportions must be >= 0 and not all 0")
    exact = {f: n * p / total for f, p in proportions.items()}
    counts = {f: int(x) for f, x in exact.items()}
    for f in sorted(exact, key=lambda f: (counts[f] - exact[f], f))[: n - sum(counts.values())]:
        counts[f] += 1
    labels = [f for f in proportions for _ in range(counts[f])]
    rng.shuffle(labels)
    return labels


def generate(cfg) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) for a TestbedConfig; questions never repeat within or across the two sets.

    Train rows: {id, question, solution, format, answer}; test rows: {id, question, answer, solutions}.
    """
    if cfg.min_ops < 1 or cfg.max_ops < cfg.min_ops:
        raise ValueError("testbed: need 1 <= min_ops <= max_ops")
    if cfg.min_operand < 1 or cfg.max_operand < cfg.min_operand or cfg.max_answer < cfg.max_operand:
        raise ValueError("testbed: need 1 <= min_operand <= max_operand <= max_answer")
    unknown_ops = set(cfg.ops) - set(PY_OP)
    if unknown_ops or not cfg.ops:
        raise ValueError(f"testbed.ops: unknown op(s) {sorted(unknown_ops)} (known: {list(PY_OP)})")
    rng = random.Random(cfg.seed)
    need = cfg.n_train + cfg.n_test
    seen: set[str] = set()
    problems: list[Problem] = []
    tries = 0
    while len(problems) < need:
        tries += 1
        if tries > 50 * need + 1000:
            raise ValueError(
                f"testbed: only {len(problems)} distinct problems found for n_train + n_test = {need}; "
                "widen the number ranges or lower the counts"
            )
        p = generate_problem(rng, cfg)
        if p is None or p.question in seen:
            continue
        seen.add(p.question)
        problems.append(p)
    test, train = problems[: cfg.n_test], problems[cfg.n_test :]
    labels = assign_formats(len(train), dict(cfg.formats), rng)
    train_rows = [
        {
            "id": f"tb-{i:06d}",
            "question": p.question,
            "solution": RENDERERS[f](p),
            "format": f,
            "answer": p.answer,
        }
        for i, (p, f) in enumerate(zip(train, labels))
    ]
    return train_rows, heldout_rows(test, "tbtest")


def hard_problems(cfg, exclude: set[str]) -> list[Problem]:
    """``cfg.n_hard`` problems harder than any of the train set, none of whose questions is in ``exclude``:
    ``max_ops`` steps each (the train set mixes ``min_ops``..``max_ops``), and a start and + / - operands in
    ``(max_operand, hard_max_operand]``, numbers the model has seen only as intermediate values. Drawn from their
    own generator (seed + 1), so the train and test sets do not depend on them. In ``nl`` the larger
    arithmetic is the model's to do; in the code formats the interpreter's."""
    if cfg.n_hard <= 0:
        return []
    if not cfg.max_operand < cfg.hard_max_operand <= cfg.max_answer:
        raise ValueError("testbed: need max_operand < hard_max_operand <= max_answer")
    hard = _HardRanges(cfg)
    rng = random.Random(cfg.seed + 1)
    seen = set(exclude)
    out: list[Problem] = []
    tries = 0
    while len(out) < cfg.n_hard:
        tries += 1
        if tries > 50 * cfg.n_hard + 1000:
            raise ValueError(f"testbed: only {len(out)} distinct hard problems for n_hard = {cfg.n_hard}")
        p = generate_problem(rng, hard)
        if p is None or p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out


class _HardRanges:
    """The number ranges of the hard split: the config's, with ops fixed at max_ops and operands above
    max_operand."""

    def __init__(self, cfg) -> None:
        self.min_ops = self.max_ops = cfg.max_ops
        self.min_operand, self.max_operand = cfg.max_operand + 1, cfg.hard_max_operand
        self.mul_min, self.mul_max, self.max_answer, self.ops = (
            cfg.mul_min,
            cfg.mul_max,
            cfg.max_answer,
            cfg.ops,
        )


def heldout_rows(problems: list[Problem], prefix: str) -> list[dict]:
    """Held-out rows {id, question, answer, solutions}: the reference solution in every format."""
    return [
        {
            "id": f"{prefix}-{i:04d}",
            "question": p.question,
            "answer": p.answer,
            "solutions": {f: r(p) for f, r in RENDERERS.items()},
        }
        for i, p in enumerate(problems)
    ]


def write_jsonl(path: str, rows: list[dict]) -> None:
    """Rows as JSONL, byte-for-byte deterministic; written to a temp file and renamed."""
    with open(path + ".tmp", "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


def write_testbed(cfg) -> dict:
    """Generate the testbed of a TestbedConfig into ``cfg.out``; a summary of what was written.

    OUT/train.jsonl            {id, question, solution, format, answer}, formats mixed by ``cfg.formats``
    OUT/train_<format>.jsonl   the same rows split by format (the demo recipe's sources)
    OUT/test.jsonl             held-out {id, question, answer, solutions}: no question also in train
    OUT/test_hard.jsonl        the harder held-out split (``hard_problems``), same fields
    OUT/prompts_train.jsonl    {id, question, answer} of every train problem (RL prompts)
    OUT/tokenizer.json         a tokenizer trained on the train prompts and solutions (``cfg.tokenizer``)
    OUT/gsm8k3/...             the same layout for GSM8K train rendered in three formats (if ``gsm8k_path``)
    OUT/testbed.json           this summary
    """
    os.makedirs(cfg.out, exist_ok=True)
    train, test = generate(cfg)
    summary: dict = {"out": cfg.out, "seed": cfg.seed, "train": len(train), "test": len(test)}
    _write_set(cfg.out, train, summary)
    write_jsonl(os.path.join(cfg.out, "test.jsonl"), test)
    hard = hard_problems(cfg, {r["question"] for r in train} | {r["question"] for r in test})
    write_jsonl(os.path.join(cfg.out, "test_hard.jsonl"), heldout_rows(hard, "tbhard"))
    summary["test_hard"] = len(hard)
    if cfg.tokenizer != "none":
        from echo_megatron.data.tokenizer import save_tokenizer, train_tokenizer

        texts = (x for r in train for x in (prompt_text(r["question"]), r["solution"]))
        backend = train_tokenizer(texts, cfg.tokenizer, cfg.tokenizer_vocab_size, 2, max(cfg.max_answer, 9))
        summary["tokenizer"] = save_tokenizer(backend, os.path.join(cfg.out, "tokenizer.json"))
        summary["vocab_size"] = backend.get_vocab_size(with_added_tokens=True)
    if cfg.gsm8k_path:
        from echo_megatron.data.gsm8k3 import generate_gsm8k3
        from echo_megatron.data.records import numbered_jsonl_rows

        rows = [row for _, row in numbered_jsonl_rows(cfg.gsm8k_path)]
        g_rows, dropped = generate_gsm8k3(rows, dict(cfg.formats), cfg.seed)
        g_summary: dict = {"train": len(g_rows), "dropped": dropped}
        out = os.path.join(cfg.out, "gsm8k3")
        os.makedirs(out, exist_ok=True)
        _write_set(out, g_rows, g_summary)
        summary["gsm8k3"] = g_summary
    with open(os.path.join(cfg.out, "testbed.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def _write_set(out: str, rows: list[dict], summary: dict) -> None:
    write_jsonl(os.path.join(out, "train.jsonl"), rows)
    for f in SOLUTION_FORMATS:
        write_jsonl(os.path.join(out, f"train_{f}.jsonl"), [r for r in rows if r["format"] == f])
    prompts = [{"id": r["id"], "question": r["question"], "answer": r["answer"]} for r in rows]
    write_jsonl(os.path.join(out, "prompts_train.jsonl"), prompts)
    summary["formats"] = {f: sum(r["format"] == f for r in rows) for f in SOLUTION_FORMATS}
