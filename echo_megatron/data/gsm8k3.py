"""gsm8k3: the real GSM8K train set rendered in the testbed's three formats from its calculator annotations.

GSM8K answers carry each calculation as ``<<expr=value>>`` (e.g. ``<<48/2=24>>``). The chain of annotations is a
program: a number in a later expression that equals an earlier step's value refers to that step. From it:

    code         def simple_math_problem(): step1 = 48 / 2; step2 = 48 + step1; result = step2; return result
    code_interp  "Let's use Python." + the same steps + print(...) in <llm-code>, its output, \\boxed{answer}
    nl           GSM8K's own worked solution without the annotations, ending in \\boxed{answer}

A problem is kept only if every annotation parses as arithmetic, evaluates to its stated value, and the last
value equals the final ``#### N`` answer (so every rendering is correct by construction).
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import random
import re
from typing import Any

from echo_megatron.data.sources import gsm8k_solution
from echo_megatron.data.testbed import assign_formats
from echo_megatron.rewards.formats import CODE, CODE_INTERP, NL

_BINOPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.Mod: "%",
}


def _number(text: str) -> float:
    return float(text.replace(",", "").strip())


def safe_eval(node: ast.AST) -> float:
    """Evaluate an arithmetic AST (numbers, + - * / // % **, unary minus) and nothing else."""
    if isinstance(node, ast.Expression):
        return safe_eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = safe_eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = safe_eval(node.left), safe_eval(node.right)
        op = _BINOPS[type(node.op)]
        if op == "**" and abs(b) > 10:
            raise ValueError("exponent too large")
        return eval(f"a {op} b", {}, {"a": a, "b": b})  # a and b are floats: no code can run here
    raise ValueError(f"not arithmetic: {ast.dump(node)[:60]}")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class _StepRefs(ast.NodeTransformer):
    """Replace number literals equal to an earlier step's value by that step's variable (latest wins)."""

    def __init__(self, previous: dict[str, str]) -> None:
        self.previous = previous

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, (int, float)) and _fmt(float(node.value)) in self.previous:
            return ast.Name(id=self.previous[_fmt(float(node.value))], ctx=ast.Load())
        return node


def parse_steps(answer: str) -> list[str] | None:
    """The chain as Python statements ``stepK = expr`` (earlier values referenced by name), or None if unusable."""
    annotations = re.findall(r"<<([^<>]*)>>", answer)
    if not annotations or "####" not in answer:
        return None
    final = _number(answer.rsplit("####", 1)[1])
    previous: dict[str, str] = {}
    lines, value = [], None
    for i, a in enumerate(annotations, 1):
        if "=" not in a:
            return None
        expr, stated = a.rsplit("=", 1)
        try:
            tree = ast.parse(expr.replace(",", "").strip(), mode="eval")
            value, stated_v = safe_eval(tree), _number(stated)
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
            return None
        if not math.isclose(value, stated_v, rel_tol=1e-4, abs_tol=1e-4):
            return None
        body = ast.unparse(_StepRefs(previous).visit(tree.body))
        lines.append(f"step{i} = {body}")
        previous[_fmt(value)] = f"step{i}"
    if value is None or not math.isclose(value, final, rel_tol=1e-6, abs_tol=1e-6):
        return None
    return lines


def run_program(code: str) -> str:
    """stdout of a generated arithmetic program (our own renderings only: names and arithmetic)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<gsm8k3>", "exec"), {"__builtins__": {"print": print}})
    return out.getvalue().strip()


def render(question: str, answer: str) -> dict[str, str] | None:
    """{format: solution} for one GSM8K record, or None if its annotations do not form a correct chain."""
    steps = parse_steps(answer)
    if steps is None:
        return None
    final = answer.rsplit("####", 1)[1].strip().replace(",", "")
    last = steps[-1].split(" = ", 1)[0]
    code = "\n".join(["def simple_math_problem():", *(f"    {s}" for s in steps), f"    result = {last}"])
    code += "\n    return result"
    program = "\n".join([*steps, f"print({last})"])
    output = run_program(program)
    code_interp = "\n".join(
        ["Let's use Python.", "<llm-code>", program, "</llm-code>", "<llm-code-output>", output]
        + ["</llm-code-output>", f"The answer is \\boxed{{{final}}}."]
    )
    return {CODE: code, CODE_INTERP: code_interp, NL: gsm8k_solution(answer)}


def generate_gsm8k3(rows: list[dict[str, Any]], proportions: dict[str, float], seed: int) -> tuple[list, int]:
    """(rows in the testbed schema with one format each by ``proportions``, number of GSM8K rows dropped)."""
    rendered = []
    for i, row in enumerate(rows):
        sol = render(row["question"], row["answer"])
        if sol is not None:
            final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
            rendered.append((i, row["question"], sol, final))
    labels = assign_formats(len(rendered), proportions, random.Random(seed))
    out = [
        {"id": f"gsm8k-train-{i:05d}", "question": q, "solution": sol[f], "format": f, "answer": final}
        for (i, q, sol, final), f in zip(rendered, labels)
    ]
    return out, len(rows) - len(rendered)
